"""The SDR task's typed sections: a run's (network, training, images, evaluation) and mode=route's, built from the config once.

`sdr_settings(cfg)` and `routing_settings(cfg)` are the only places in tasks/sdr/ that read the
config dict: the `sdr.*` and `route.*` keys, the shared image, evaluation and compute sections
(tasks/common/sections.py), the run's seed, rounds, local epochs and batch size. Each key's type
and range was checked before (tasks/sdr/__init__.CONFIG); the sizes of the blocks against each
other are checked here.
"""

from __future__ import annotations

from dataclasses import dataclass

from protocol.checks import ConfigError
from tasks.common.sections import Devices, Evaluation, Images, devices_of, evaluation_of, images_of


@dataclass(frozen=True)
class Network:
    """The SDRnet, its SimSiam heads and centroids (tasks/sdr/model.build_sdr_model)."""

    groups: int  # G individual groups per block; G^B paths
    stem: int
    shared: tuple[int, ...]  # shared channels per block
    group: tuple[int, ...]  # channels of each individual group per block
    strides: tuple[int, ...]
    width: float  # multiplies stem / shared / group
    proj_dim: int
    pred_hidden: int
    seed: int  # identical on every node


@dataclass(frozen=True)
class Training:
    """A client's round (tasks/sdr/train.py): SimSiam + SiamKD, then its centroid steps."""

    local_epochs: int
    batch_size: int
    num_rounds: int  # the progressive stages and the cosine learning rate run over them
    lr: float
    momentum: float
    weight_decay: float
    kd_weight: float
    centroid_steps: int
    centroid_lr: float
    cluster_temperature: float
    sinkhorn_epsilon: float


@dataclass(frozen=True)
class SDRSettings:
    network: Network
    training: Training
    images: Images
    evaluation: Evaluation
    devices: Devices


@dataclass(frozen=True)
class Routing:
    """mode=route: the downstream set a trained SDR checkpoint's paths are ranked on (tasks/sdr/route.py)."""

    images: Images  # the command's data set
    evaluation: Evaluation
    device: str
    bank_size: int
    val_size: int
    test_size: int
    superclasses: tuple[str, ...]  # CIFAR-100 coarse classes kept; () = every class
    linear_epochs: int
    checkpoint: str
    seed: int


def sdr_settings(cfg: dict) -> SDRSettings:
    sd = cfg["sdr"]
    if not len(sd["shared"]) == len(sd["group"]) == len(sd["strides"]):
        raise ConfigError(f"sdr.shared, sdr.group and sdr.strides need one entry per SDR block, got {sd['shared']}, "
                          f"{sd['group']}, {sd['strides']}")
    network = Network(groups=int(sd["groups"]), stem=int(sd["stem"]), shared=tuple(int(v) for v in sd["shared"]),
                      group=tuple(int(v) for v in sd["group"]), strides=tuple(int(v) for v in sd["strides"]),
                      width=float(sd["width"]), proj_dim=int(sd["proj_dim"]), pred_hidden=int(sd["pred_hidden"]),
                      seed=int(cfg["seed"]))
    training = Training(local_epochs=int(cfg["local_epochs"]), batch_size=int(cfg["batch_size"]),
                        num_rounds=int(cfg["num_rounds"]), lr=float(sd["lr"]), momentum=float(sd["momentum"]),
                        weight_decay=float(sd["weight_decay"]), kd_weight=float(sd["kd_weight"]),
                        centroid_steps=int(sd["centroid_steps"]), centroid_lr=float(sd["centroid_lr"]),
                        cluster_temperature=float(sd["cluster_temperature"]),
                        sinkhorn_epsilon=float(sd["sinkhorn_epsilon"]))
    return SDRSettings(network, training, images_of(cfg), evaluation_of(cfg), devices_of(cfg))


def routing_settings(cfg: dict) -> Routing:
    r = cfg["route"]
    return Routing(images=images_of(cfg), evaluation=evaluation_of(cfg), device=str(cfg["device"]),
                   bank_size=int(r["bank_size"]), val_size=int(r["val_size"]), test_size=int(r["test_size"]),
                   superclasses=tuple(str(c) for c in r.get("superclasses") or ()),
                   linear_epochs=int(r["linear_epochs"]), checkpoint=str(cfg["checkpoint"]), seed=int(cfg["seed"]))
