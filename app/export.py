"""mode=export: the network a run learned, as safetensors, ONNX and torchvision weights, with its model card.

    python main.py mode=export checkpoint=<run>/checkpoint_final.pt [output_dir=<folder>]

The checkpoint's model is rebuilt from the checkpoint's own config, as mode=evaluate does
(app/offline.evaluation_setup), and the task says which part its evaluator uses (its row's
`learned`: the SSL encoder's backbone, FedPav's backbone + embedding, the full SDRnet, the whole
detector). Next to the checkpoint (or in output_dir): `<name>.safetensors`, `<name>.onnx` (checked
with ONNX Runtime against PyTorch on real images of the run's data), for a ResNet-18/34 at width
1.0 `<name>_torchvision.safetensors` (checked in torchvision's ResNet with the CIFAR stem), and
`<name>.json`, the model card. A standalone run's per-client models get `<name>_client<k>.*`.
Files are written to a temporary folder and moved in place only when every check passed; an
existing file is never replaced. mode=predict and mode=embed load their network with `load_learned`.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import tempfile
from pathlib import Path

from app.config import override_value
from app.environment import check_machine
from app.offline import INIT, OfflineSetup, evaluation_setup
from app.registry import TASKS
from tasks.common.task_row import Task
from tasks.common.checkpoint import CheckpointError
from tasks.common.export import (ExportError, Learned, check_torchvision, require_export_extra, tensors,
                                 torchvision_name, torchvision_state, versions, write_onnx, write_safetensors)

log = logging.getLogger("fedssl")
ROOT = Path(__file__).resolve().parents[1]
CARD_FORMAT = "fedssl-export-v1"


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def load_checkpoint_for(argv: list[str], mode: str, needs: str | None = None) -> OfflineSetup:
    """The setup (config, task, its section, layout, {model name: arrays}, the checkpoint as read) of `checkpoint=` for `mode`,
    rebuilt from the checkpoint's own config. CheckpointError (one line, naming the file) when there is
    none, when it is corrupt or not a run's checkpoint, or when its task's network does not give `needs`."""
    source = override_value(argv, "checkpoint")
    if not source or source == INIT:
        raise CheckpointError(f"mode={mode} needs checkpoint=<run>/checkpoint_final.pt (a trained run's checkpoint)")
    try:
        setup = evaluation_setup(argv)
    except CheckpointError as err:
        raise CheckpointError(_one_line(f"mode={mode}: {err}; expected a run's checkpoint_final.pt "
                                        f"(format fedssl-checkpoint-v1)")) from None
    # this machine has the device, and the folder the results go to can be written (embed's forward
    # runs in the configured precision: warned when slow here)
    cfg, task = setup.cfg, setup.task
    check_machine(cfg, cfg.get("output_dir") or Path(source).parent, warn=mode == "embed")
    if task.learned is None or (needs is not None and task.learned_output != needs):
        able = [name for name, t in TASKS.items() if t.learned is not None and needs in (None, t.learned_output)]
        gives = f"whose network gives {task.learned_output}" if task.learned else "which has no exportable network"
        raise CheckpointError(f"{source} is a checkpoint of task {task.name} (strategy={cfg['strategy']['name']}, "
                              f"dataset={cfg['dataset']['name']}), {gives}; mode={mode} needs a checkpoint of task "
                              f"{' or '.join(able)} (a network that gives {needs})")
    return setup


def load_learned(argv: list[str], mode: str, needs: str) -> tuple[dict, Task, Learned, str]:
    """(config, task, the learned network, which model) for mode=predict/embed: the global model, or a
    standalone run's lowest-numbered client's (as detection.backbone_init picks one)."""
    setup = load_checkpoint_for(argv, mode, needs)
    models, task = setup.models, setup.task
    name = "global" if "global" in models else min(models, key=lambda n: (len(n), n))
    if name != "global":
        log.info("%s: the checkpoint holds one model per client (standalone); using client %s's", mode, name)
    return setup.cfg, task, task.learned(setup.settings, setup.layout, models[name]), name


def git_commit() -> str | None:
    """The commit of the code that exported (with "+ local changes" when the tree differs), or None."""
    def git(*a):
        try:
            return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""
    sha = git("rev-parse", "HEAD")
    return (sha + (" + local changes" if git("status", "--porcelain", "--untracked-files=no") else "")) if sha else None


def run_summary(checkpoint: Path) -> dict | None:
    """The run's summary.json next to its checkpoint (its final metrics), when present and readable."""
    path = checkpoint.parent / "summary.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def model_card(cfg: dict, task: Task, payload: dict, model: str, learned: Learned, files: dict, checks: dict) -> dict:
    checkpoint = Path(str(cfg["checkpoint"]))
    summary = run_summary(checkpoint)
    return {
        "format": CARD_FORMAT, "what": learned.what, "task": task.name, "method": learned.method,
        "strategy": cfg["strategy"]["name"], "dataset": cfg["dataset"]["name"], "model": dict(cfg["model"]),
        "model_name": model, "rounds": int(payload["round"]), "num_rounds": int(cfg["num_rounds"]),
        "seed": int(cfg["seed"]), "num_clients": int(cfg.get("centralised_from_clients") or cfg["num_clients"]),
        "checkpoint": str(checkpoint.resolve()),
        "summary": {"path": str((checkpoint.parent / "summary.json").resolve()), "status": summary.get("status"),
                    "final": summary.get("final")} if summary else None,
        "git_commit": git_commit(),
        "git_commit_of": "the code that exported (a run does not record its own commit)",
        "input": {"size": list(learned.input_size), "channels": "RGB", "dtype": "float32",
                  "range": "[0, 1] (uint8 pixels / 255)", "mean": list(learned.mean), "std": list(learned.std),
                  "normalised": "inside the network" if (any(learned.mean) or any(s != 1 for s in learned.std))
                  else "no normalisation (the network reads [0, 1] pixels, as in training)",
                  "layout": "N,3,H,W" if learned.output == "features" else "3,H,W (one image)"},
        "output": {"kind": learned.output, "feature_dim": learned.feature_dim,
                   **({"classes": list(learned.classes), "labels": "1..C index classes (0 is background)",
                       "boxes": "x1, y1, x2, y2 in the input image's pixels",
                       "score_threshold": float(cfg["detection"]["score_thresh"])} if learned.classes else {})},
        "batchnorm": {"statistics": learned.batchnorm, "detail": learned.batchnorm_detail},
        "files": files, "checks": checks,
        "rebuild": {"python": learned.rebuild.split("\n") + ["net.load_state_dict(safetensors.torch.load_file("
                                                             f"{files['safetensors']!r}))"],
                    "command_line": list(payload["config"].get("command_line") or [])},
        "config": {k: v for k, v in cfg.items() if k not in ("command_line", "checkpoint", "mode")},
        "versions": versions(),
    }


def export_one(cfg: dict, task: Task, payload: dict, model: str, learned: Learned, out: Path) -> dict:
    """Write and check one model's files in a temporary folder, then move them into `out`; returns its card."""
    stem = learned.name if model == "global" else f"{learned.name}_client{model}"
    tv_name = torchvision_name(learned.weights)
    files = {"safetensors": f"{stem}.safetensors", "onnx": f"{stem}.onnx", "card": f"{stem}.json",
             **({"torchvision": f"{stem}_torchvision.safetensors"} if tv_name else {})}
    taken = [str(out / f) for f in files.values() if (out / f).exists()]
    if taken:
        raise ExportError(f"mode=export: {', '.join(taken)} already exist(s); remove them or pass output_dir=<another folder>")
    with tempfile.TemporaryDirectory(dir=out, prefix=".export-") as tmp:
        work = Path(tmp)
        write_safetensors(tensors(learned.weights), work / files["safetensors"], files["card"])
        checks = {}
        if tv_name:
            write_safetensors(torchvision_state(learned.weights), work / files["torchvision"], files["card"])
            checks["torchvision"] = {"constructor": f"torchvision.models.{tv_name}(weights=None)",
                                     "stem": "conv1 = Conv2d(3, 64, 3, 1, 1, bias=False), maxpool = fc = Identity()",
                                     "load_state_dict": "strict=True",
                                     **check_torchvision(learned, torchvision_state(learned.weights), tv_name)}
        log.info("export: ONNX of %s (%s) and its ONNX Runtime check", stem, learned.what)
        checks["onnx"] = write_onnx(learned, work / files["onnx"])
        card = model_card(cfg, task, payload, model, learned, files, checks)
        (work / files["card"]).write_text(json.dumps(card, indent=2, default=float))
        leftovers = sorted(set(os.listdir(work)) - set(files.values()))
        if leftovers:  # e.g. an exporter's external data file: the files would not be complete without it
            raise ExportError(f"mode=export: the exporters also wrote {leftovers}, which this command does not keep")
        for name in files.values():
            os.replace(work / name, out / name)
    return card


def export(argv: list[str]) -> None:
    from app.commands import log_to_console

    require_export_extra()
    setup = load_checkpoint_for(argv, "export")
    cfg, task, payload = setup.cfg, setup.task, setup.payload
    out = Path(cfg.get("output_dir") or Path(str(cfg["checkpoint"])).parent)
    out.mkdir(parents=True, exist_ok=True)
    log_to_console()
    for model, arrays in setup.models.items():
        card = export_one(cfg, task, payload, model, task.learned(setup.settings, setup.layout, arrays), out)
        onnx = card["checks"]["onnx"]
        tv = card["checks"].get("torchvision")
        print(f"exported {card['what']} to {out}: " + ", ".join(card["files"].values())
              + f" | ONNX opset {onnx['opset']}, max |ONNX Runtime - PyTorch| {onnx['check']['max_abs_diff']:.2e} "
                f"on {onnx['check']['images']} images" + (f" | torchvision max diff {tv['max_abs_diff']:.2e}" if tv else "")
              + f" | BatchNorm statistics: {card['batchnorm']['statistics']}")
