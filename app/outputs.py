"""Output folders: a new run or result never lands on an earlier one.

- A fresh run (training, in simulation or deployed) is refused, before anything starts, when its
  `output_dir` already holds what a run leaves (`RUN_MARKS`: summary.json, the federation state,
  a checkpoint, client state, main.log, an audit, an evaluation or route report); the message says
  what is there and what to do instead (a new folder, or `resume=` when there is a state to
  continue from). Other files in the folder are left alone and do not count.
- Without `output_dir` every command gets a folder of its own: Hydra's run directory
  (conf/config.yaml `hydra.run.dir`), or `<it>-2`, `<it>-3`, ... when a run started in the same
  second already took it; the folder is created when chosen (so two processes cannot pick the same
  one) and removed again if the command is refused before writing anything into it.
"""

from __future__ import annotations

import json
from pathlib import Path

from protocol.checks import ConfigError

STATE = Path("state") / "server.pt"  # app/resume.STATE_FILE (not imported: that module loads torch)
RUN_MARKS = ("summary.json", "state", "checkpoint_final.pt", "client_state", "main.log", "audit",
             "evaluation.json", "route.json")
_claimed: set[Path] = set()


class RunFolderTaken(ConfigError):
    """A fresh run's output_dir holds an earlier run; the message says what to do instead."""


def run_marks(folder: str | Path) -> list[str]:
    """What an earlier run left in `folder` (names from RUN_MARKS), [] when it holds none."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return [name for name in RUN_MARKS if (folder / name).exists()]


def _status(folder: Path) -> tuple[str | None, str]:
    """(status, "status completed, 3 of 3 rounds") of the folder's summary.json, or (None, "")."""
    try:
        s = json.loads((folder / "summary.json").read_text())
        status, rounds = s.get("status"), len(s.get("rounds") or [])
        return status, f"its summary.json says {status} after {rounds} of {s.get('num_rounds')} rounds"
    except (OSError, ValueError, AttributeError):
        return None, ""


def refusal(folder: str | Path, key: str = "output_dir") -> str | None:
    """Why a fresh run may not write into `folder` and what to do instead; None when it may."""
    folder = Path(folder)
    marks = run_marks(folder)
    if not marks:
        return None
    status, detail = _status(folder)
    found = ", ".join(m + "/" if (folder / m).is_dir() else m for m in marks)
    held = f"{key}={folder} already holds a run ({found}{'; ' + detail if detail else ''}) " \
           f"and a new run never overwrites another"
    new = f"pass {key}=<a new folder> (or leave {key} out: every run then gets its own folder under outputs/)"
    if (folder / STATE).is_file():
        if status == "completed":
            return f"{held}: {new}, or extend that run with resume={folder} num_rounds=<more rounds>"
        return f"{held}: continue it with resume={folder} (from its last saved round), or {new}"
    if status == "running":
        why = "it may still be running; if it was killed, it saved no round to resume from"
    elif "summary.json" in marks:
        why = "it saved no federation state (it stopped before its first checkpoint, or checkpoint_every=0)"
    else:
        why = "it has no federation state to resume from"
    return f"{held}; {why}: {new}, or delete that folder (rm -r {folder}) to start again in it"


def refuse_taken(folder: str | Path, key: str = "output_dir") -> None:
    why = refusal(folder, key)
    if why is not None:
        raise RunFolderTaken(why)


def claim_new_folder(base: str | Path) -> Path:
    """`base`, or `base-2`, `base-3`, ...: the first that does not exist, created now."""
    base = Path(base)
    base.parent.mkdir(parents=True, exist_ok=True)
    n = 1
    while True:
        folder = base if n == 1 else base.with_name(f"{base.name}-{n}")
        try:
            folder.mkdir()
        except FileExistsError:
            n += 1
            continue
        _claimed.add(folder.resolve())
        return folder


def release_if_unused(folder: str | Path) -> None:
    """Remove a folder `claim_new_folder` created when nothing was written into it (a refused command)."""
    folder = Path(folder)
    if folder.resolve() in _claimed:
        try:
            folder.rmdir()  # only when empty
        except OSError:
            pass
        else:
            _claimed.discard(folder.resolve())
