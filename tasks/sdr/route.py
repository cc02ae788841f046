"""Routing a downstream task to a sub-network of a trained SDR checkpoint (docs/algorithms.md#routing-a-downstream-task).

    python main.py mode=route checkpoint=<run>/checkpoint_final.pt dataset=cifar10

From the downstream training set, a seeded class-balanced `route.bank_size` images form the
kNN memory bank and `route.val_size` other images choose the path (kNN accuracy of each path's
features); the chosen path, the full SDRnet and every other path are then reported on
`route.test_size` test images, so the choice is never made on the numbers it is judged by.
The best path is exported as a standalone backbone (tasks/sdr/net.save_backbone), reloaded, and
its linear-probe accuracy reported. Writes route.json next to the exported backbone.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tasks.common.arrays import set_arrays
from tasks.common.atomic import write_json_atomic
from tasks.common.data import DataError, balanced_subset, take_rows
from tasks.common.evaluate import features_on, knn_score, probe_score
from tasks.common.federated_data import dataset_of
from tasks.common.sections import Images
from tasks.common.training import resolve_device
from tasks.sdr.evaluator import PathFeatures
from tasks.sdr.model import build_sdr_model
from tasks.sdr.net import export_path, load_backbone, save_backbone
from tasks.sdr.settings import Routing, SDRSettings, routing_settings


def _coarse_filter(d: Images, names: list[str]):
    """Row masks of the CIFAR-100 superclasses `names` (needs the coarse labels in the .npz)."""
    path = Path(d.data_dir).expanduser() / "cifar100.npz"
    if d.dataset != "cifar100" or not path.is_file():
        raise DataError("route.superclasses needs dataset=cifar100 from cifar100.npz (with its coarse labels)")
    with np.load(path, allow_pickle=False) as z:
        if "coarse_classes" not in z.files:
            raise DataError(f"{path} has no coarse labels (y_train_coarse, coarse_classes)")
        coarse = [str(c) for c in z["coarse_classes"]]
        unknown = [n for n in names if n not in coarse]
        if unknown:
            raise DataError(f"route.superclasses: unknown {unknown}; valid: {coarse}")
        keep = [coarse.index(n) for n in names]
        return np.isin(z["y_train_coarse"], keep), np.isin(z["y_test_coarse"], keep)


def downstream_sets(r: Routing) -> dict:
    ds, seed = dataset_of(r.images), r.seed
    y_train, y_test = np.asarray(ds.y_train), np.asarray(ds.y_test)
    train_rows, test_rows = np.arange(len(y_train)), np.arange(len(y_test))
    if r.superclasses:
        train_mask, test_mask = _coarse_filter(r.images, list(r.superclasses))
        train_rows, test_rows = np.flatnonzero(train_mask), np.flatnonzero(test_mask)
    classes = np.unique(y_train[train_rows])  # relabel 0..C-1 (a subset may keep few classes)
    pool = train_rows[balanced_subset(y_train[train_rows], r.bank_size + r.val_size, seed)]
    bank, val = np.sort(pool[: r.bank_size]), np.sort(pool[r.bank_size:])
    test = np.sort(test_rows[balanced_subset(y_test[test_rows], r.test_size, seed + 1)])
    relabel = lambda y: np.searchsorted(classes, y)  # noqa: E731
    return {"x_bank": take_rows(ds.x_train, bank), "y_bank": relabel(y_train[bank]),
            "x_val": take_rows(ds.x_train, val), "y_val": relabel(y_train[val]),
            "x_test": take_rows(ds.x_test, test), "y_test": relabel(y_test[test]), "num_classes": len(classes)}


def route(trained: SDRSettings, keys: list[str], arrays: list[np.ndarray], cfg: dict, out_dir: str | Path) -> dict:
    """Rank every path of the SDR model (`trained`: its run's section; `keys`/`arrays`: its global
    weights) on the downstream set of the command's config `cfg` (routing_settings), export the best
    one; returns the report."""
    r = routing_settings(cfg)
    model = build_sdr_model(trained.network)
    set_arrays(model, keys, arrays)
    net, ev = model.net, r.evaluation
    device = resolve_device(r.device)
    s = downstream_sets(r)
    bs = ev.batch_size

    def scores(path):
        bank, val, test = features_on(PathFeatures(net, path), s, ("x_bank", "x_val", "x_test"), device, bs)
        return {"val_knn": knn_score(bank, val, s["y_val"], s, ev), "test_knn": knn_score(bank, test, s["y_test"], s, ev)}

    paths = [{"path": p, "groups": list(net.path_groups(p)), **scores(p)} for p in range(net.num_paths)]
    ranked = sorted(paths, key=lambda r: (-r["val_knn"], r["path"]))
    full = scores(None)
    best = ranked[0]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    exported = save_backbone(out / f"backbone_path{best['path']}.pt", export_path(net, best["path"]),
                             {"path": best["path"], "groups": best["groups"], "source": r.checkpoint})
    backbone = load_backbone(exported)  # what a user gets: features = backbone(x)
    bank, test = features_on(backbone, s, ("x_bank", "x_test"), device, bs)
    probe = probe_score(bank, test, s, ev, epochs=r.linear_epochs)
    report = {"checkpoint": r.checkpoint, "dataset": r.images.dataset,
              "superclasses": list(r.superclasses), "num_classes": s["num_classes"],
              "ranked": ranked, "full": full, "chosen": best,
              "mean_path_test_knn": float(np.mean([p["test_knn"] for p in paths])),
              "exported_backbone": exported, "exported_linear_accuracy": probe}
    write_json_atomic(out / "route.json", report)
    return report


def table(report: dict) -> str:
    lines = [f"downstream {report['dataset']} {' '.join(report['superclasses'])} ({report['num_classes']} classes); "
             f"paths ranked by kNN on a validation split of its training set", "",
             "| rank | path | groups per block | val kNN (%) | test kNN (%) |", "|---|---|---|---|---|"]
    for i, r in enumerate(report["ranked"], 1):
        lines.append(f"| {i} | {r['path']} | {r['groups']} | {100 * r['val_knn']:.2f} | {100 * r['test_knn']:.2f} |")
    f = report["full"]
    lines += ["", f"full SDRnet: val {100 * f['val_knn']:.2f}%, test {100 * f['test_knn']:.2f}%; "
              f"mean over paths (test) {100 * report['mean_path_test_knn']:.2f}%",
              f"chosen path {report['chosen']['path']}: exported to {report['exported_backbone']}; "
              f"linear probe on it {100 * report['exported_linear_accuracy']:.2f}%"]
    return "\n".join(lines)
