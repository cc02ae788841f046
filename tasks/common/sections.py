"""Typed sections every image task shares (its images, its evaluation, its compute), built from a run's config once.

The SSL and SDR tasks train on image-classification data sets split among the clients and are
scored by kNN and the linear probe; their own sections (tasks/ssl/settings.py,
tasks/sdr/settings.py) hold these. Each key's type and range was checked before (the CONFIG
of tasks/common/{evaluate,partition,precision,data}.py); these only read and convert.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tasks.common.precision import Compute, compute_of


@dataclass(frozen=True)
class Images:
    """A run's image data set and how it is split among the clients (tasks/common/federated_data.py)."""

    dataset: str
    data_dir: str
    cache_dir: str
    download: bool
    num_clients: int
    seed: int
    partition: str  # iid | classes | dirichlet
    alpha: float
    classes_per_client: int | None
    shuffle_classes: bool
    min_size: int
    examples_per_client: int | None
    batch_size: int  # a client must hold at least one batch
    local_data: str | None = None  # a SuperNode training on its own images

    def partition_key(self) -> tuple:
        """What the partitions depend on (they are cached per process by it)."""
        return (self.dataset, self.data_dir, self.cache_dir, self.download, self.num_clients, self.seed,
                self.partition, self.alpha, self.classes_per_client, self.shuffle_classes, self.min_size,
                self.examples_per_client)


@dataclass(frozen=True)
class Evaluation:
    """The `eval` section: kNN monitor, linear probe, semi-supervised fine-tuning (tasks/common/evaluate.py)."""

    knn_k: tuple[int, ...]  # the first is the headline's
    knn_temperature: float
    knn_features: str  # backbone | projector
    bank_size: int | None
    test_size: int | None
    linear: bool
    linear_epochs: int
    linear_lr: float
    linear_batch_size: int
    batch_size: int  # feature extraction
    bn: str  # aggregated | reestimated | both
    semi: bool
    semi_fractions: tuple[float, ...]
    semi_epochs: int
    semi_lr: float
    semi_head_lr: float
    semi_batch_size: int
    semi_bn: str
    seed: int


@dataclass(frozen=True)
class Devices:
    """Where and how the task's tensors are computed: `device` (auto: CUDA when present) and the
    precision, memory format and compilation each machine resolves for itself."""

    device: str
    precision: str
    channels_last: bool
    compile: bool

    def compute(self, device: torch.device, flags: set[str] | None = None) -> Compute:
        return compute_of(self.precision, self.channels_last, self.compile, device, flags)


def images_of(cfg: dict) -> Images:
    p, epc = cfg["partition"], cfg.get("examples_per_client")
    cpc = p.get("classes_per_client")
    return Images(
        dataset=str(cfg["dataset"]["name"]), data_dir=str(cfg["data_dir"]), cache_dir=str(cfg["cache_dir"]),
        download=bool(cfg["data_download"]), num_clients=int(cfg["num_clients"]), seed=int(cfg["seed"]),
        partition=str(p["name"]), alpha=float(p.get("alpha") or 0.5), classes_per_client=None if cpc is None else int(cpc),
        shuffle_classes=bool(p.get("shuffle_classes", False)), min_size=int(p.get("min_size") or 10),
        examples_per_client=None if epc is None else int(epc), batch_size=int(cfg["batch_size"]),
        local_data=str(cfg["local_data"]) if cfg.get("local_data") else None)


def evaluation_of(cfg: dict) -> Evaluation:
    ev = cfg["eval"]
    ks = ev["knn_k"]
    return Evaluation(
        knn_k=tuple(int(k) for k in ks) if isinstance(ks, (list, tuple)) else (int(ks),),
        knn_temperature=float(ev["knn_temperature"]), knn_features=str(ev["knn_features"]),
        bank_size=None if ev.get("bank_size") is None else int(ev["bank_size"]),
        test_size=None if ev.get("test_size") is None else int(ev["test_size"]), linear=bool(ev["linear"]),
        linear_epochs=int(ev["linear_epochs"]), linear_lr=float(ev["linear_lr"]),
        linear_batch_size=int(ev["linear_batch_size"]), batch_size=int(ev["batch_size"]),
        bn=str(ev.get("bn", "aggregated")), semi=bool(ev.get("semi", False)),
        semi_fractions=tuple(float(f) for f in ev.get("semi_fractions") or ()), semi_epochs=int(ev["semi_epochs"]),
        semi_lr=float(ev["semi_lr"]), semi_head_lr=float(ev["semi_head_lr"]), semi_batch_size=int(ev["semi_batch_size"]),
        semi_bn=str(ev["semi_bn"]), seed=int(cfg["seed"]))


def devices_of(cfg: dict) -> Devices:
    return Devices(device=str(cfg["device"]), precision=str(cfg.get("precision", "fp32")),
                   channels_last=bool(cfg.get("channels_last", False)), compile=bool(cfg.get("compile", False)))
