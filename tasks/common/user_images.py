"""Images a user hands to mode=predict or mode=embed: a folder of image files, or an .npz of arrays.

- A folder: every .png .jpg .jpeg .bmp .webp under it (recursively, sorted by path), read with
  torchvision.io as RGB; a file that cannot be decoded is skipped and named, and a folder with no
  readable image is refused (DataError).
- An .npz in the project's data format (x_train, y_train, x_test, y_test and optionally classes;
  docs/architecture.md#data): both splits, named `train/<i>` and `test/<i>`, with their labels; or a
  node's local-data format (`x`, optionally `y` and classes), named by index.
"""

from __future__ import annotations

import logging
import zipfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from tasks.common.data import DataError, to_standard_images
from tasks.common.local_data import IMAGE_SUFFIXES, image_files

log = logging.getLogger(__name__)


def image_list(folder: str | Path, max_images: int | None = None) -> list[Path]:
    """The image files under `folder` (sorted), the first `max_images` of them; DataError when there is none."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise DataError(f"images={folder}: not a folder; give a folder of image files "
                        f"({', '.join(sorted(IMAGE_SUFFIXES))})")
    files = image_files(root)
    if not files:
        raise DataError(f"images={folder}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) in it or below it")
    return files[:max_images] if max_images else files


def read_rgb(path: Path) -> torch.Tensor | None:
    """uint8 3,H,W RGB of an image file (torchvision.io), or None when it cannot be decoded."""
    from torchvision.io import ImageReadMode, decode_image, read_file

    try:
        image = decode_image(read_file(str(path)), mode=ImageReadMode.RGB)
    except (RuntimeError, OSError, ValueError):
        return None
    return image if image.ndim == 3 and image.shape[0] == 3 and image.numel() else None


def resize_nhwc(images: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 N,H,W,3 -> uint8 N,size,3 (bilinear, antialiased; unchanged when already that size)."""
    if tuple(images.shape[1:3]) == tuple(size):
        return np.ascontiguousarray(images)
    t = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()
    t = F.interpolate(t, size=tuple(size), mode="bilinear", antialias=True, align_corners=False)
    return t.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


def read_folder(folder: str | Path, size: tuple[int, int], max_images: int | None = None):
    """(names relative to the folder, uint8 N,H,W,3 at `size`, names of the files skipped)."""
    root = Path(folder).expanduser()
    names, images, skipped = [], [], []
    for path in image_list(root, max_images):
        image = read_rgb(path)
        if image is None:
            skipped.append(str(path.relative_to(root)))
            log.warning("skipped %s: not a readable image", path)
            continue
        names.append(str(path.relative_to(root)))
        images.append(resize_nhwc(image.permute(1, 2, 0)[None].numpy(), size)[0])
    if not images:
        raise DataError(f"images={folder}: none of its {len(skipped)} image files could be read")
    return names, np.stack(images), skipped


def read_npz(path: str | Path, size: tuple[int, int], max_images: int | None = None):
    """(names, uint8 N,H,W,3 at `size`, labels or None, class names or None) of an .npz of images."""
    path = Path(path).expanduser()
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as err:
        raise DataError(f"images={path}: cannot be read as an .npz file ({err})") from err
    if "x_train" in arrays and "x_test" in arrays:
        splits = [("train", arrays["x_train"], arrays.get("y_train")), ("test", arrays["x_test"], arrays.get("y_test"))]
    elif "x" in arrays:
        splits = [("", arrays["x"], arrays.get("y"))]
    else:
        raise DataError(f"images={path}: no images; an .npz needs x_train and x_test (the project's data format) "
                        f"or x (found {sorted(arrays)})")
    names, images, labels = [], [], []
    for split, x, y in splits:
        if x.dtype != np.uint8 or x.ndim not in (3, 4) or (y is not None and len(y) != len(x)):
            raise DataError(f"images={path}: images have dtype {x.dtype} and shape {x.shape}"
                            f"{'' if y is None else f' with {len(y)} labels'}; expected uint8 N,H,W[,C] (and N labels)")
        n = len(x) if max_images is None else max(0, min(len(x), max_images - len(names)))
        names += [f"{split}/{i}" if split else str(i) for i in range(n)]
        images.append(resize_nhwc(to_standard_images(x[:n]), size))
        labels.append(None if y is None else np.asarray(y[:n], dtype=np.int64))
    if not names:
        raise DataError(f"images={path}: holds no images")
    y = None if any(v is None for v in labels) else np.concatenate(labels)
    classes = [str(c) for c in arrays["classes"]] if "classes" in arrays else None
    return names, np.concatenate(images), y, classes
