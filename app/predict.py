"""mode=predict: the federated detector on every image of a folder, as COCO results and drawn PNGs.

    python main.py mode=predict checkpoint=<detection run>/checkpoint_final.pt images=<folder>
        [predict.score=0.3] [predict.max_images=N] [output_dir=<folder>]

Writes `predictions/` next to the checkpoint (or in output_dir): `detections.json`, a list in COCO's
results format (image_id, file_name, category_id, category_name, bbox [x, y, width, height] in the
image's pixels, score) of every detection scoring at least `predict.score`, and one PNG per image
(its relative path, suffix .png) with the boxes, class names and scores drawn. Images of any size are
resized as in training (tasks/detection/predict.py). An unreadable file is skipped and named; a folder
with no readable image, or a checkpoint of a task whose network is not a detector, is refused. The
folder is written whole or not at all, and an existing non-empty predictions/ is never replaced.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

from app.export import load_learned
from protocol.checks import ConfigError
from tasks.common.data import DataError
from tasks.common.export import DETECTIONS
from tasks.common.training import resolve_device
from tasks.common.user_images import image_list, read_rgb
from tasks.detection.predict import coco_results, detect, draw

log = logging.getLogger("fedssl")
PROGRESS_SECONDS = 10.0  # a progress line at most this often on long folders


def output_folder(cfg: dict) -> Path:
    out = Path(cfg.get("output_dir") or Path(str(cfg["checkpoint"])).parent) / "predictions"
    if out.exists() and any(out.iterdir()):
        raise DataError(f"mode=predict: {out} already holds predictions; remove it or pass output_dir=<another folder>")
    return out


def png_name(relative: Path, taken: set[str]) -> str:
    """`relative` with suffix .png, or with its own suffix kept when two images would share a name."""
    name = str(relative.with_suffix(".png"))
    return name if name not in taken else str(relative) + ".png"


def predict_folder(net, names: tuple[str, ...], folder: Path, files: list[Path], work: Path, cfg: dict):
    """Detect, draw and record every readable file (in batches of detection.eval_batch_size) into
    `work`; returns (COCO results, images done, files skipped)."""
    from torchvision.io import write_png

    device, max_side = resolve_device(str(cfg["device"])), int(cfg["dataset"]["max_size"])
    bs = int(cfg["detection"]["eval_batch_size"])
    results, skipped, taken, done = [], [], set(), 0
    t0 = shown = time.perf_counter()
    for start in range(0, len(files), bs):
        chunk = [(f, read_rgb(f)) for f in files[start:start + bs]]
        for f, image in chunk:
            if image is None:
                skipped.append(str(f.relative_to(folder)))
                log.warning("predict: skipped %s: not a readable image", f)
        chunk = [(f, image) for f, image in chunk if image is not None]
        found = detect(net, [image for _, image in chunk], max_side, device) if chunk else []
        for (f, image), detections in zip(chunk, found):
            relative = f.relative_to(folder)
            name = png_name(relative, taken)
            taken.add(name)
            (work / name).parent.mkdir(parents=True, exist_ok=True)
            write_png(draw(image, detections, names), str(work / name))
            results += coco_results(done, str(relative), detections, names)
            done += 1
        if time.perf_counter() - shown > PROGRESS_SECONDS and start + bs < len(files):
            shown = time.perf_counter()
            log.info("predict: %d/%d images, %.1f images/s", start + bs, len(files), done / (shown - t0))
    return results, done, skipped


def predict(argv: list[str]) -> None:
    from app.commands import log_to_console

    cfg, _, learned, _ = load_learned(argv, "predict", DETECTIONS)
    if not cfg.get("images"):
        raise ConfigError("mode=predict needs images=<folder of images>")
    folder = Path(str(cfg["images"])).expanduser()
    files = image_list(folder, cfg["predict"]["max_images"])
    out = output_folder(cfg)
    log_to_console()
    net = learned.weights  # a detector's Learned holds the torchvision detector itself
    net.score_thresh = float(cfg["predict"]["score"])  # FCOS keeps the detections scoring at least this
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=out.parent, prefix=".predictions-"))
    try:
        results, done, skipped = predict_folder(net, learned.classes, folder, files, work, cfg)
        if not done:
            raise DataError(f"images={folder}: none of its {len(files)} image files could be read")
        (work / "detections.json").write_text("[\n" + ",\n".join(json.dumps(r) for r in results) + "\n]\n")
        if out.exists():
            out.rmdir()  # empty (output_folder checked it)
        os.rename(work, out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    print(f"predict: {done} images of {folder} ({len(skipped)} skipped), {len(results)} detections with score >= "
          f"{net.score_thresh:g}: {out / 'detections.json'} and {done} PNGs in {out}")
