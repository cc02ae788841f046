"""Server-side retrieval evaluation for FedPav (docs/algorithms.md#retrieval-evaluation), given to the strategy as a hook.

Each client has its own evaluation identities (never trained on). The global model is
evaluated on every client's query/gallery; under standalone, client k's own model on client
k's set. Reported: rank-1/5/10 and mAP per client (`per_client`) and their mean.
"""

from __future__ import annotations

import math

import numpy as np

from protocol.layout import Layout
from tasks.common.arrays import set_arrays
from tasks.common.training import resolve_device
from tasks.reid.data import client_eval
from tasks.reid.model import build_reid_net, embeddings, shared_keys
from tasks.reid.retrieval import retrieval_metrics
from tasks.reid.settings import ReIDSettings

METRICS = ("rank1", "rank5", "rank10", "mAP")


class ReIDEvaluator:
    def __init__(self, settings: ReIDSettings, layout: Layout):
        self.settings = settings
        self._sets: dict[int, object] = {}

    def eval_set(self, pid: int):
        if pid not in self._sets:
            self._sets[pid] = client_eval(self.settings.identities, pid)
        return self._sets[pid]

    def load(self, arrays: list[np.ndarray]):
        net = build_reid_net(self.settings.network)
        set_arrays(net, shared_keys(net), arrays)
        return net

    def evaluate_one(self, net, pid: int) -> dict:
        """Retrieval of client `pid`'s query/gallery with `net`'s embeddings."""
        device = resolve_device(self.settings.device)
        s = self.eval_set(pid)
        bs, flip = self.settings.eval_batch_size, self.settings.eval_flip
        q = embeddings(net, s.query, device, bs, flip)
        g = embeddings(net, s.gallery, device, bs, flip)
        return retrieval_metrics(q, s.query_ids, s.query_cams, g, s.gallery_ids, s.gallery_cams)

    def __call__(self, server_round: int, models: dict[str, list[np.ndarray]], final: bool) -> dict:
        pids = range(self.settings.identities.num_clients)
        if list(models) == ["global"]:  # one model, built once, on every client's identities
            net = self.load(models["global"])
            per_client = {str(pid): self.evaluate_one(net, pid) for pid in pids}
        else:  # standalone: each client's own model on its own identities
            per_client = {name: self.evaluate_one(self.load(arrays), int(name)) for name, arrays in models.items()}
        out = {m: float(np.mean([c[m] for c in per_client.values() if not math.isnan(c[m])] or [math.nan]))
               for m in METRICS}
        out.update(per_client=per_client, final=final,
                   num_queries=int(sum(c["num_queries"] for c in per_client.values())))
        return out
