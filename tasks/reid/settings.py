"""The re-identification task's typed section: everything its code reads from a run's config, built once.

`reid_settings(cfg)` is the only place in tasks/reid/ that reads the config dict: the `reid.*`
keys, the re-ID dataset's keys, the backbone's `model.arch`/`model.width`, the run's seed, device
and clients, and `strategy.kd` (whether the server distils, so that the public set it will read
is checked before training). Each key's own type and range was checked before
(tasks/reid/__init__.CONFIG). The federation builds it once (Federation.settings) and hands it to
the layout, the local round, the evaluator, the distillation hook and the exported network.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Network:
    """What builds the re-ID model (tasks/reid/model.build_reid_net)."""

    arch: str
    width: float
    embedding_dim: int
    dropout: float
    seed: int  # the shared part's initial weights; client k's classifier: (seed, k)


@dataclass(frozen=True)
class Training:
    """A client's local round (tasks/reid/train.train_local)."""

    local_epochs: int
    batch_size: int
    lr_backbone: float  # backbone + embedding block
    lr_classifier: float
    momentum: float
    nesterov: bool
    weight_decay: float


@dataclass(frozen=True)
class Distillation:
    """FedPav's server-side distillation (tasks/reid/distill.py)."""

    enabled: bool  # strategy.kd
    lr: float
    batch_size: int
    public_size: int | None  # images of the public set used (None: all)
    form: str  # normalised | spec
    momentum: float  # reid.momentum, used by the normalised form


@dataclass(frozen=True)
class Identities:
    """Where each client's identities come from (tasks/reid/data.py)."""

    dataset: str  # cifar100_reid (the proxy) | reid_folders
    num_clients: int
    seed: int
    examples_per_client: int | None
    data_dir: str = ""
    cache_dir: str = ""
    download: bool = False
    source: str = ""  # the proxy's image data set
    public_classes: int = 0
    eval_fraction: float = 0.3
    size_ratio: float = 1.0
    query_per_id: int = 1
    roots: tuple[str, ...] = ()  # Market-1501 style folders, one per client
    public_root: str | None = None
    image_size: tuple[int, int] = (128, 64)  # H, W of folder images
    local_data: str | None = None  # a SuperNode serving its own data set

    @property
    def is_proxy(self) -> bool:
        return self.dataset == "cifar100_reid"


@dataclass(frozen=True)
class ReIDSettings:
    network: Network
    training: Training
    distillation: Distillation
    identities: Identities
    eval_batch_size: int
    eval_flip: bool  # retrieval feature: embedding(image) + embedding(mirror image)
    device: str


def reid_settings(cfg: dict) -> ReIDSettings:
    """The section of a run's config."""
    r, data, seed = cfg["reid"], cfg["dataset"], int(cfg["seed"])
    epc = cfg.get("examples_per_client")
    h, w = data.get("image_size") or (128, 64)
    identities = Identities(
        dataset=str(data["name"]), num_clients=int(cfg["num_clients"]), seed=seed,
        examples_per_client=None if epc is None else int(epc), data_dir=str(cfg.get("data_dir", "")),
        cache_dir=str(cfg.get("cache_dir", "")), download=bool(cfg.get("data_download", False)),
        source=str(data.get("source") or ""), public_classes=int(data.get("public_classes") or 0),
        eval_fraction=float(data.get("eval_fraction", 0.3)), size_ratio=float(data.get("size_ratio", 1.0)),
        query_per_id=int(data.get("query_per_id", 1)), roots=tuple(str(x) for x in data.get("roots") or ()),
        public_root=str(data["public_root"]) if data.get("public_root") else None, image_size=(int(h), int(w)),
        local_data=str(cfg["local_data"]) if cfg.get("local_data") else None)
    public = r.get("kd_public_size")
    return ReIDSettings(
        network=Network(arch=str(cfg["model"]["arch"]), width=float(cfg["model"]["width"]),
                        embedding_dim=int(r["embedding_dim"]), dropout=float(r["dropout"]), seed=seed),
        training=Training(local_epochs=int(r["local_epochs"]), batch_size=int(r["batch_size"]),
                          lr_backbone=float(r["lr_backbone"]), lr_classifier=float(r["lr_classifier"]),
                          momentum=float(r["momentum"]), nesterov=bool(r["nesterov"]),
                          weight_decay=float(r["weight_decay"])),
        distillation=Distillation(enabled=bool((cfg.get("strategy") or {}).get("kd")), lr=float(r["kd_lr"]),
                                  batch_size=int(r["kd_batch_size"]), public_size=None if public is None else int(public),
                                  form=str(r.get("kd_form", "normalised")), momentum=float(r["momentum"])),
        identities=identities, eval_batch_size=int(r["eval_batch_size"]), eval_flip=bool(r["eval_flip"]),
        device=str(cfg["device"]))
