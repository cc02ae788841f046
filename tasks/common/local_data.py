"""A SuperNode's own unlabeled images, not a slice of a public dataset (issue 4, part 1).

    flower-supernode ... --node-config 'partition-id=3 num-partitions=5 local-data="/data/site3"'

`local-data` may be
- a `.npz` file with uint8 images under `x` or `x_train` (N,H,W or N,H,W,C; C in 1, 3), or
- a folder of image files (.png .jpg .jpeg .bmp .webp, searched recursively).
Images are brought to the run's 32x32 RGB format (resized when larger, padded when smaller),
so the same model serves every site. Labels are not needed: training is self-supervised.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

from tasks.common.data import DataError, to_standard_images

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}
SIZE = 32


def _from_npz(path: Path) -> np.ndarray:
    try:
        with np.load(path, allow_pickle=False) as z:
            key = next((k for k in ("x", "x_train") if k in z.files), None)
            if key is None:
                raise DataError(f"{path}: no image array; local data needs key 'x' or 'x_train' (found {z.files})")
            x = z[key]
    except (ValueError, OSError, EOFError) as err:
        raise DataError(f"{path}: cannot be read as a .npz file ({err})") from err
    if x.dtype != np.uint8 or x.ndim not in (3, 4) or (x.ndim == 4 and x.shape[-1] not in (1, 3)):
        raise DataError(f"{path}: images have dtype {x.dtype} and shape {x.shape}; expected uint8 N,H,W[,C] with C 1 or 3")
    return x


def image_files(folder: Path, recursive: bool = True) -> list[Path]:
    """Image files under `folder` (sorted), by suffix."""
    found = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in found if p.suffix.lower() in IMAGE_SUFFIXES)


def read_image_files(files: list[Path], size: tuple[int, int]) -> np.ndarray:
    """uint8 N,H,W,3 images, each converted to RGB and resized to `size` (H, W); a bad file is named."""
    from PIL import Image, UnidentifiedImageError

    out = np.empty((len(files), size[0], size[1], 3), dtype=np.uint8)
    for i, f in enumerate(files):
        try:
            with Image.open(f) as im:
                out[i] = np.asarray(im.convert("RGB").resize((size[1], size[0]), Image.BILINEAR))
        except (UnidentifiedImageError, OSError) as err:
            raise DataError(f"{f}: not a readable image ({err}); remove or replace it") from err
    return out


def _from_folder(folder: Path) -> np.ndarray:
    files = image_files(folder)
    if not files:
        raise DataError(f"{folder}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) found")
    return read_image_files(files, (SIZE, SIZE))


def _to_size(x: np.ndarray) -> np.ndarray:
    x = to_standard_images(x)  # 3 channels, padded up to 32x32
    if x.shape[1:3] == (SIZE, SIZE):
        return x
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(x).permute(0, 3, 1, 2).float()
    t = F.interpolate(t, size=(SIZE, SIZE), mode="bilinear", antialias=True, align_corners=False)
    return t.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


@lru_cache(maxsize=2)
def load_local_images(path: str) -> np.ndarray:
    """All images of a node's own data set as uint8 N,32,32,3 (cached per process)."""
    p = Path(path).expanduser()
    if p.is_dir():
        x = _from_folder(p)
    elif p.is_file():
        x = _to_size(_from_npz(p))
    else:
        raise DataError(f"local data '{path}' does not exist; pass a .npz file or a folder of images "
                        f"as --node-config local-data=<path>")
    if len(x) == 0:
        raise DataError(f"local data '{path}' holds no images")
    return x


def local_images(path: str, limit: int | None, seed: int) -> np.ndarray:
    """The node's images, a seeded subset of `limit` of them when the run caps examples per client."""
    x = load_local_images(path)
    if limit is not None and limit < len(x):
        x = x[np.sort(np.random.default_rng(seed).permutation(len(x))[:limit])]
    return x
