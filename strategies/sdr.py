"""Federated SDR pre-training (docs/algorithms.md#group-wise-aggregation): group-aware averaging.

Every array is first averaged over all clients weighted by examples (shared weights, the heads,
the centroids). Then each individual group's slice (the layout's `regions`: array index, rows,
block, group) is replaced by its average over the clients that routed samples to a path using
that group, weighted by those samples; a group no client routed to this round keeps the
example-weighted average (the full SDRnet, trained on all data, updated it everywhere). Clients
report `routed_<path>` sample counts; the layout's `path_groups[p]` is path p's group per block.
"""

from __future__ import annotations

import numpy as np

from protocol.checks import ConfigError
from protocol.weights import NDArrays
from strategies.base import FederatedAveraging


class FedSDR(FederatedAveraging):
    aggregates_by = "group_mean"  # an individual group over the clients that routed samples through it

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        if not self.layout.regions or not self.layout.path_groups:
            raise ConfigError(f"strategy={self.name} aggregates SDR groups; this task's upload has none "
                              f"(it needs the sdr task: an SDRnet)")

    def group_samples(self, metrics: dict) -> dict[tuple[int, int], int]:
        """(block, group) -> samples this client routed through it this round."""
        out: dict[tuple[int, int], int] = {}
        for p, groups in enumerate(self.layout.path_groups):
            n = int(metrics.get(f"routed_{p}", 0))
            for b, g in enumerate(groups):
                if n:
                    out[(b, g)] = out.get((b, g), 0) + n
        return out

    def aggregate_updates(self, server_round: int, updates) -> NDArrays:
        aggregated = self.combine(updates)
        samples = {pid: self.group_samples(m) for pid, _, _, m in updates}
        by_group: dict[str, dict] = {}
        for index, start, stop, block, group in self.layout.regions:
            contributors = [(arrays, samples[pid][(block, group)]) for pid, arrays, _, _ in updates
                            if samples[pid].get((block, group), 0) > 0]
            if contributors:
                total = sum(w for _, w in contributors)
                aggregated[index][start:stop] = sum(
                    a[index][start:stop].astype(np.float64) * (w / total) for a, w in contributors
                ).astype(aggregated[index].dtype)
            by_group[f"{block}.{group}"] = {"clients": [pid for pid, _, _, _ in updates
                                                        if samples[pid].get((block, group), 0) > 0],
                                            "samples": sum(s.get((block, group), 0) for s in samples.values())}
        for pid, _, _, metrics in updates:
            entry = self.record["clients"][str(pid)]
            entry["stage"] = int(metrics.get("stage", 0))
            entry["routed"] = {p: int(metrics[f"routed_{p}"]) for p in range(len(self.layout.path_groups))
                               if f"routed_{p}" in metrics}
            entry["centroid_loss"] = float(metrics.get("centroid_loss", float("nan")))
        self.record["groups"] = by_group
        return aggregated
