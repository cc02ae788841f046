"""Persisting and resuming a whole federation (server side).

Every `checkpoint_every` rounds the server writes `<run dir>/state/server.pt` atomically:
the round, the global weights, the strategy's state (per-client divergences, decisions, ...),
the results so far, the random-number states and the W&B run id. Clients write their own
local state next to it (clients/state_store.py) — in a deployment, on their own machines.
`python main.py resume=<run dir>` continues from the last complete round. The file holds tensors
and plain values only (tasks/common/checkpoint.plain) and loads with weights_only=True; a state
written by an older version (pickled NumPy objects) is refused, never unpickled.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from app.config import key_of, override_value, recompose, saved_command_line
from app.outputs import refuse_taken
from app.registry import current_target
from tasks.common.checkpoint import CheckpointError, UntrustedFileError, load_file, plain, save_atomic, unplain

NOT_RECORDED = ("resume", "output_dir")  # where a run is written is not part of what it computes
FORMAT = "fedssl-state-v2"  # v1 pickled NumPy objects: refused (it does not load with weights_only=True)
OLDER_FORMATS = ("fedssl-state-v1",)
STATE_FILE = Path("state") / "server.pt"
# Keys a resumed run may change: where and how it runs, not what it computes.
RUNTIME_KEYS = ("num_rounds", "device", "client_resources", "ray", "wandb", "round_timeout", "faults",
                "output_dir", "resume", "data_dir", "cache_dir", "data_download", "checkpoint_every",
                "eval_every", "command_line", "client_state_dir", "centralised_from_clients", "audit_updates",
                "images", "predict", "embed",  # these three: mode=predict/embed's, nothing a training run reads
                "preset")  # a label (absent in runs saved before experiment=auto): what a preset sets is compared key by key


def rng_states() -> dict:
    """The three random streams as plain values: Python's state tuple, NumPy's legacy state as a
    dict (its key an array, saved as a tensor) and torch's state tensor."""
    return {"python": random.getstate(), "numpy": np.random.get_state(legacy=False), "torch": torch.get_rng_state()}


def set_rng_states(states: dict) -> None:
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])


def save_state(out_dir: Path, server_round: int, cfg: dict, fingerprint: str, arrays, strategy_state: dict,
               summary: dict) -> Path:
    path = Path(out_dir) / STATE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT, "round": server_round, "config": cfg, "layout": fingerprint,
        "arrays": [np.asarray(a) for a in arrays], "strategy_state": strategy_state,
        "summary": summary, "rng": rng_states(), "wandb_run_id": summary.get("wandb", {}).get("run_id"),
    }
    return save_atomic(plain(payload, "the federation state"), path)


def load_state(run_dir: str | Path) -> dict:
    path = Path(run_dir) / STATE_FILE
    if not path.is_file():
        hint = " (the run was started with checkpoint_every=0)" if (Path(run_dir) / "summary.json").is_file() else ""
        raise CheckpointError(f"resume: no federation state at {path}{hint}; "
                              f"give resume=<the output directory of a run that saved a checkpoint>")
    try:
        payload = load_file(path, "resume: the federation state")
    except UntrustedFileError as err:
        raise UntrustedFileError(f"{err}; it cannot be resumed with this version, start a new run") from None
    except Exception as err:
        raise CheckpointError(f"resume: {path} is corrupt or truncated ({type(err).__name__}: {err}); "
                              f"it cannot be resumed, start a new run") from err
    if isinstance(payload, dict) and payload.get("format") in OLDER_FORMATS:
        raise CheckpointError(f"resume: {path} was written by an older version of this project "
                              f"({payload['format']}); it cannot be resumed with this version, start a new run")
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"resume: {path} is not a federation state ({FORMAT}) file")
    return unplain(payload)


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _runtime(key: str) -> bool:
    return key.split(".", 1)[0] in RUNTIME_KEYS


def resumed_config(saved: dict, new_overrides: list[str]) -> dict:
    """The saved run's config with this command's overrides on top.

    Only runtime keys may change (RUNTIME_KEYS); anything else that differs — another
    strategy, model, dataset, seed... — is refused with the keys named.
    """
    if "tasks" not in saved["config"].get("strategy", {}):
        raise CheckpointError("resume: this run was saved by an earlier version of this project (its config "
                              "declares no strategy.tasks, and its strategies were not built from _target_); "
                              "resume it with that version, or start a new run without resume=")
    original = list(saved["config"].get("command_line") or [])
    extra = [o for o in new_overrides if key_of(o) not in NOT_RECORDED]
    cfg = recompose(saved_command_line(saved["config"]), extra)
    before, after = _flatten(saved["config"]), _flatten(cfg)
    if "strategy._target_" in before:  # a class renamed since the run was saved
        before["strategy._target_"] = current_target(before["strategy._target_"])
    changed = sorted(k for k in set(before) | set(after)
                     if not _runtime(k) and before.get(k, "<absent>") != after.get(k, "<absent>"))
    if changed:
        detail = "; ".join(f"{k}: checkpoint {before.get(k, '<absent>')!r}, this command {after.get(k, '<absent>')!r}"
                           for k in changed[:8])
        raise CheckpointError(f"resume: this command does not match the checkpoint ({detail}). "
                              f"Resume with the original settings, or start a new run without resume=")
    if cfg["num_rounds"] <= saved["round"]:
        raise CheckpointError(f"resume: the checkpoint is at round {saved['round']} and num_rounds is "
                              f"{cfg['num_rounds']}; nothing left to run (raise num_rounds to continue)")
    cfg["command_line"] = original + extra
    return cfg


def run_config(overrides: list[str], fresh: Callable[[list[str]], tuple[dict, str]]) -> tuple[dict, str, dict | None]:
    """(config, output directory, saved state) of a command that runs a federation.

    `resume=<dir>` continues the run saved there (its own command line, this one's runtime keys on
    top); otherwise `fresh(overrides)` composes the config and says where the run goes, a folder that
    must not hold an earlier run (RunFolderTaken says what to do instead). The command line is
    recorded without where the run is written (`NOT_RECORDED`).
    """
    command_line = [o for o in overrides if key_of(o) not in NOT_RECORDED]
    resume_dir = override_value(overrides, "resume")
    state = None
    if resume_dir:
        state = load_state(resume_dir)
        cfg = resumed_config(state, command_line)
        out_dir = cfg["resume"] = str(Path(resume_dir))
    else:
        cfg, out_dir = fresh(overrides)
        refuse_taken(out_dir)  # a new run never lands on an earlier one (app/outputs.py)
        cfg = dict(cfg, command_line=command_line)
    cfg["output_dir"] = str(out_dir)
    return cfg, str(out_dir), state
