"""What this machine must give a command before it starts: the device asked for, folders it can write.

Each refusal is one line naming the key, the path and the fix (ConfigError); nothing is written
(a writability probe makes and removes an empty folder in the nearest existing parent). A
precision that runs but is slow here (fp16 on a CPU) is a warning, not a refusal.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

from protocol.checks import ConfigError
from tasks.common.precision import compute_for, slow_precision
from tasks.common.training import resolve_device

log = logging.getLogger("fedssl")


def writable_folder(path: str | Path, key: str = "output_dir") -> None:
    """Refuse `key=path` when it is a file, lies under a file, or cannot be written (permissions,
    a read-only file system); the folder itself is not created."""
    folder = Path(str(path))  # as the run writes it (no ~ expansion)
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{key}={path} is a file, not a folder; give {key}=<a folder> (it is created when missing)")
    parent = folder
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(f"{key}={path}: {parent} is a file, so no folder can be made under it; "
                          f"give {key}=<a folder path>")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".fedssl-write-check-", dir=parent))
    except OSError as err:
        raise ConfigError(f"{key}={path} is not writable ({err.strerror or type(err).__name__} in {parent}); "
                          f"give {key}=<a folder you can write to>") from None


def check_machine(cfg: dict, out_dir: str | Path | None = None, key: str = "output_dir", computes: bool = True,
                  warn: bool = True) -> None:
    """The output folder (`key`'s) can be written; when the command `computes` here (not a deployment's
    server, whose SuperNodes train), the device exists, and with `warn` one warning line when the
    precision is slow on it."""
    if out_dir is not None:
        writable_folder(out_dir, key)
    if not computes:
        return
    device = resolve_device(str(cfg["device"]))
    warning = slow_precision(compute_for(cfg, device)) if warn else None
    if warning:
        log.warning(warning)
