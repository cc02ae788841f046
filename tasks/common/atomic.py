"""Files written whole or not at all: a temp file beside the target, flushed to disk, then one rename.

Whatever goes wrong while writing (a full disk, a crash of the writer, an interrupt), the temp file
is removed and the target keeps its previous content: a reader sees the old file or the new one,
never half of one, and no `.<name>.tmp` is left behind. Every file a run rewrites (summary.json,
the federation state, checkpoints, client state, plots, evaluation and route reports) goes through
`write_atomic`.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable
from pathlib import Path


def temp_path(path: str | Path) -> Path:
    """The temp file `write_atomic` writes before renaming it to `path`: `.<name>.tmp` beside it."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp")


def _flush_to_disk(path: Path) -> None:
    """fsync: a full disk that only shows at flush time fails here, before the rename."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Call `write(temp file)`, then rename the temp file to `path`; on any failure remove the temp
    file and re-raise (the original error, e.g. OSError ENOSPC naming the file), `path` untouched."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        write(tmp)
        _flush_to_disk(tmp)
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        if isinstance(err, OSError) and err.errno is not None:  # name the file meant, not the temp file
            raise OSError(err.errno, err.strerror, str(path)) from None
        raise
    return path


def write_text_atomic(path: str | Path, text: str) -> Path:
    return write_atomic(path, lambda tmp: tmp.write_text(text))


def write_json_atomic(path: str | Path, data, default=str) -> Path:
    """`data` as indented JSON (values JSON does not know through `default`), written atomically."""
    text = json.dumps(data, indent=2, default=default)  # serialised first: a bad value writes nothing
    return write_text_atomic(path, text)
