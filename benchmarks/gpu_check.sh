#!/usr/bin/env bash
# The GPU path on a machine with a CUDA GPU, in under 10 minutes (issue 13):
#   1. the CUDA tests (tests/test_gpu.py; skipped on machines without CUDA);
#   2. local-round images/s per precision (fp32, fp16, bf16) with the paper's full ResNet-18 and
#      heads, batch 128, and peak GPU memory (benchmarks/gpu_speed.py);
#   3. a short full-ResNet-18 FedU run: CIFAR-100, 5 clients, 3 rounds of 1 local epoch on 2,000
#      images each; in Flower's simulation when Ray is installed, else as a local deployment
#      (SuperLink + SuperNodes on this machine, python -m ops.local_federation).
# Usage: bash benchmarks/gpu_check.sh [output folder]   (needs FEDSSL_DATA_DIR with cifar100.npz,
# or cifar10-sample.npz with DATASET=cifar10). Prints everything; results land in the folder
# (default: a new outputs/gpu_check/<date-time>; a folder that already holds fedu/ is refused by main.py).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-${OUT:-outputs/gpu_check/$(date +%Y%m%d-%H%M%S)}}"
DATASET="${DATASET:-cifar100}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY="${PYTHON:-python3}"
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu_check: no CUDA GPU visible to torch; nothing to check here" >&2
  exit 2
fi
"$PY" -c "import torch; p = torch.cuda.get_device_properties(0); print(f'GPU: {p.name}, {p.total_memory / 2**30:.0f} GiB, compute capability {p.major}.{p.minor}; torch {torch.__version__}')"

echo "== 1. CUDA tests"
"$PY" -m pytest -q tests/test_gpu.py tests/test_precision.py 2>&1 | tail -5

echo "== 2. local round per precision (width 1.0, paper heads, batch 128)"
"$PY" benchmarks/gpu_speed.py --out "$OUT/gpu_speed.json"

echo "== 3. FedU, full ResNet-18, $DATASET, 5 clients, 3 rounds"
RUN=(strategy=fedu "dataset=$DATASET" num_clients=5 experiment=paper num_rounds=3 local_epochs=1
     examples_per_client=2000 eval_every=0 eval.linear=false eval.bank_size=10000 eval.test_size=2000
     checkpoint_every=0 wandb.mode=disabled device=cuda)
START=$(date +%s)
if "$PY" -c "import ray" 2>/dev/null; then
  "$PY" main.py "${RUN[@]}" "output_dir=$OUT/fedu" 2>&1 | grep -E "round [0-9]+/|done:|compute:|error:" || true
  SUMMARY="$OUT/fedu/summary.json"
else
  "$PY" -m ops.local_federation --nodes 5 --insecure --workdir "$OUT/fedu" "${RUN[@]}" 2>&1 | tail -5 || true
  SUMMARY="$OUT/fedu/run/summary.json"
fi
echo "wall time: $(( $(date +%s) - START )) s"
"$PY" - "$SUMMARY" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
print("status:", s["status"], "| compute:", s.get("compute"))
for r in s["rounds"]:
    imgs = sum(c["num_examples"] for c in r["clients"].values())
    print(f"round {r['round']}: fit {r['fit_seconds']:.1f} s, {imgs / r['fit_seconds']:.0f} img/s, loss {r['train_loss']:.3f}")
print("final:", {k: v for k, v in s["final"].items() if isinstance(v, float)})
PY
