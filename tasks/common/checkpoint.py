"""Checkpoints: the global (or per-client) uploaded weights plus the resolved config; and the
atomic torch file writes every saved state of this project uses (server state, client state)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

FORMAT = "fedssl-checkpoint-v1"


class CheckpointError(RuntimeError):
    """A checkpoint cannot be used; the message names the file and the problem."""


def save_atomic(payload, path: str | Path) -> Path:
    """torch.save to a temp file, then rename: a crash never leaves half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return path


def load_file(path: str | Path, weights_only: bool):
    """torch.load on the CPU (the caller turns errors into messages that name the file)."""
    return torch.load(path, map_location="cpu", weights_only=weights_only)


def save_checkpoint(path: Path, cfg: dict, keys: list[str], models: dict[str, list[np.ndarray]], server_round: int) -> str:
    payload = {
        "format": FORMAT,
        "round": server_round,
        "config": cfg,
        "keys": list(keys),
        "models": {name: {k: torch.from_numpy(np.array(a)) for k, a in zip(keys, arrays)} for name, arrays in models.items()},
    }
    return str(save_atomic(payload, path))


def load_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        payload = load_file(path, weights_only=False)
    except Exception as err:  # truncated or not a torch file
        raise CheckpointError(f"checkpoint {path} is corrupt or not a checkpoint ({type(err).__name__}: {err})") from err
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path} is not a {FORMAT} file")
    return payload


def checkpoint_models(payload: dict) -> dict[str, list[np.ndarray]]:
    """{name: arrays in the checkpoint's key order} of a loaded checkpoint."""
    return {name: [t.numpy() for t in weights.values()] for name, weights in payload["models"].items()}
