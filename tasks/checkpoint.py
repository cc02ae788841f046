"""Checkpoints: the global (or per-client) uploaded weights plus the resolved config."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

FORMAT = "fedssl-checkpoint-v1"


class CheckpointError(RuntimeError):
    """A checkpoint cannot be used; the message names the file and the problem."""


def save_checkpoint(path: Path, cfg: dict, keys: list[str], models: dict[str, list[np.ndarray]], server_round: int) -> str:
    """Write atomically (temp file then rename): a crash never leaves half a checkpoint."""
    path = Path(path)
    payload = {
        "format": FORMAT,
        "round": server_round,
        "config": cfg,
        "keys": list(keys),
        "models": {name: {k: torch.from_numpy(np.array(a)) for k, a in zip(keys, arrays)} for name, arrays in models.items()},
    }
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return str(path)


def load_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # truncated or not a torch file
        raise CheckpointError(f"checkpoint {path} is corrupt or not a checkpoint ({type(err).__name__}: {err})") from err
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path} is not a {FORMAT} file")
    return payload
