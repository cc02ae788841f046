"""A client's local state on disk: where it lives between its rounds, and what resume restores.

Whatever a client keeps between rounds (BYOL's target, a local predictor, a MoCo queue, a
classifier) and its notes are written here after every local round and read back at the start of
its next one, so the simulation process and a SuperNode hold only a few notes per client in
memory, never weights (issue 13: 100 clients of the paper's model in under 8 GB). Files are
tagged with the round they end and written atomically (temp file, then rename). On resume from a
server checkpoint at round K, a client restores its newest file with round <= K; files of rounds
after K belong to the interrupted part of the run and are ignored (and pruned).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from tasks.common.checkpoint import load_file, save_atomic

_FILE = re.compile(r"^round-(\d+)\.pt$")
WEIGHTS = "fedssl.local_weights"  # the file's names for the two parts (unchanged since runs that survive)
INFO = "fedssl.client_info"


class ClientStateError(RuntimeError):
    """A saved client state cannot be used; the message names the file."""


def rounds_on_disk(folder: Path) -> list[int]:
    if not folder.is_dir():
        return []
    return sorted(int(m.group(1)) for p in folder.iterdir() if (m := _FILE.match(p.name)))


def save(folder: Path, server_round: int, kept: dict[str, torch.Tensor], info: dict, keep_from: int) -> Path:
    """Write what the client keeps after `server_round`; prune files made obsolete by the
    checkpoint at round `keep_from` (keep the newest one <= keep_from and everything after it)."""
    folder.mkdir(parents=True, exist_ok=True)
    plain = {"arrays": {WEIGHTS: kept}, "configs": {INFO: dict(info)}, "metrics": {}}
    path = save_atomic(plain, folder / f"round-{server_round}.pt")
    older = [r for r in rounds_on_disk(folder) if r <= keep_from]
    for r in older[:-1]:
        (folder / f"round-{r}.pt").unlink(missing_ok=True)
    return path


def load(folder: Path, server_round: int) -> tuple[dict[str, torch.Tensor], dict]:
    """(kept weights, notes) saved after `server_round`."""
    path = folder / f"round-{server_round}.pt"
    try:
        plain = load_file(path, weights_only=True)
        return plain["arrays"][WEIGHTS], dict(plain["configs"][INFO])
    except Exception as err:
        raise ClientStateError(f"client state {path} is missing or corrupt ({type(err).__name__}: {err}); "
                               f"delete it to restart this client from the global model") from err


def restore(folder: Path, resume_round: int) -> tuple[int, dict[str, torch.Tensor], dict] | None:
    """(round, kept weights, notes) of the newest state with round <= resume_round; None if there
    is none (the client had not trained before the checkpoint)."""
    candidates = [r for r in rounds_on_disk(folder) if r <= resume_round]
    if not candidates:
        return None
    return (candidates[-1], *load(folder, candidates[-1]))


def clear(folder: Path) -> None:
    """Remove the state files of another run (a fresh run starting in a reused state dir)."""
    for r in rounds_on_disk(folder):
        (folder / f"round-{r}.pt").unlink(missing_ok=True)
