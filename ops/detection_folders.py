"""Write the synthetic detection sites as PASCAL VOC folders, one per site, to try the folder path
(`dataset=voc`) and deployments whose SuperNodes serve their own folders:

    python -m ops.detection_folders /tmp/sites num_clients=2 experiment=smoke
    python -m ops.local_federation --nodes 2 --local-data 0=/tmp/sites/site0 --local-data 1=/tmp/sites/site1 \
        strategy=fedavg dataset=voc detection.evaluate=clients 'dataset.classes=[class1,...,class10]'

Each site gets <out>/site<k>/ with a `trainval` and a `test` split (the synthetic set's train and
test images of that site, for the config's seed and sizes) and classes named class1..classN.
"""

from __future__ import annotations

import sys
from pathlib import Path

from app.config import compose, to_plain
from tasks.detection.annotations import write_voc
from tasks.detection.data import class_names, num_sites, site_split


def export(cfg: dict, out: Path) -> list[Path]:
    folders = []
    names = class_names(cfg)
    for site in range(num_sites(cfg)):
        folder = out / f"site{site}"
        train, test = site_split(cfg, site, "train"), site_split(cfg, site, "test")
        write_voc(folder, "trainval", train.images, train.boxes, train.labels, names)
        write_voc(folder, "test", test.images, test.boxes, test.labels, names, start=len(train))
        folders.append(folder)
    return folders


def main(argv: list[str]) -> int:
    if not argv or argv[0].startswith("-") or "=" in argv[0]:
        print(__doc__)
        return 2
    cfg = to_plain(compose(["dataset=synthetic_detection", *argv[1:]]))
    for folder in export(cfg, Path(argv[0])):
        print(folder)
    print("classes:", "[" + ",".join(class_names(cfg)) + "]")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
