"""A client's local state on disk: where it lives between its rounds, and what resume restores.

Whatever a client keeps between rounds (BYOL's target, a local predictor, a MoCo queue, a
classifier) and its notes are written here after every local round and read back at the start of
its next one, so the simulation process and a SuperNode hold only a few notes per client in
memory, never weights (issue 13: 100 clients of the paper's model in under 8 GB). Files are
tagged with the round they end and written atomically (temp file, then rename).

`session.json` says whose files they are: the run (kept across resumes) and the start of its
server (new at every resume) that last spoke to this client. A client with nothing in memory (a
restarted SuperNode, a resumed simulation) recovers with `recover`: another run's files are
cleared; after the server resumed from a checkpoint at round K, files of rounds after K belong to
the interrupted part of the run and are deleted; then the newest remaining file is its state.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from tasks.common.atomic import write_json_atomic
from tasks.common.checkpoint import UntrustedFileError, load_file, plain, save_atomic, unplain

_FILE = re.compile(r"^round-(\d+)\.pt$")
MARKER = "session.json"
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
    payload = plain({"arrays": {WEIGHTS: kept}, "configs": {INFO: dict(info)}, "metrics": {}}, "client state")
    path = save_atomic(payload, folder / f"round-{server_round}.pt")  # loads with weights_only=True
    older = [r for r in rounds_on_disk(folder) if r <= keep_from]
    for r in older[:-1]:
        (folder / f"round-{r}.pt").unlink(missing_ok=True)
    return path


def load(folder: Path, server_round: int) -> tuple[dict[str, torch.Tensor], dict]:
    """(kept weights, notes) saved after `server_round`."""
    path = folder / f"round-{server_round}.pt"
    try:
        payload = unplain(load_file(path, "client state"))
        return payload["arrays"][WEIGHTS], dict(payload["configs"][INFO])
    except UntrustedFileError as err:
        raise ClientStateError(f"{err}; delete it to restart this client from the global model") from None
    except Exception as err:
        raise ClientStateError(f"client state {path} is missing or corrupt ({type(err).__name__}: {err}); "
                               f"delete it to restart this client from the global model") from err


def clear(folder: Path, after: int = -1) -> None:
    """Remove the state files of rounds after `after` (all of them by default: another run's)."""
    for r in rounds_on_disk(folder):
        if r > after:
            (folder / f"round-{r}.pt").unlink(missing_ok=True)


def _marker(folder: Path) -> dict:
    try:
        return json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return {}


def recover(folder: Path, run_token: str, session: str, resume_round: int
            ) -> tuple[int, dict[str, torch.Tensor], dict] | None:
    """(round, kept weights, notes) a client with nothing in memory continues from, or None when
    it has nothing of this run (a first participation, an empty or another run's state dir)."""
    marker = _marker(folder)
    if not marker and resume_round > 0:  # written before session.json existed: this run's, as far as known
        clear(folder, after=resume_round)
    elif marker.get("run") != run_token:
        clear(folder)
    elif marker.get("session") != session:
        clear(folder, after=resume_round)  # written after the checkpoint the server resumed from
    folder.mkdir(parents=True, exist_ok=True)
    write_json_atomic(folder / MARKER, {"run": run_token, "session": session})
    rounds = rounds_on_disk(folder)
    return (rounds[-1], *load(folder, rounds[-1])) if rounds else None
