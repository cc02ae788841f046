"""Checkpoints: the global (or per-client) uploaded weights plus the resolved config; and the
torch files every saved state of this project uses (server state, client state, SDR backbone).

Every file is written atomically and read back with `torch.load(weights_only=True)`: it holds
plain values (dict, list, tuple, set, str, int, float, bool, None, bytes) and torch tensors only,
so loading it can never run code. NumPy arrays travel as tensors (`plain` on save, `unplain` on
load), NumPy scalars as Python numbers. A file that needs more than that (written by an older
version of this project, which pickled NumPy objects, or planted) is refused, never unpickled.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path, PurePath

import numpy as np
import torch

from tasks.common.atomic import write_atomic

FORMAT = "fedssl-checkpoint-v1"
ARRAY = "__ndarray__"  # {ARRAY: tensor} stands for a NumPy array; {ARRAY: list, "dtype": str} for text arrays
_PLAIN = (str, int, float, bool, complex, bytes, type(None))


class CheckpointError(RuntimeError):
    """A checkpoint cannot be used; the message names the file and the problem."""


class UntrustedFileError(CheckpointError):
    """A file holds Python objects beyond tensors and plain values: it is refused, not unpickled."""


def plain(value, where: str = "payload"):
    """`value` with NumPy arrays as tensors and NumPy scalars as Python numbers, ready for a file that
    loads with weights_only=True; anything else that is not a plain value or a tensor is refused."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, np.ndarray):
        if value.dtype.kind in "US":  # text: torch has no such dtype
            return {ARRAY: value.tolist(), "dtype": value.dtype.str}
        if value.dtype.hasobject:
            raise TypeError(f"cannot save {where}: a NumPy array of Python objects")
        native = np.array(value, dtype=value.dtype.newbyteorder("="), copy=True, order="C")  # owns its data
        try:
            return {ARRAY: torch.from_numpy(native)}
        except TypeError as err:
            raise TypeError(f"cannot save {where}: NumPy dtype {value.dtype} has no torch equivalent") from err
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, _PLAIN):
        return value
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, dict):
        return {plain(k, f"{where} key"): plain(v, f"{where}[{k!r}]") for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        items = [plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
        return items if isinstance(value, list) else tuple(items) if isinstance(value, tuple) else set(items)
    raise TypeError(f"cannot save {where}: {type(value).__module__}.{type(value).__qualname__} is not a tensor, "
                    f"a NumPy array or a plain value (dict, list, tuple, str, number, bool, None)")


def unplain(value):
    """The inverse of `plain`: NumPy arrays back where they were saved (tensors stay tensors)."""
    if isinstance(value, dict):
        if ARRAY in value and set(value) <= {ARRAY, "dtype"}:
            data = value[ARRAY]
            return data.numpy() if isinstance(data, torch.Tensor) else np.asarray(data, dtype=value.get("dtype"))
        return {k: unplain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [unplain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(unplain(v) for v in value)
    return value


def save_atomic(payload, path: str | Path) -> Path:
    """torch.save to a temp file, then rename: a crash never leaves half a file. The payload must
    load with weights_only=True (pass it through `plain` first when it may hold NumPy values)."""
    return write_atomic(path, lambda tmp: torch.save(payload, tmp))  # no .tmp left when it fails (disk full)


def load_file(path: str | Path, what: str = "file"):
    """torch.load on the CPU with weights_only=True, always: tensors and plain values only.

    A file that asks for any other Python object is refused with UntrustedFileError naming `what`
    and the file; other problems (missing, truncated, not a torch file) propagate for the caller to
    name."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        text = str(err)
        if "weights only" not in text.lower():
            raise
        names = sorted(set(re.findall(r"\bGLOBAL ([\w.]+)", text)))
        if names:
            raise UntrustedFileError(
                f"{what} {path} was written by an older version of this project or is not a trusted file: it "
                f"holds Python objects other than tensors and plain values (it asks for {', '.join(names)}), and "
                f"such files are refused rather than unpickled (unpickling can run code)") from None
        detail = re.search(r"WeightsUnpickler error:\s*(.+)", text)
        raise pickle.UnpicklingError(f"not a torch file of tensors and plain values"
                                     f"{f' ({detail.group(1).strip()})' if detail else ''}") from None


def save_checkpoint(path: Path, cfg: dict, keys: list[str], models: dict[str, list[np.ndarray]], server_round: int) -> str:
    payload = {
        "format": FORMAT,
        "round": int(server_round),
        "config": plain(cfg, "config"),
        "keys": [str(k) for k in keys],
        "models": {str(name): {k: torch.from_numpy(np.array(a)) for k, a in zip(keys, arrays)}
                   for name, arrays in models.items()},
    }
    return str(save_atomic(payload, path))


def load_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        payload = load_file(path, "checkpoint")
    except UntrustedFileError:
        raise
    except Exception as err:  # truncated or not a torch file
        raise CheckpointError(f"checkpoint {path} is corrupt or not a checkpoint ({type(err).__name__}: {err})") from err
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path} is not a {FORMAT} file")
    return dict(payload, config=unplain(payload.get("config")))


def checkpoint_models(payload: dict) -> dict[str, list[np.ndarray]]:
    """{name: arrays in the checkpoint's key order} of a loaded checkpoint."""
    return {name: [t.numpy() for t in weights.values()] for name, weights in payload["models"].items()}
