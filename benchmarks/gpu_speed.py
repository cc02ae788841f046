"""Local-round images/s per precision on a CUDA GPU, with peak GPU memory (benchmarks/gpu_check.sh).

    python benchmarks/gpu_speed.py --out gpu_speed.json

The paper's model (full ResNet-18, heads 4096/2048), batch 128, the project's train_one_round,
fp32 / fp16 (gradient scaling) / bf16 where the GPU has it, channels_last on.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.speed_parts import project_round  # noqa: E402


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("gpu_speed.json"))
    ap.add_argument("--steps", type=int, default=30)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("gpu_speed: no CUDA GPU")
    gpu = torch.device("cuda")
    precisions = ["fp32", "fp16"] + (["bf16"] if torch.cuda.get_device_capability()[0] >= 8 else [])
    rows = {}
    for precision in precisions:
        torch.cuda.reset_peak_memory_stats()
        rate = project_round(1.0, args.steps, precision, True, False, device=gpu, warmup=5)
        rows[precision] = {"images_per_second": rate, "peak_gpu_gb": torch.cuda.max_memory_allocated() / 2**30}
        print(f"{precision}: {rate:.0f} img/s, peak GPU memory {rows[precision]['peak_gpu_gb']:.2f} GB "
              f"({rate / rows['fp32']['images_per_second']:.2f}x fp32)", flush=True)
    args.out.write_text(json.dumps({"gpu": torch.cuda.get_device_name(), "width": 1.0, "batch": 128, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
