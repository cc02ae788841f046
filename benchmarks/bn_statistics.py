"""How far a run's aggregated BatchNorm statistics are from re-estimated ones (issue 14).

    python benchmarks/bn_statistics.py <run>/checkpoint_final.pt [--model global]

Loads the checkpoint's backbone with the BatchNorm running statistics the strategy averaged,
re-estimates them on the evaluation bank's images (clean, not augmented; what `eval.bn=reestimated`
does) and prints, per BatchNorm layer, the median over channels of running_var aggregated /
re-estimated and of |mean aggregated - mean re-estimated| / std re-estimated.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from protocol.checks import ConfigError  # noqa: E402
from protocol.messages import few  # noqa: E402
from tasks.common.arrays import set_arrays  # noqa: E402
from tasks.common.checkpoint import CheckpointError, checkpoint_models, load_checkpoint  # noqa: E402
from tasks.common.data import DataError  # noqa: E402
from tasks.common.evaluate import recalibrate_batchnorm  # noqa: E402
from tasks.common.federated_data import evaluation_sets  # noqa: E402
from tasks.ssl.model import build_federated_method  # noqa: E402
from tasks.ssl.settings import ssl_settings  # noqa: E402


def statistics(net: nn.Module) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    return {name: (m.running_mean.clone(), m.running_var.clone()) for name, m in net.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm)}


def compare(checkpoint: str, model: str = "global", data_dir: str | None = None) -> list[tuple[str, float, float]]:
    ck = load_checkpoint(checkpoint)
    cfg = ck["config"]
    if data_dir:
        cfg["data_dir"] = data_dir
    kind = (cfg.get("dataset") or {}).get("kind", "images")
    if kind != "images" or "ssl" not in (cfg.get("strategy") or {}).get("tasks", ["ssl"]):
        raise CheckpointError(f"{checkpoint} is a checkpoint of strategy={cfg['strategy'].get('name')} on dataset="
                              f"{cfg['dataset'].get('name')} (kind {kind}); this script compares an SSL encoder's "
                              f"BatchNorm statistics: give an SSL run's checkpoint_final.pt")
    models = checkpoint_models(ck)
    if model not in models:
        raise CheckpointError(f"--model {model}: {checkpoint} holds the model(s) {few(sorted(models))}; give one of them")
    settings = ssl_settings(cfg)
    method, plan, _ = build_federated_method(settings, cfg["strategy"])
    set_arrays(method, ck["keys"], models[model])
    backbone = getattr(method, plan.eval_encoder).backbone
    aggregated = statistics(backbone)
    net = copy.deepcopy(backbone)
    recalibrate_batchnorm(net, evaluation_sets(settings.images, settings.evaluation)["x_bank"], torch.device("cpu"),
                          settings.evaluation.batch_size)
    rows = []
    for name, (mean_r, var_r) in statistics(net).items():
        mean_a, var_a = aggregated[name]
        rows.append((name, float((var_a / var_r).median()), float(((mean_a - mean_r).abs() / var_r.sqrt()).median())))
    return rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint")
    p.add_argument("--model", default="global", help="the checkpoint's model (standalone: a partition id)")
    p.add_argument("--data-dir", default=None)
    args = p.parse_args(argv)
    try:
        rows = compare(args.checkpoint, args.model, args.data_dir)
    except (CheckpointError, DataError, ConfigError) as err:
        sys.exit(f"error: {' '.join(str(err).split())}")
    print("| BatchNorm layer | var aggregated / re-estimated (median) | abs mean difference / std (median) |")
    print("|---|---|---|")
    for name, ratio, shift in rows:
        print(f"| {name} | {ratio:.2f} | {shift:.2f} |")
    print(f"| median over layers | {np.median([r[1] for r in rows]):.2f} | {np.median([r[2] for r in rows]):.2f} |")


if __name__ == "__main__":
    main()
