"""A client's local state on disk, for resuming a federation (issue: runs that survive).

Whatever a client keeps in `context.state` (BYOL's target, a local predictor, later a MoCo
queue or a classifier) is saved here as a whole after every local round, so a method that adds
local state is covered without further code. Files are tagged with the round they end, and
written atomically (temp file, then rename). On resume from a server checkpoint at round K,
a client restores its newest file with round <= K; files of rounds after K belong to the
interrupted part of the run and are ignored (and pruned).
"""

from __future__ import annotations

import re
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from tasks.common.checkpoint import load_file, save_atomic

_FILE = re.compile(r"^round-(\d+)\.pt$")


class ClientStateError(RuntimeError):
    """A saved client state cannot be used; the message names the file."""


def to_plain(state: RecordDict) -> dict:
    """RecordDict -> plain dict of tensors and scalars (loadable with weights_only=True)."""
    out = {"arrays": {}, "configs": {}, "metrics": {}}
    for name, record in state.items():
        if isinstance(record, ArrayRecord):
            out["arrays"][name] = record.to_torch_state_dict()
        elif isinstance(record, ConfigRecord):
            out["configs"][name] = dict(record)
        elif isinstance(record, MetricRecord):
            out["metrics"][name] = dict(record)
    return out


def from_plain(plain: dict, state: RecordDict) -> None:
    for name, sd in plain["arrays"].items():
        state[name] = ArrayRecord(sd)
    for name, cfg in plain["configs"].items():
        state[name] = ConfigRecord(cfg)
    for name, met in plain["metrics"].items():
        state[name] = MetricRecord(met)


def rounds_on_disk(folder: Path) -> list[int]:
    if not folder.is_dir():
        return []
    return sorted(int(m.group(1)) for p in folder.iterdir() if (m := _FILE.match(p.name)))


def save(folder: Path, server_round: int, state: RecordDict, keep_from: int) -> Path:
    """Write the state after `server_round`; prune files made obsolete by the checkpoint at
    round `keep_from` (keep the newest one <= keep_from and everything after it)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = save_atomic(to_plain(state), folder / f"round-{server_round}.pt")
    rounds = rounds_on_disk(folder)
    older = [r for r in rounds if r <= keep_from]
    for r in older[:-1]:
        (folder / f"round-{r}.pt").unlink(missing_ok=True)
    return path


def restore(folder: Path, resume_round: int, state: RecordDict) -> int | None:
    """Load the newest state with round <= resume_round into `state`; None if there is none
    (the client had not trained before the checkpoint)."""
    candidates = [r for r in rounds_on_disk(folder) if r <= resume_round]
    if not candidates:
        return None
    path = folder / f"round-{candidates[-1]}.pt"
    try:
        plain = load_file(path, weights_only=True)
    except Exception as err:
        raise ClientStateError(f"client state {path} is corrupt ({type(err).__name__}: {err}); "
                               f"delete it to restart this client from the global model") from err
    from_plain(plain, state)
    return candidates[-1]
