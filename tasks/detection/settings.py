"""The detection task's typed section: everything its code reads from a run's config, built and checked once.

`detection_settings(cfg)` is the only place in tasks/detection/ that reads the config dict: the
`detection.*` keys, the detection dataset's keys, the backbone's `model.arch`/`model.width`, the
run's seed, device, sites and rounds, and the two strategy keys the task declares as layout options
(`strategy.share`, `strategy.bn`: what a site uploads). Its checks of keys against each other run
here; each key's own type and range was checked before (tasks/detection/__init__.CONFIG).
The federation builds it once (Federation.settings) and hands it to the layout, the local round,
the evaluator and the exported network; a client builds it once from the run's config.
"""

from __future__ import annotations

from dataclasses import dataclass

from protocol.checks import ConfigError
from tasks.detection.annotations import VOC_CLASSES


@dataclass(frozen=True)
class Detector:
    """What builds the detector, identically on every node (tasks/detection/model.build_detector)."""

    backbone: str  # project | resnet18 | resnet34 | resnet50
    backbone_init: str  # random | an SSL run's checkpoint (read by the server only)
    fpn_channels: int
    head_convs: int
    arch: str  # model.arch and model.width: the project backbone's, so that SSL encoders load key for key
    width: float
    classes: tuple[str, ...]  # labels 1..C
    min_size: int  # the detector's transform: shorter side, longer side at most max_size
    max_size: int
    score_thresh: float
    nms_thresh: float
    detections_per_image: int
    seed: int  # the initial weights

    @property
    def num_classes(self) -> int:
        return len(self.classes)


@dataclass(frozen=True)
class Training:
    """A site's local round (tasks/detection/train.train_local)."""

    local_epochs: int
    batch_size: int
    lr: float
    lr_schedule: str  # cosine | constant, over `num_rounds`
    num_rounds: int
    momentum: float
    weight_decay: float
    flip: bool


@dataclass(frozen=True)
class Sites:
    """Where each site's images come from (tasks/detection/data.py)."""

    dataset: str  # synthetic_detection | voc | coco_folders | ...
    count: int  # sites of the federation (under strategy=centralised: those its one client stands for)
    pooled: bool  # strategy=centralised: one client trains on every site's images
    seed: int
    examples_per_client: int | None  # training images per site (seeded subset; pooled: the whole client's)
    eval_images: int | None  # test images per site (seeded subset)
    voc_difficult: str  # ignore (the VOC protocol) | include
    max_side: int  # folder images are shrunk to this on reading (dataset.max_size)
    classes: tuple[str, ...]
    synthetic: tuple = ()  # the synthetic set's own keys, sorted (key, value) pairs; () for folders
    data_dir: str = ""
    cache_dir: str = ""
    format: str = ""  # voc | coco (folders)
    roots: tuple[str, ...] = ()  # one folder per site, in partition-id order
    local_data: str | None = None  # a SuperNode serving its own folder
    train_split: str = ""
    test_split: str = ""

    @property
    def is_synthetic(self) -> bool:
        return self.dataset == "synthetic_detection"

    def readable(self) -> bool:
        """Whether the server can read every site's test split (the synthetic set, or dataset.roots)."""
        return self.is_synthetic or bool(self.roots)


@dataclass(frozen=True)
class DetectionSettings:
    """The detection task's section. `shared`/`bn`: the strategy's sharing rule, the task's declared
    layout options (shared: all | backbone; bn: global | local)."""

    detector: Detector
    training: Training
    sites: Sites
    evaluate: str  # auto | server | clients (as asked; model.evaluated_by resolves auto)
    eval_batch_size: int
    device: str
    shared: str = "all"
    bn: str = "global"

    def layout_options(self) -> dict:
        """The settings that shape the upload, sent to the clients in their instructions."""
        return {"shared": self.shared, "bn": self.bn}


def class_names(dataset: dict) -> tuple[str, ...]:
    """The run's object classes (labels 1..C): `dataset.classes`, VOC's 20 when a VOC run lists none,
    else class1..classN."""
    if dataset["name"] == "voc" and not dataset.get("classes"):
        return VOC_CLASSES
    if dataset.get("classes"):
        return tuple(str(c) for c in dataset["classes"])
    return tuple(f"class{c}" for c in range(1, int(dataset["num_classes"]) + 1))


def detection_settings(cfg: dict) -> DetectionSettings:
    """The section of a run's config (ConfigError naming the keys where they contradict each other)."""
    d, data, strategy = cfg["detection"], cfg["dataset"], cfg.get("strategy") or {}
    _check(d, data)
    classes = class_names(data)
    seed = int(cfg["seed"])
    epc = cfg.get("examples_per_client")
    pooled = cfg.get("centralised_from_clients")
    folders = data["name"] != "synthetic_detection"
    sites = Sites(
        dataset=str(data["name"]), count=int(pooled or cfg["num_clients"]), pooled=bool(pooled), seed=seed,
        examples_per_client=None if epc is None else int(epc),
        eval_images=None if d.get("eval_images") is None else int(d["eval_images"]),
        voc_difficult=str(d.get("voc_difficult", "ignore")), max_side=int(data["max_size"]), classes=classes,
        synthetic=() if folders else tuple(sorted((k, v) for k, v in data.items() if not isinstance(v, list))),
        data_dir=str(cfg.get("data_dir", "")), cache_dir=str(cfg.get("cache_dir", "")),
        format=str(data.get("format") or ""), roots=tuple(str(r) for r in data.get("roots") or ()),
        local_data=str(cfg["local_data"]) if cfg.get("local_data") else None,
        train_split=str(data.get("train_split") or ""), test_split=str(data.get("test_split") or ""))
    detector = Detector(
        backbone=str(d["backbone"]), backbone_init=str(d["backbone_init"]), fpn_channels=int(d["fpn_channels"]),
        head_convs=int(d["head_convs"]), arch=str(cfg["model"]["arch"]), width=float(cfg["model"]["width"]),
        classes=classes, min_size=int(data["min_size"]), max_size=int(data["max_size"]),
        score_thresh=float(d["score_thresh"]), nms_thresh=float(d["nms_thresh"]),
        detections_per_image=int(d["detections_per_image"]), seed=seed)
    training = Training(
        local_epochs=int(d["local_epochs"]), batch_size=int(d["batch_size"]), lr=float(d["lr"]),
        lr_schedule=str(d["lr_schedule"]), num_rounds=int(cfg["num_rounds"]), momentum=float(d["momentum"]),
        weight_decay=float(d["weight_decay"]), flip=bool(d["flip"]))
    return DetectionSettings(detector, training, sites, evaluate=str(d["evaluate"]),
                             eval_batch_size=int(d["eval_batch_size"]), device=str(cfg["device"]),
                             shared=str(strategy.get("share", "all")), bn=str(strategy.get("bn", "global")))


def _check(d: dict, data: dict) -> None:
    """What the detection and dataset keys refuse together."""
    if int(d["fpn_channels"]) % 32:
        raise ConfigError(f"detection.fpn_channels must be a multiple of 32 (FCOS's head normalises in 32 groups), "
                          f"got {d['fpn_channels']}")
    if data.get("format") == "coco" and not data.get("classes"):
        raise ConfigError("dataset.classes is required for dataset=coco_folders: the run's class names, e.g. "
                          "'dataset.classes=[car,person]' (each site's categories are matched to them by name)")
    if data.get("num_classes") is not None and data.get("classes") and int(data["num_classes"]) != len(data["classes"]):
        raise ConfigError(f"dataset.num_classes={data['num_classes']} but dataset.classes lists {len(data['classes'])} "
                          f"names; leave dataset.num_classes=null (it follows the list)")
    if data["name"] == "synthetic_detection":
        if not int(data["min_object"]) <= int(data["max_object"]) <= int(data["canvas"]):
            raise ConfigError(f"dataset.min_object <= dataset.max_object <= dataset.canvas is needed, got "
                              f"{data['min_object']}, {data['max_object']}, {data['canvas']}")
        if int(data["classes_per_site"]) > int(data["num_classes"]):
            raise ConfigError(f"dataset.classes_per_site={data['classes_per_site']} exceeds dataset.num_classes="
                              f"{data['num_classes']}")
    if str(d["backbone_init"]) != "random" and d["backbone"] != "project":
        raise ConfigError(f"detection.backbone_init loads an SSL encoder of this project's backbone; it needs "
                          f"detection.backbone=project, got {d['backbone']!r}")
