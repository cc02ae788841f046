"""The detector (issue 16, docs/algorithms.md#federated-object-detection-fedvision): torchvision's FCOS over this project's backbone with an FPN,
or over one of torchvision's ResNets; its upload layout and the SSL encoder it may start from.

Why FCOS: it is anchor-free and one-stage. The synthetic sites differ in object scale the way
cameras do, and FCOS assigns objects to pyramid levels by size without per-level anchor shapes to
tune for each site; one stage (no RPN, no RoI heads) is also the cheapest of torchvision's three
on 2 CPU cores. Its losses (focal classification, GIoU regression, centre-ness) are torchvision's.

`detection.backbone=project` (default): the CIFAR ResNet of `model.arch`/`model.width` that the
SSL task trains (tasks/common/models.py), so that an SSL checkpoint's encoder loads into it key
for key; its layer2-4 outputs (strides 2, 4 and 8: the stem keeps full resolution) feed an FPN
of `detection.fpn_channels`. Images are not normalised, as in SSL training (docs/algorithms.md#byol).
`detection.backbone=resnet18|resnet34|resnet50`: torchvision's ResNet with its FPN, randomly
initialised (no internet here), ImageNet normalisation, strides 8-32 (for larger images).
"""

from __future__ import annotations

from collections import OrderedDict
import logging

import numpy as np
import torch
from torch import nn
from torchvision.models.detection import FCOS
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models import resnet
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.fcos import FCOSHead
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork

from protocol.checks import ConfigError
from protocol.layout import Layout
from tasks.common.checkpoint import CheckpointError, checkpoint_models, load_checkpoint
from tasks.common.arrays import batchnorm_keys, get_arrays, module_layout
from tasks.common.models import CifarResNet, build_backbone
from tasks.detection.settings import DetectionSettings, Detector

TORCHVISION_BACKBONES = ("resnet18", "resnet34", "resnet50")
BACKBONES = ("project", *TORCHVISION_BACKBONES)
IMAGENET = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])


class ProjectBackboneFPN(nn.Module):
    """This project's CifarResNet as a detection backbone: layer2-4 feature maps through an FPN.

    The ResNet sits under `body` with its own parameter names, so an SSL encoder's
    `<part>.backbone.*` weights load as `backbone.body.*` (`load_ssl_encoder`)."""

    def __init__(self, body: CifarResNet, out_channels: int):
        super().__init__()
        self.body = body
        widths = [body.layer2[0].conv1.out_channels, body.layer3[0].conv1.out_channels, body.out_dim]
        self.fpn = FeaturePyramidNetwork(widths, out_channels)
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> OrderedDict:
        _, c2, c3, c4 = self.body.feature_maps(x)
        return self.fpn(OrderedDict([("0", c2), ("1", c3), ("2", c4)]))


def build_detector(d: Detector) -> FCOS:
    """The same initial detector on every node (seeded by the run's `seed`); labels 1..C, so FCOS
    gets C + 1 outputs (0 = background)."""
    torch.manual_seed(d.seed)
    name, channels = d.backbone, d.fpn_channels
    if name == "project":
        backbone = ProjectBackboneFPN(build_backbone(d.arch, d.width), channels)
        strides, (mean, std) = (2, 4, 8), ([0.0] * 3, [1.0] * 3)
    elif name in TORCHVISION_BACKBONES:
        expansion = 4 if name == "resnet50" else 1
        body = getattr(resnet, name)(weights=None)
        backbone = BackboneWithFPN(body, {"layer2": "0", "layer3": "1", "layer4": "2"},
                                   [c * expansion for c in (128, 256, 512)], channels)  # + a max-pooled level
        strides, (mean, std) = (8, 16, 32, 64), IMAGENET
    else:
        raise ValueError(f"detection.backbone must be one of {', '.join(BACKBONES)}, got {name!r}")
    # one anchor point per location, of the level's stride: FCOS sizes its levels' object ranges by it
    anchors = AnchorGenerator(tuple((s,) for s in strides), ((1.0,),) * len(strides))
    head = FCOSHead(channels, 1, d.num_classes + 1, num_convs=d.head_convs)
    return FCOS(backbone, d.num_classes + 1, min_size=d.min_size, max_size=d.max_size,
                image_mean=mean, image_std=std, anchor_generator=anchors, head=head,
                score_thresh=d.score_thresh, nms_thresh=d.nms_thresh, detections_per_img=d.detections_per_image)


def upload_keys(net: FCOS, options: dict) -> list[str]:
    """Every entry (FedVision: the whole detector), or the backbone alone (`shared: backbone`,
    partial averaging); without the BatchNorm entries under `bn: local` (FedBN: each site keeps
    its own statistics and affine parameters)."""
    keys = list(net.state_dict())
    if options.get("shared", "all") != "all":
        keys = [k for k in keys if k.startswith("backbone.")]
    local = batchnorm_keys(net) if options.get("bn", "global") == "local" else set()
    return [k for k in keys if k not in local]


def sites_keep_parts(options: dict) -> bool:
    """Whether parts of the detector never reach the server (then only the sites can score it)."""
    return options.get("shared", "all") != "all" or options.get("bn", "global") == "local"


def evaluated_by(s: DetectionSettings, options: dict) -> str:
    """detection.evaluate; auto = the server when it holds the whole detector and can read every
    site's test split (the synthetic set, or `dataset.roots`), else the sites themselves (partial
    averaging, local BatchNorm; a deployment whose SuperNodes serve their own folders)."""
    if s.evaluate != "auto":
        return s.evaluate
    return "server" if s.sites.readable() and not sites_keep_parts(options) else "clients"


def detection_layout(s: DetectionSettings, options: dict) -> tuple[Layout, list[np.ndarray]]:
    """The upload layout and the initial global detector (with `detection.backbone_init`'s encoder:
    only the server reads that checkpoint; clients receive the weights in round 1)."""
    net = build_detector(s.detector)
    if s.detector.backbone_init != "random":
        init_from_ssl_checkpoint(net, s.detector.backbone_init)
    keys = upload_keys(net, options)
    return (module_layout(net, keys, options=dict(options), evaluated_by=evaluated_by(s, options)),
            get_arrays(net, keys))


def encoder_weights(keys: list[str], arrays: list[np.ndarray], source: str) -> dict[str, torch.Tensor]:
    """The evaluated encoder's backbone in an SSL checkpoint (`online.backbone.*`, else the single
    `<part>.backbone.*` it holds), as `backbone.body.*` entries of the detector."""
    prefixes = sorted({k[: k.index("backbone.")] for k in keys if "backbone." in k})
    prefix = "online." if "online." in prefixes else (prefixes[0] if len(prefixes) == 1 else None)
    if prefix is None:
        raise ValueError(f"{source}: no encoder backbone to load (backbone entries under {prefixes or 'no prefix'})")
    start = len(prefix + "backbone.")
    return {"backbone.body." + k[start:]: torch.from_numpy(np.array(a))
            for k, a in zip(keys, arrays) if k.startswith(prefix + "backbone.")}


def load_ssl_encoder(net: FCOS, weights: dict[str, torch.Tensor], source: str) -> int:
    """Copy an SSL encoder's backbone into the detector's; refuses a missing entry or another shape
    (another model.arch/model.width) naming both. Returns how many tensors were loaded."""
    own = net.state_dict()
    body = [k for k in own if k.startswith("backbone.body.")]
    missing = [k for k in body if k not in weights]
    if missing or not body:
        raise ValueError(f"{source}: its encoder lacks {len(missing)} of the detector's {len(body)} backbone entries "
                         f"(first: {missing[:1]}); detection.backbone=project needs the SSL run's model.arch")
    for k in body:
        if tuple(weights[k].shape) != tuple(own[k].shape):
            raise ValueError(f"{source}: {k} has shape {tuple(weights[k].shape)} in the checkpoint but "
                             f"{tuple(own[k].shape)} in this detector; run with the SSL run's model.arch and model.width")
    net.load_state_dict({k: weights[k] for k in body}, strict=False)
    return len(body)


def init_from_ssl_checkpoint(net: FCOS, path: str) -> str:
    """Load the encoder of an SSL run's checkpoint (its global model; a standalone run's lowest
    client's) into the detector's backbone; CheckpointError naming the file when it cannot."""
    payload = load_checkpoint(path)
    trained = payload["config"] if isinstance(payload.get("config"), dict) else {}
    if (trained.get("dataset") or {}).get("kind") == "detection":
        raise CheckpointError(
            f"detection.backbone_init={path} is a checkpoint of task detection (strategy="
            f"{(trained.get('strategy') or {}).get('name', '?')}, dataset={trained['dataset'].get('name', '?')}): a whole "
            f"detector, not an SSL encoder; give an SSL run's checkpoint_final.pt (e.g. of strategy=fedu "
            f"dataset=cifar100), or detection.backbone_init=random")
    models = checkpoint_models(payload)
    name = "global" if "global" in models else min(models, key=lambda n: (len(n), n))
    try:
        n = load_ssl_encoder(net, encoder_weights(list(payload["keys"]), models[name], path), path)
    except ValueError as err:
        raise CheckpointError(f"detection.backbone_init: {err}") from None
    logging.getLogger(__name__).info("detection: backbone from %s (model %s, %d tensors)", path, name, n)
    return name


def check_detection_config(s: DetectionSettings) -> None:
    """What the task refuses of how it is evaluated (ConfigError naming the key); the keys' own
    contradictions were refused when the settings were built (tasks/detection/settings.py)."""
    options = s.layout_options()
    evaluation = evaluated_by(s, options)
    if sites_keep_parts(options) and evaluation == "server":
        raise ConfigError("detection.evaluate=server cannot score a detector whose heads (strategy=fedpav) or "
                          "BatchNorm (strategy.bn=local) stay on the sites; use detection.evaluate=auto")
    if evaluation == "clients" and s.sites.pooled:
        raise ConfigError("strategy=centralised holds every site's images on one client; use detection.evaluate=auto")
