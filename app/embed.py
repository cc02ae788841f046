"""mode=embed: the learned encoder's features of every image of a folder or an .npz, and nearest neighbours.

    python main.py mode=embed checkpoint=<run>/checkpoint_final.pt images=<folder or .npz>
        [embed.max_images=N] [embed.query=<index>] [embed.neighbours=5] [output_dir=<folder>]

Writes `embeddings.npz` next to the checkpoint (or in output_dir): `names` (file paths relative to
the folder, or `train/<i>`, `test/<i>` for an .npz in the project's data format), `features`
(float32, one row per image), `labels` and `classes` when the .npz has them, and `precision`. The
features are the evaluator's (tasks/common/evaluate.extract_features, as `features_on` computes
them): images at the network's input size (folders resized, smaller .npz images padded as the
data sets are), uint8 / 255, no normalisation, batches of eval.batch_size, the forward in the
precision `compute_for` picks for this machine (bf16 where it computes bf16 natively), features in fp32.
With `embed.query=<i>`, `retrieval.png` shows image i and its `embed.neighbours` nearest images by
cosine similarity (`draw_neighbours`, usable on its own).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from app.export import load_learned
from protocol.checks import ConfigError
from tasks.common.atomic import write_atomic
from tasks.common.data import DataError
from tasks.common.evaluate import extract_features
from tasks.common.export import FEATURES
from tasks.common.precision import compute_for
from tasks.common.training import resolve_device
from tasks.common.user_images import read_folder, read_npz

log = logging.getLogger("fedssl")


def read_images(source: str, size: tuple[int, int], max_images: int | None):
    """(names, uint8 N,H,W,3, labels or None, class names or None) of a folder or an .npz."""
    path = Path(source).expanduser()
    if path.is_file() and path.suffix == ".npz":
        return read_npz(path, size, max_images)
    if path.is_dir():
        names, images, _ = read_folder(path, size, max_images)
        return names, images, None, None
    raise DataError(f"images={source}: neither a folder of images nor an .npz file")


def nearest(features: np.ndarray, query: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(indices, cosine similarities) of the k images nearest to image `query`, nearest first, itself left out."""
    f = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    sims = f @ f[query]
    sims[query] = -np.inf
    order = np.argsort(-sims, kind="stable")[:k]
    return order, sims[order]


def draw_neighbours(images: np.ndarray, features: np.ndarray, names: list[str], query: int, path: str | Path,
                    k: int = 5, labels: np.ndarray | None = None, classes: list[str] | None = None) -> Path:
    """One PNG: image `query` and its k nearest neighbours by the features' cosine similarity, each
    titled with its name, its class when known, and (neighbours) the similarity."""
    from app.plots import pyplot

    if not 0 <= query < len(images):
        raise ConfigError(f"embed.query must be an image index in [0, {len(images) - 1}], got {query}")
    idx, sims = nearest(features, query, min(k, len(images) - 1))
    plt = pyplot()
    fig, axes = plt.subplots(1, len(idx) + 1, figsize=(1.8 * (len(idx) + 1), 2.3))
    axes = np.atleast_1d(axes)

    def title(i):
        if labels is None:
            return names[i]
        return f"{names[i]}\n{classes[labels[i]] if classes else labels[i]}"

    for ax, i, head in [(axes[0], query, "query"), *[(a, j, f"{s:.3f}") for a, j, s in zip(axes[1:], idx, sims)]]:
        ax.imshow(images[i], interpolation="nearest")
        ax.set_title(f"{head}\n{title(i)}", fontsize=7)
        ax.axis("off")
    fig.tight_layout()
    path = Path(path)
    try:
        write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=150, format="png"))
    finally:
        plt.close(fig)
    return path


def save_npz(path: Path, arrays: dict) -> None:
    """np.savez into exactly `path` (given a file name, NumPy would add .npz to it)."""
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def embed(argv: list[str]) -> None:
    from app.commands import log_to_console

    cfg, _, learned, _ = load_learned(argv, "embed", FEATURES)
    if not cfg.get("images"):
        raise ConfigError("mode=embed needs images=<folder of images or .npz>")
    out = Path(cfg.get("output_dir") or Path(str(cfg["checkpoint"])).parent)
    target, e = out / "embeddings.npz", cfg["embed"]
    for path in [target] + ([out / "retrieval.png"] if e["query"] is not None else []):
        if path.exists():
            raise DataError(f"mode=embed: {path} already exists; remove it or pass output_dir=<another folder>")
    names, images, labels, classes = read_images(str(cfg["images"]), learned.input_size, e["max_images"])
    if e["query"] is not None and not int(e["query"]) < len(images):
        raise ConfigError(f"embed.query must be an image index in [0, {len(images) - 1}], got {e['query']}")
    log_to_console()
    device = resolve_device(str(cfg["device"]))
    compute = compute_for(cfg, device)
    log.info("embed: %d images through %s on %s (%s)", len(images), learned.what, device, compute.precision)
    features = extract_features(learned.runner, images, device, int(cfg["eval"]["batch_size"]), compute).numpy()
    arrays = {"names": np.asarray(names), "features": features.astype(np.float32),
              "precision": np.asarray(compute.precision), "checkpoint": np.asarray(str(cfg["checkpoint"]))}
    if labels is not None:
        arrays["labels"] = labels
    if classes is not None:
        arrays["classes"] = np.asarray(classes)
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(target, lambda tmp: save_npz(tmp, arrays))
    print(f"embed: {len(names)} images of {cfg['images']} -> {features.shape[1]}-d features ({compute.precision}): {target}")
    if e["query"] is not None:
        png = draw_neighbours(images, features, names, int(e["query"]), out / "retrieval.png", int(e["neighbours"]),
                              labels, classes)
        print(f"embed: image {e['query']} ({names[int(e['query'])]}) and its {e['neighbours']} nearest: {png}")
