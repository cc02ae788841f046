"""What the server accepts from a client: nothing a client sends is trusted (issue 26).

A federation spans organisations, and node authentication proves only that a SuperNode is
registered, not that its uploads are honest. So every value a client sends is checked before
use, and a bad value rejects that client's update for the round (recorded with the client, the
round and the reason), never the round or the run:
- metrics: numbers where numbers are expected (int or float, not bool; NaN is the project's
  "not measured", infinities are refused), text only under the keys that carry text, at most
  MAX_TEXT characters; the partition id an integer;
- arrays: exactly the layout's count, shapes and dtypes (after decoding the transfer dtype), and
  finite; the aggregate is checked the same way before it becomes the global model;
- the example count (a client's weight in every weighted mean): an integer >= 1 and at most what
  the server knows the client can hold (`ExampleLimits`);
- identity: the partition a node serves is bound at its first contact (`IdentityBook`); a node
  changing its claim, or claiming a partition another connected node serves, is refused by name.
NumPy only (strategies never import torch).
"""

from __future__ import annotations

import math

import numpy as np

from protocol.layout import Layout
from protocol.weights import NDArrays

MAX_TEXT = 500
# metrics whose value is text; every other metric must be a number
TEXT_METRICS = frozenset({"state", "predictor_used", "ema_mixing", "fatal_error"})
# the range of metrics whose value has one (inclusive), when present
RANGES = {"train_seconds": (0.0, math.inf), "images_per_second": (0.0, math.inf), "lr": (0.0, math.inf),
          "divergence_reference": (0.0, math.inf), "divergence_reference_relative": (0.0, math.inf),
          "cdw": (0.0, 2.0)}  # FedPav's cosine distance


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def is_number(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def metrics_problem(metrics: dict) -> str | None:
    """Why a client's metrics cannot be used, or None."""
    for key, value in metrics.items():
        if not isinstance(key, str) or len(key) > 100:
            return f"metric name {_short(key)} is not a short text"
        if key in TEXT_METRICS:
            if not isinstance(value, str) or len(value) > MAX_TEXT:
                return f"metric {key!r} must be text of at most {MAX_TEXT} characters, got {_short(value)}"
            continue
        if not is_number(value):
            return f"metric {key!r} must be a number, got {_short(value)}"
        if math.isinf(float(value)):
            return f"metric {key!r} is infinite"
        lo, hi = RANGES.get(key, (-math.inf, math.inf))
        if not math.isnan(float(value)) and not lo <= float(value) <= hi:  # NaN: "not measured"
            return f"metric {key!r} must be in [{lo:g}, {hi:g}], got {_short(value)}"
    if "partition_id" in metrics and not isinstance(metrics["partition_id"], (int, np.integer)):
        return f"metric 'partition_id' must be an integer, got {_short(metrics['partition_id'])}"
    return None


def arrays_problem(arrays: NDArrays, layout: Layout) -> str | None:
    """Why decoded arrays are not a valid upload of `layout`: count, shapes, exact dtypes, finite values."""
    why = layout.check(arrays)
    if why is not None:
        return why
    for key, own, arr in zip(layout.keys, layout.wire_dtypes(), arrays):
        if not isinstance(arr, np.ndarray):
            return f"{key}: not an array"
        if str(arr.dtype) != own:
            return f"{key}: dtype {arr.dtype}, expected {own}"
    return None


def aggregate_problem(arrays: NDArrays, layout: Layout) -> str | None:
    """Why an aggregate must not become the global model (the server's own error), or None."""
    return arrays_problem(arrays, layout)


class ExampleLimits:
    """The most examples each client may claim.

    per_partition: each partition's size where the server can compute it (simulation, and a
    deployment of a partitioned dataset): a claim above it is refused. `maximum`: one bound for
    every site (trust.max_examples). Where neither is known, a claim is capped (not refused) at
    `ratio` times the median claim of the round's valid updates: a site with more data counts more,
    but no single site can outweigh the rest by a made-up count.
    """

    def __init__(self, per_partition: dict[int, int] | None = None, maximum: int | None = None, ratio: float = 4.0):
        self.per_partition = dict(per_partition or {})
        self.maximum, self.ratio = maximum, float(ratio)

    def problem(self, pid: int, num_examples) -> str | None:
        if not isinstance(num_examples, (int, np.integer)) or isinstance(num_examples, bool):
            return f"num_examples must be an integer, got {_short(num_examples)}"
        if num_examples < 1:
            return f"num_examples = {num_examples}"
        limit = self.per_partition.get(pid, self.maximum)
        if limit is not None and num_examples > limit:
            return f"num_examples = {num_examples} exceeds the {limit} examples this client can hold"
        return None

    def weights(self, pids: list[int], counts: list[int]) -> tuple[list[float], list[int]]:
        """The weights of the round's valid updates, and the partitions whose claim was capped."""
        if all(p in self.per_partition or self.maximum is not None for p in pids) or not counts:
            return [float(n) for n in counts], []
        cap = self.ratio * float(np.median(counts))
        capped = [p for p, n in zip(pids, counts) if p not in self.per_partition and self.maximum is None and n > cap]
        return [min(float(n), cap) if p in capped else float(n) for p, n in zip(pids, counts)], capped


class IdentityBook:
    """Which node serves which partition, bound at first contact and kept across a resume.

    A node keeps the partition it first claimed; a claim of a partition that another node serves
    is refused while that node is connected. When the bound node is gone (a SuperNode that
    re-registered, or every node after the server restarted), the partition passes to the node
    that claims it, and the change is recorded.
    """

    def __init__(self, num_clients: int):
        self.num_clients = num_clients
        self.node_of: dict[int, str] = {}  # partition id -> node id

    def claim(self, node: str, claimed, connected: set[str]) -> tuple[int | None, str | None, str | None]:
        """(partition id or None, refusal reason, note of a re-binding) for `node` claiming `claimed`."""
        if not is_int(claimed):
            return None, f"node {node} claims partition {_short(claimed)}, not an integer", None
        pid = int(claimed)
        if not 0 <= pid < self.num_clients:
            return None, f"node {node} claims partition {pid}, outside 0-{self.num_clients - 1}", None
        held = [p for p, n in self.node_of.items() if n == node]
        if held and held[0] != pid:
            return None, f"node {node} serves partition {held[0]} and now claims partition {pid}", None
        owner = self.node_of.get(pid)
        if owner is None or owner == node:
            self.node_of[pid] = node
            return pid, None, None
        if owner in connected:
            return None, f"node {node} claims partition {pid}, which node {owner} serves", None
        self.node_of[pid] = node
        return pid, None, f"partition {pid} passed from node {owner} (gone) to node {node}"

    def partition_of(self, node: str) -> int | None:
        """The partition `node` is bound to, or None."""
        return next((p for p, n in self.node_of.items() if n == node), None)

    def contested(self, claims: dict[str, object], connected: set[str]) -> dict[int, str]:
        """{partition: refusal} for partitions that two or more new nodes claim at once (`claims`:
        node -> claimed partition) while neither of them nor any connected node holds it: first
        contact cannot tell the site from an impostor, so none is bound until one node alone claims it."""
        claimants: dict[int, list[str]] = {}
        for node, claimed in claims.items():
            if is_int(claimed):
                claimants.setdefault(int(claimed), []).append(node)
        return {pid: f"nodes {', '.join(sorted(nodes))} all claim partition {pid}: none is bound while more than one does"
                for pid, nodes in claimants.items()
                if len(nodes) > 1 and self.node_of.get(pid) not in nodes and self.node_of.get(pid) not in connected}

    def state(self) -> dict:
        return {str(p): n for p, n in sorted(self.node_of.items())}

    def load(self, state: dict) -> None:
        self.node_of = {int(p): str(n) for p, n in state.items()}
