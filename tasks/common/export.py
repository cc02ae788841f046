"""Exporting what a run learned: its evaluated network as safetensors and ONNX (checked against PyTorch).

A task says which part of its model is the one its evaluator uses, in `learned(settings, layout, arrays)`
(tasks/<task>/export.py), as a `Learned`: the module whose weights are written (under our own
class's key names, so `load_state_dict` on the model the card says how to build takes them), the
forward that ONNX and mode=embed run, its input, its BatchNorm statistics and real images of the
run's data to check the files on. This module writes the files:

- `<name>.safetensors` (the `safetensors` library: tensors only, no code);
- `<name>.onnx` (torch.onnx at the installed exporter's default opset), then run with ONNX Runtime
  on the check images and compared with the PyTorch forward; `ExportError` when they differ by
  more than `RTOL * max(1, max |PyTorch output|)`;
- for this project's CIFAR ResNet-18/34 at width 1.0, `<name>_torchvision.safetensors`: the same
  weights under torchvision's key names (our `shortcut` is its `downsample`; nothing else differs),
  for `torchvision.models.resnet18()` whose stem is the CIFAR one (`cifar_stem`), checked the same way.

safetensors, onnx, onnxruntime and onnxscript come with the `export` extra (pyproject.toml).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from tasks.common.augment import to_float
from tasks.common.data import take_rows
from tasks.common.federated_data import dataset_of
from tasks.common.sections import Images
from tasks.common.models import CifarResNet

FEATURES, DETECTIONS = "features", "detections"  # what a Learned's forward gives
RTOL = 1e-4  # files against PyTorch: max |a - b| <= RTOL * max(1, max |b|), per output
CHECK_IMAGES = 8  # real images the ONNX and torchvision files are checked on
TORCHVISION_RESNETS = {(2, 2, 2, 2): "resnet18", (3, 4, 6, 3): "resnet34"}


class ExportError(RuntimeError):
    """An exported file does not reproduce the PyTorch network, or cannot be written."""


@dataclass
class Learned:
    """The network a task evaluates, ready to leave the federation.

    name: file stem (encoder, detector). what: one line, which part of the model this is.
    weights: the module whose state_dict is written (keys as its own class names them).
    runner: the forward ONNX and mode=embed run: images (float N,3,H,W in [0, 1]) -> features, or
        for a detector one image (float 3,H,W in [0, 1]) -> boxes, scores, labels.
    output: FEATURES or DETECTIONS. input_size: (H, W) the runner reads.
    mean, std: the normalisation the network applies to [0, 1] images (inside it; 0 and 1: none).
    batchnorm: "aggregated" | "reestimated" | "none"; batchnorm_detail says which images or rule.
    check_images: uint8 N,H,W,3 real images of the run's data at input_size; check_source names them.
    rebuild: Python lines that build the module `weights` loads into (`card` is the model card).
    """

    name: str
    what: str
    method: str
    weights: nn.Module
    runner: nn.Module
    output: str
    input_size: tuple[int, int]
    batchnorm: str
    batchnorm_detail: str
    check_images: np.ndarray
    check_source: str
    rebuild: str
    mean: tuple[float, ...] = (0.0, 0.0, 0.0)
    std: tuple[float, ...] = (1.0, 1.0, 1.0)
    feature_dim: int | None = None
    classes: tuple[str, ...] = field(default_factory=tuple)


class Call(nn.Module):
    """`module.<method>(x)` as a module's forward (e.g. FedPav's `embed`), for ONNX and mode=embed."""

    def __init__(self, module: nn.Module, method: str):
        super().__init__()
        self.module, self.method = module, method

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return getattr(self.module, self.method)(images)


class OneImageDetector(nn.Module):
    """A torchvision detector on one image tensor: (boxes x1,y1,x2,y2 in its pixels, scores, labels)."""

    def __init__(self, detector: nn.Module):
        super().__init__()
        self.detector = detector

    def forward(self, image: torch.Tensor):
        out = self.detector([image])[0]
        return out["boxes"], out["scores"], out["labels"]


def check_images(d: Images) -> tuple[np.ndarray, str]:
    """CHECK_IMAGES test images of an image-classification run's data set, spread over it (its test
    sets are grouped by class), and where they come from."""
    x = dataset_of(d).x_test
    rows = np.linspace(0, len(x) - 1, min(CHECK_IMAGES, len(x))).astype(np.int64)
    return take_rows(x, rows), f"{d.dataset} test images {rows.tolist()}"


def batch_of(images: np.ndarray) -> torch.Tensor:
    """uint8 N,H,W,3 -> float N,3,H,W in [0, 1] on the CPU (the evaluator's `to_float`)."""
    return to_float(torch.from_numpy(np.ascontiguousarray(images)), torch.device("cpu"))


def tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    """The state_dict as contiguous CPU tensors with their own storage (what safetensors writes)."""
    return {k: v.detach().cpu().contiguous().clone() for k, v in module.state_dict().items()}


def write_safetensors(state: dict[str, torch.Tensor], path, card_name: str) -> None:
    """The tensors, with the model card's file name in the metadata; read back and compared."""
    import os

    from safetensors.torch import load_file, save_file

    save_file(state, str(path), metadata={"format": "pt", "card": card_name})
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)  # the library writes 0600; a model file is as readable as the others
    back = load_file(str(path))
    if sorted(back) != sorted(state) or any(not torch.equal(back[k], v) for k, v in state.items()):
        raise ExportError(f"{path}: the tensors read back differ from those written")


# ------------------------------------------------------------------------------------ torchvision
def torchvision_name(net: nn.Module) -> str | None:
    """torchvision's constructor for `net` when it is our CIFAR ResNet-18/34 at width 1.0, else None."""
    if not isinstance(net, CifarResNet) or net.conv1.in_channels != 3:
        return None
    widths = [layer[0].conv1.out_channels for layer in (net.layer1, net.layer2, net.layer3, net.layer4)]
    blocks = tuple(len(layer) for layer in (net.layer1, net.layer2, net.layer3, net.layer4))
    return TORCHVISION_RESNETS.get(blocks) if widths == [64, 128, 256, 512] else None


def torchvision_state(net: CifarResNet) -> dict[str, torch.Tensor]:
    """`net`'s weights under torchvision ResNet key names. The two ResNets differ only in the name of
    the projection shortcut (ours `layerI.J.shortcut.{0,1}`, torchvision's `layerI.J.downsample.{0,1}`,
    present on the same blocks) and in the stem and head, which `cifar_stem` makes ours."""
    return {re.sub(r"^(layer\d\.\d+)\.shortcut\.", r"\1.downsample.", k): v for k, v in tensors(net).items()}


def cifar_stem(resnet: nn.Module) -> nn.Module:
    """A torchvision ResNet made the CIFAR one: 3x3 stride-1 stem without bias, no max-pool, no fc."""
    resnet.conv1 = nn.Conv2d(3, resnet.conv1.out_channels, 3, 1, 1, bias=False)
    resnet.maxpool = nn.Identity()
    resnet.fc = nn.Identity()
    return resnet


def torchvision_resnet(name: str) -> nn.Module:
    import torchvision

    return cifar_stem(getattr(torchvision.models, name)(weights=None))


# ------------------------------------------------------------------------------------ checks
def _max_diff(got, ref, what: str) -> tuple[float, float]:
    """(max |got - ref|, the tolerance) of one output; ExportError on another shape."""
    got, ref = np.asarray(got), np.asarray(ref)
    if got.shape != ref.shape:
        raise ExportError(f"{what}: output of shape {got.shape}, PyTorch gives {ref.shape}")
    if got.dtype.kind in "iub" or ref.dtype.kind in "iub":
        return (0.0 if np.array_equal(got, ref) else float("inf")), 0.0
    scale = float(np.abs(ref).max()) if ref.size else 0.0
    return (float(np.abs(got.astype(np.float64) - ref).max()) if ref.size else 0.0), RTOL * max(1.0, scale)


def _compare(pairs: list[tuple], what: str) -> dict:
    """Every (got, ref, label) pair within its tolerance, else ExportError with the worst one."""
    worst = {"max_abs_diff": 0.0, "tolerance": float("inf")}
    for got, ref, label in pairs:
        diff, tol = _max_diff(got, ref, f"{what} ({label})")
        if diff > tol:
            raise ExportError(f"{what}: {label} differs from PyTorch by {diff:.3g} (tolerance {tol:.3g}); "
                              f"the exported file does not reproduce the network")
        if diff > worst["max_abs_diff"] or worst["tolerance"] == float("inf"):
            worst = {"max_abs_diff": diff, "tolerance": tol}
    return worst


def _compare_detections(got: list, ref: list, label: str, what: str) -> dict:
    """Detections (boxes, scores, labels) of one image, as a set: every PyTorch detection has an ONNX
    one of its class with its score and box within tolerance, whatever their order (detections of
    equal scores up to rounding may swap places); only detections whose score ties, within the
    tolerance, with the lowest score kept may be in one list and not the other (the cut-off)."""
    (gb, gs, gl), (rb, rs, rl) = [[np.asarray(a) for a in out] for out in (got, ref)]
    tol_s, tol_b = RTOL, RTOL * max(1.0, float(np.abs(rb).max()) if rb.size else 0.0)
    cut = min([float(v.min()) for v in (gs, rs) if v.size] or [0.0])
    used, worst = np.zeros(len(gs), bool), 0.0
    for i in range(len(rs)):
        box = np.abs(gb - rb[i]).max(axis=1) if len(gb) else np.zeros(0)
        ok = np.flatnonzero(~used & (gl == rl[i]) & (np.abs(gs - rs[i]) <= tol_s) & (box <= tol_b))
        if len(ok):
            j = ok[np.argmin(box[ok])]
            used[j] = True
            worst = max(worst, float(box[j]), float(abs(gs[j] - rs[i])))
        elif rs[i] - cut > tol_s:
            raise ExportError(f"{what}: {label}: PyTorch's detection {i} (class {rl[i]}, score {rs[i]:.4f}, box "
                              f"{rb[i].round(2).tolist()}) has no counterpart within tolerance ({tol_b:.3g} px, "
                              f"{tol_s:g} in score); the exported file does not reproduce the network")
    extra = [j for j in np.flatnonzero(~used) if gs[j] - cut > tol_s]
    if extra:
        raise ExportError(f"{what}: {label}: {len(extra)} detection(s) PyTorch does not give (first: class "
                          f"{gl[extra[0]]}, score {gs[extra[0]]:.4f}); the exported file does not reproduce the network")
    return {"max_abs_diff": worst, "tolerance": tol_b, "matched": int(used.sum()),
            "at_cutoff": int(len(rs) + len(gs) - 2 * used.sum())}


@torch.no_grad()
def reference(learned: Learned) -> list:
    """The PyTorch outputs (fp32, CPU, eval mode) on the check images: one array per output."""
    learned.runner.cpu().eval()
    x = batch_of(learned.check_images)
    if learned.output == FEATURES:
        return [learned.runner(x).float().numpy()]
    return [[t.numpy() for t in learned.runner(image)] for image in x]


def check_torchvision(learned: Learned, state: dict[str, torch.Tensor], name: str) -> dict:
    """torchvision's ResNet (CIFAR stem) with `state` loaded strictly gives the runner's features."""
    net = torchvision_resnet(name)
    net.load_state_dict(state, strict=True)
    with torch.no_grad():
        got = net.eval()(batch_of(learned.check_images)).numpy()
    return _compare([(got, reference(learned)[0], "features")], f"torchvision.models.{name} (CIFAR stem)")


def write_onnx(learned: Learned, path) -> dict:
    """The runner as ONNX at the exporter's default opset, then checked with ONNX Runtime on the
    check images. Features: the dynamo exporter, batch size free. A detector: torchvision's
    detectors do not pass the dynamo exporter (their NMS has data-dependent shapes), so the
    TorchScript exporter, on one image of exactly `input_size` (its transform then resizes nothing;
    at another size the traced resize would be wrong)."""
    import logging
    import warnings

    import onnx
    import onnxruntime

    for name in ("onnx_ir", "onnxscript"):  # their INFO lines (passes applied) say nothing to a user
        logging.getLogger(name).setLevel(logging.WARNING)
    runner = learned.runner.cpu().eval()
    x = batch_of(learned.check_images)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporters' tracer and deprecation warnings
        if learned.output == FEATURES:
            batch = torch.export.Dim("batch")
            torch.onnx.export(runner, (x[:2],), str(path), input_names=["images"], output_names=["features"],
                              dynamic_shapes=({0: batch},), dynamo=True, external_data=False, verbose=False)
            exporter, inputs, outputs = "torch.onnx (dynamo)", {"images": ["batch", 3, *learned.input_size]}, ["features"]
        else:
            torch.onnx.export(runner, (x[0],), str(path), input_names=["image"],
                              output_names=["boxes", "scores", "labels"], dynamo=False)
            exporter, inputs, outputs = "torch.onnx (TorchScript)", {"image": [3, *learned.input_size]}, \
                ["boxes", "scores", "labels"]
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    opset = max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    ref = reference(learned)
    if learned.output == FEATURES:
        pairs = [(session.run(None, {"images": x.numpy()})[0], ref[0], "features")]
        check = _compare(pairs, f"ONNX Runtime on {path}")
    else:
        per_image = [_compare_detections(session.run(None, {"image": image.numpy()}), ref[i], f"image {i}",
                                         f"ONNX Runtime on {path}") for i, image in enumerate(x)]
        check = {"max_abs_diff": max(c["max_abs_diff"] for c in per_image),
                 "tolerance": min(c["tolerance"] for c in per_image), "matched": sum(c["matched"] for c in per_image),
                 "at_cutoff": sum(c["at_cutoff"] for c in per_image),
                 "rule_detections": "as sets: each detection matched by class, score and box within tolerance in any "
                                    "order; only ties with the lowest score kept may be unmatched"}
    return {"opset": int(opset), "exporter": exporter, "inputs": inputs, "outputs": outputs,
            "check": {"images": len(x), "source": learned.check_source, "runtime": f"onnxruntime {onnxruntime.__version__} "
                      f"(CPUExecutionProvider)", "rule": f"max |ONNX - PyTorch| <= {RTOL:g} * max(1, max |PyTorch|)",
                      **check}}


def versions() -> dict:
    import importlib.metadata as md

    out = {}
    for name in ("torch", "torchvision", "safetensors", "onnx", "onnxruntime", "onnxscript"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    return out


def require_export_extra() -> None:
    """ExportError naming the missing packages when the `export` extra is not installed."""
    import importlib.util

    missing = [m for m in ("safetensors", "onnx", "onnxruntime", "onnxscript") if importlib.util.find_spec(m) is None]
    if missing:
        raise ExportError(f"mode=export needs {', '.join(missing)}: pip install -e '.[export]'")
