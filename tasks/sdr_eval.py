"""Server-side evaluation of a federated SDR network (SPEC §4 protocol, §6 paths).

Every evaluation: kNN accuracy of the full SDRnet's features. After the last round also the
kNN accuracy of every path (`path_knn`) and the linear probe of the full network.
"""

from __future__ import annotations

import numpy as np

from tasks.evaluate import extract_features, knn_accuracy, linear_probe
from tasks.federated_data import evaluation_sets
from tasks.sdr import build_sdr_model
from tasks.train import resolve_device
from tasks.wire import set_arrays


class PathFeatures:
    """`net` restricted to one path (or the full network) as a plain feature extractor."""

    def __init__(self, net, path):
        self.net, self.path = net, path

    def to(self, device):
        self.net.to(device)
        return self

    def eval(self):
        self.net.eval()
        return self

    def __call__(self, x):
        return self.net(x, self.path)


def path_knn(net, sets: dict, path, device, ev: dict) -> float:
    f = PathFeatures(net, path)
    bs = int(ev["batch_size"])
    bank, test = extract_features(f, sets["x_bank"], device, bs), extract_features(f, sets["x_test"], device, bs)
    return knn_accuracy(bank, sets["y_bank"], test, sets["y_test"], sets["num_classes"], int(ev["knn_k"]),
                        float(ev["knn_temperature"]))


class SDREvaluator:
    def __init__(self, cfg: dict):
        self.cfg, self._sets = cfg, None

    def sets(self) -> dict:
        if self._sets is None:
            self._sets = evaluation_sets(self.cfg)
        return self._sets

    def __call__(self, server_round: int, models: dict[str, list[np.ndarray]], final: bool) -> dict:
        model = build_sdr_model(self.cfg)
        set_arrays(model, list(model.state_dict()), models["global"])
        net, ev, s = model.net, self.cfg["eval"], self.sets()
        device = resolve_device(str(self.cfg["device"]))
        out = {"knn_accuracy": path_knn(net, s, None, device, ev), "final": final}
        if final:
            out["path_knn"] = {str(p): path_knn(net, s, p, device, ev) for p in range(net.num_paths)}
            out["mean_path_knn"] = float(np.mean(list(out["path_knn"].values())))
            if ev["linear"]:
                bs = int(ev["batch_size"])
                bank = extract_features(net, s["x_bank"], device, bs)
                test = extract_features(net, s["x_test"], device, bs)
                out["linear_accuracy"] = linear_probe(
                    bank, s["y_bank"], test, s["y_test"], s["num_classes"], epochs=int(ev["linear_epochs"]),
                    lr=float(ev["linear_lr"]), batch_size=int(ev["linear_batch_size"]), seed=int(self.cfg["seed"]))
        out["bank_size"], out["test_size"] = len(s["y_bank"]), len(s["y_test"])
        return out
