"""Image datasets as uint8 arrays: offline `.npz` files or torchvision's download layout.

Every dataset is normalised to the same shape so that one model serves all of them:
uint8, NHWC, 3 channels, 32x32 (MNIST is zero-padded 28->32 and repeated to 3 channels).

Sources, in order (docs/architecture.md#data):
1. `<data_dir>/<file>.npz` with keys x_train, y_train, x_test, y_test (docs/architecture.md#data);
2. torchvision's download layout under `<data_dir>` (e.g. `cifar-100-python/`), downloaded
   there first when `download=True`.

Decoded arrays are cached once as plain `.npy` files under `cache_dir` and memory-mapped, so
a client reads only the rows of its own partition instead of decompressing the whole set.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import zipfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from protocol.checks import Int, Text


class DataError(RuntimeError):
    """A dataset is missing, unreadable or malformed; the message says how to fix it."""


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    npz_file: str  # file name looked for in data_dir
    num_classes: int
    torchvision_class: str  # torchvision.datasets class name
    torchvision_folder: str  # what torchvision's download leaves under data_dir


DATASETS = {
    "cifar10": DatasetInfo("cifar10", "cifar10.npz", 10, "CIFAR10", "cifar-10-batches-py"),
    "cifar100": DatasetInfo("cifar100", "cifar100.npz", 100, "CIFAR100", "cifar-100-python"),
    "mnist": DatasetInfo("mnist", "mnist.npz", 10, "MNIST", "MNIST/raw"),
}
# The offline CIFAR-10 stand-in is a class-balanced sample (docs/architecture.md#data).
NPZ_ALTERNATIVES = {"cifar10": ["cifar10.npz", "cifar10-sample.npz"]}
REQUIRED_KEYS = ("x_train", "y_train", "x_test", "y_test")
# dataset.* keys every dataset has (conf/dataset/*.yaml); a dataset's kind says which tasks train on it
CONFIG = {"dataset.name": Text(), "dataset.kind": Text(),  # its options: the task rows' kinds (app/schema.py)
          "dataset.num_classes": Int(min=1, null=True)}


def dataset_info(name: str) -> DatasetInfo:
    if name not in DATASETS:
        raise DataError(f"unknown dataset '{name}'; valid: {sorted(DATASETS)}")
    return DATASETS[name]


def to_standard_images(x: np.ndarray) -> np.ndarray:
    """uint8 NHW or NHWC images -> uint8 NHWC with 3 channels and at least 32x32."""
    if x.ndim == 3:
        x = x[..., None]
    if x.shape[-1] == 1:
        x = np.repeat(x, 3, axis=-1)
    h, w = x.shape[1:3]
    if h < 32 or w < 32:
        ph, pw = max(0, 32 - h), max(0, 32 - w)
        x = np.pad(x, ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)))
    return np.ascontiguousarray(x)


def validate_arrays(arrays: dict, num_classes: int, source: str) -> None:
    """Refuse arrays a training run would choke on later, naming the file and the problem."""
    missing = [k for k in REQUIRED_KEYS if k not in arrays]
    if missing:
        raise DataError(f"{source}: missing keys {missing}; a dataset file needs {list(REQUIRED_KEYS)}")
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.dtype != np.uint8:
            raise DataError(f"{source}: x_{split} has dtype {x.dtype}, expected uint8 pixels 0-255")
        if x.ndim not in (3, 4) or (x.ndim == 4 and x.shape[-1] not in (1, 3)):
            raise DataError(f"{source}: x_{split} has shape {x.shape}, expected N,H,W or N,H,W,C with C in (1, 3)")
        if y.ndim != 1 or len(y) != len(x):
            raise DataError(f"{source}: y_{split} has shape {y.shape}, expected ({len(x)},) to match x_{split}")
        if not np.issubdtype(y.dtype, np.integer):
            raise DataError(f"{source}: y_{split} has dtype {y.dtype}, expected integer labels")
        if len(y) and (y.min() < 0 or y.max() >= num_classes):
            raise DataError(
                f"{source}: y_{split} has labels in [{y.min()}, {y.max()}], expected 0..{num_classes - 1}"
            )


def _npz_candidates(data_dir: Path, info: DatasetInfo) -> list[Path]:
    return [data_dir / f for f in NPZ_ALTERNATIVES.get(info.name, [info.npz_file])]


def _load_npz(path: Path) -> dict:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files if k in REQUIRED_KEYS}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as err:
        raise DataError(f"{path}: cannot be read as a .npz file ({err}); replace the file") from err


def _load_torchvision(data_dir: Path, info: DatasetInfo, download: bool) -> dict:
    import torchvision.datasets as tvd

    cls = getattr(tvd, info.torchvision_class)
    out = {}
    for split, train in (("train", True), ("test", False)):
        ds = cls(root=str(data_dir), train=train, download=download)
        data = ds.data.numpy() if hasattr(ds.data, "numpy") else np.asarray(ds.data)
        targets = ds.targets.numpy() if hasattr(ds.targets, "numpy") else np.asarray(ds.targets)
        out[f"x_{split}"] = data.astype(np.uint8)
        out[f"y_{split}"] = targets.astype(np.int64)
    return out


def _missing_data_message(data_dir: Path, info: DatasetInfo, download: bool, err: Exception | None,
                          existed: bool = True) -> str:
    looked = [str(p) for p in _npz_candidates(data_dir, info)] + [str(data_dir / info.torchvision_folder)]
    where = f"data_dir={data_dir} does not exist" if not existed else f"looked for {', '.join(looked)}"
    failed = f"; the download failed ({' '.join(str(err).split())})" if download and err is not None else ""
    return (f"dataset '{info.name}' not found ({where}{failed}): put {info.npz_file} (keys x_train, y_train, x_test, "
            f"y_test) in {data_dir}, or set data_dir=<folder with it> (or FEDSSL_DATA_DIR), or let torchvision "
            f"download it there with data_download=true when online")


def _source_fingerprint(path: Path) -> str:
    st = path.stat()
    return hashlib.sha1(f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:12]


def _write_cache(folder: Path, arrays: dict) -> None:
    """Write standardised arrays as .npy files; atomic: a folder appears complete or not at all."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=folder.name + ".tmp"))
    for split in ("train", "test"):
        np.save(tmp / f"x_{split}.npy", to_standard_images(arrays[f"x_{split}"]))
        np.save(tmp / f"y_{split}.npy", np.asarray(arrays[f"y_{split}"], dtype=np.int64))
    try:
        os.rename(tmp, folder)
    except OSError:  # another process won the race; its copy is identical
        for f in tmp.iterdir():
            f.unlink()
        tmp.rmdir()


@dataclass
class ImageArrays:
    """Memory-mapped standardised arrays of one dataset."""

    name: str
    num_classes: int
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


@lru_cache(maxsize=4)
def load_dataset(name: str, data_dir: str, cache_dir: str, download: bool = False) -> ImageArrays:
    """Load (and cache) a dataset; cached per process so Ray actors read it once."""
    info = dataset_info(name)
    root = Path(data_dir).expanduser().resolve()
    existed = root.is_dir()  # (a failed download may leave it created)
    source = next((p for p in _npz_candidates(root, info) if p.is_file()), None)
    tv_folder = root / info.torchvision_folder
    if source is not None:
        key = f"{info.name}-{source.stem}-{_source_fingerprint(source)}"
        loader = lambda: _load_npz(source)  # noqa: E731
    elif tv_folder.exists() or download:
        key = f"{info.name}-torchvision-{hashlib.sha1(str(tv_folder.resolve()).encode()).hexdigest()[:12]}"
        loader = lambda: _load_torchvision(root, info, download)  # noqa: E731
    else:
        raise DataError(_missing_data_message(root, info, download, None, existed))

    folder = Path(cache_dir).expanduser() / key
    if not (folder / "y_test.npy").exists():
        try:
            arrays = loader()
        except DataError:
            raise
        except Exception as err:  # torchvision: RuntimeError (not found), URLError (offline)
            raise DataError(_missing_data_message(root, info, download, err, existed)) from err
        validate_arrays(arrays, info.num_classes, str(source or tv_folder))
        try:
            _write_cache(folder, arrays)
        except OSError as err:
            why = f"{err.strerror or type(err).__name__}: {err.filename or folder}"
            raise DataError(f"cache_dir={cache_dir}: cannot write the decoded arrays there ({why}); give "
                            f"cache_dir=<a folder you can write to, with room for them> (or FEDSSL_CACHE_DIR)") from None
    mm = {k: np.load(folder / f"{k}.npy", mmap_mode="r") for k in ("x_train", "y_train", "x_test", "y_test")}
    return ImageArrays(name=info.name, num_classes=info.num_classes, **mm)


def take_rows(x: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Copy just the requested rows out of a memory-mapped array (sorted reads are fastest)."""
    idx = np.asarray(idx)
    order = np.argsort(idx, kind="stable")
    out = np.empty((len(idx),) + x.shape[1:], dtype=x.dtype)
    out[order] = x[idx[order]]
    return out


def balanced_subset(labels: np.ndarray, size: int | None, seed: int) -> np.ndarray:
    """Indices of a seeded, class-balanced subset (all indices, shuffled, when size is None)."""
    rng = np.random.default_rng(seed)
    n = len(labels)
    if size is None or size >= n:
        return rng.permutation(n)
    classes = np.unique(labels)
    per_class = [rng.permutation(np.flatnonzero(labels == c)) for c in classes]
    take = size // len(classes)
    chosen = [p[:take] for p in per_class]
    rest = np.concatenate([p[take:] for p in per_class])
    extra = rng.choice(rest, size - take * len(classes), replace=False) if size > take * len(classes) else []
    return rng.permutation(np.concatenate(chosen + [np.asarray(extra, dtype=np.int64)]))
