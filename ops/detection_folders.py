"""Write the synthetic detection sites as PASCAL VOC folders, one per site, to try the folder path
(`dataset=voc`) and deployments whose SuperNodes serve their own folders:

    python -m ops.detection_folders /tmp/sites num_clients=2 experiment=smoke
    python -m ops.local_federation --nodes 2 --local-data 0=/tmp/sites/site0 --local-data 1=/tmp/sites/site1 \
        strategy=fedavg dataset=voc detection.evaluate=clients 'dataset.classes=[class1,...,class10]'

Each site gets <out>/site<k>/ with a `trainval` and a `test` split (the synthetic set's train and
test images of that site, for the config's seed and sizes) and classes named class1..classN.
<out> must be new or empty: a folder that holds anything is refused, unless `--replace` is given
(`python -m ops.detection_folders /tmp/sites --replace num_clients=2 ...`) and it holds only site
folders of an earlier export, which are then removed first (a larger earlier export leaves no extra
site behind). A folder with other files is never emptied.
"""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

from app.config import ConfigError, compose, to_plain
from app.schema import validate
from tasks.common.data import DataError
from tasks.detection.annotations import write_voc
from tasks.detection.data import site_split
from tasks.detection.settings import detection_settings


SITE = re.compile(r"^site\d+$")


class FolderTaken(RuntimeError):
    """The target folder holds files; the message says what to do."""


def clear_target(out: Path, replace: bool) -> None:
    """Refuse a non-empty `out`; with `replace`, remove an earlier export's site folders from it."""
    held = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if not held:
        return
    if not replace:
        raise FolderTaken(f"{out} is not empty ({', '.join(held[:5])}{', ...' if len(held) > 5 else ''}); "
                          f"pass --replace to delete its site folders and write them again, or give a new folder")
    other = [name for name in held if not (SITE.match(name) and (out / name).is_dir())]
    if other:
        raise FolderTaken(f"{out} holds more than site folders ({', '.join(other[:5])}); --replace only removes "
                          f"an earlier export's site<k> folders: give a new folder")
    for name in held:
        shutil.rmtree(out / name)


def export(cfg: dict, out: Path, replace: bool = False) -> list[Path]:
    """Write every site's VOC folder under `out` (new or empty; `replace`: see `clear_target`)."""
    out = Path(out)
    clear_target(out, replace)
    folders = []
    sites = detection_settings(cfg).sites
    names = sites.classes
    for site in range(sites.count):
        folder = out / f"site{site}"
        train, test = site_split(sites, site, "train"), site_split(sites, site, "test")
        write_voc(folder, "trainval", train.images, train.boxes, train.labels, names)
        write_voc(folder, "test", test.images, test.boxes, test.labels, names, start=len(train))
        folders.append(folder)
    return folders


def main(argv: list[str]) -> int:
    replace = "--replace" in argv
    argv = [a for a in argv if a != "--replace"]
    if not argv or argv[0].startswith("-") or "=" in argv[0]:
        print(__doc__)
        return 2
    options = [a for a in argv[1:] if a.startswith("-")]
    if options:
        print(f"error: unknown option {options[0]}; usage: python -m ops.detection_folders <new folder> [--replace] "
              f"[key=value ...]", file=sys.stderr)
        return 2
    try:
        cfg = to_plain(compose(["dataset=synthetic_detection", *argv[1:]]))
        validate(cfg)  # the values' types and ranges, then the synthetic set's sizes
        classes = detection_settings(cfg).detector.classes
        folders = export(cfg, Path(argv[0]), replace=replace)
    except (FolderTaken, ConfigError, DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except OSError as err:  # the target is a file, lies under one, or cannot be written
        print(f"error: cannot write the site folders to {argv[0]} ({err.strerror or type(err).__name__}: "
              f"{err.filename}); give a new folder you can write to", file=sys.stderr)
        return 1
    for folder in folders:
        print(folder)
    print("classes:", "[" + ",".join(classes) + "]")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
