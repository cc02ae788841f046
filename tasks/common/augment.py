"""Batched image augmentations on tensors (docs/algorithms.md#byol, FedU's reference recipe).

RandomResizedCrop(32, scale 0.08-1.0), horizontal flip p=0.5, ColorJitter(0.8, 0.8, 0.8, 0.2)
with p=0.8, grayscale p=0.2; no blur, no normalisation. The jitter strengths are a training
option (`ssl.jitter`): the reference code's (REFERENCE_JITTER) by default, the BYOL paper's CIFAR
strengths (0.4, 0.4, 0.2, 0.1, BYOL_JITTER) for the CPU learning preset. Same distributions as torchvision's
per-image transforms, computed for a whole batch at once on the training device (one
grid_sample instead of a Python loop per image). Deliberate deviation: torchvision draws a new
order of the four jitter operations per image; here the order is drawn once per batch.
All randomness comes from the `generator` passed in, so a seeded run is reproducible.

A method declares its views as a recipe, a tuple of `View`s (how many, which size and crop
scale); `make_views` applies it. FedU's recipe is two 32x32 views of scale 0.08-1 (TWO_VIEWS);
multi-crop methods add small views.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


def _on(g: torch.Generator | None) -> torch.device:
    """Where `g` draws: a CPU generator draws on the CPU (then the draws are copied to the images'
    device), a CUDA generator on its GPU (no host-device copy; see `augmentation_generator`)."""
    return g.device if g is not None else torch.device("cpu")


def augmentation_generator(g: torch.Generator, device: torch.device) -> torch.Generator:
    """The generator augmentations draw from on `device`: `g` itself on the CPU (the draws are those
    of every earlier version), on a GPU a generator there seeded from `g`, so no random number has
    to cross from host to device inside a step."""
    if device.type == "cpu":
        return g
    return torch.Generator(device).manual_seed(int(torch.randint(0, 2**62, (1,), generator=g)))


def _uniform(n: int, lo: float, hi: float, g: torch.Generator) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g, device=_on(g))


def crop_boxes(n: int, size: tuple[int, int], scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), g=None, tries: int = 10):
    """Per-image crop boxes (top, left, height, width) drawn exactly like RandomResizedCrop."""
    H, W = size
    area = H * W
    target = area * _uniform(n * tries, *scale, g).view(n, tries)
    log_r = _uniform(n * tries, math.log(ratio[0]), math.log(ratio[1]), g).view(n, tries)
    aspect = torch.exp(log_r)
    w = torch.round(torch.sqrt(target * aspect))
    h = torch.round(torch.sqrt(target / aspect))
    ok = (w > 0) & (w <= W) & (h > 0) & (h <= H)
    first = torch.argmax(ok.int(), dim=1)
    has = ok.any(dim=1)
    w = w[torch.arange(n, device=first.device), first]
    h = h[torch.arange(n, device=first.device), first]
    # fallback (no valid try): whole image, which lies inside `ratio` for square inputs
    w = torch.where(has, w, torch.full_like(w, W))
    h = torch.where(has, h, torch.full_like(h, H))
    top = torch.floor(torch.rand(n, generator=g, device=_on(g)) * (H - h + 1))
    left = torch.floor(torch.rand(n, generator=g, device=_on(g)) * (W - w + 1))
    return top, left, h, w


def resized_crop_flip(x: torch.Tensor, out_size: int, g: torch.Generator, flip_p: float = 0.5, scale=(0.08, 1.0)):
    """Crop a random box per image, resize it to out_size (bilinear) and flip with flip_p."""
    n, _, H, W = x.shape
    top, left, h, w = crop_boxes(n, (H, W), scale=scale, g=g)
    flip = torch.rand(n, generator=g, device=_on(g)) < flip_p
    sx = w / W * torch.where(flip, -1.0, 1.0)
    sy = h / H
    cx = (left + w / 2) / W * 2 - 1
    cy = (top + h / 2) / H * 2 - 1
    theta = torch.zeros(n, 2, 3, device=_on(g))
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = sx, cx, sy, cy
    grid = F.affine_grid(theta.to(x.device, x.dtype), [n, x.shape[1], out_size, out_size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _gray(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(1)
    return (0.299 * r + 0.587 * g + 0.114 * b).unsqueeze(1)


def _rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(1)
    maxc, _ = x.max(1)
    minc, _ = x.min(1)
    eq = maxc == minc
    cr = maxc - minc
    ones = torch.ones_like(maxc)
    s = cr / torch.where(eq, ones, maxc)
    crd = torch.where(eq, ones, cr)
    rc, gc, bc = (maxc - r) / crd, (maxc - g) / crd, (maxc - b) / crd
    hr = (maxc == r) * (bc - gc)
    hg = ((maxc == g) & (maxc != r)) * (2.0 + rc - bc)
    hb = ((maxc != g) & (maxc != r)) * (4.0 + gc - rc)
    h = torch.fmod((hr + hg + hb) / 6.0 + 1.0, 1.0)
    return torch.stack((h, s, maxc), 1)


def _hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    h, s, v = x.unbind(1)
    i = torch.floor(h * 6.0)
    f = h * 6.0 - i
    i = i.to(torch.int64) % 6
    p = (v * (1.0 - s)).clamp(0, 1)
    q = (v * (1.0 - s * f)).clamp(0, 1)
    t = (v * (1.0 - s * (1.0 - f))).clamp(0, 1)
    mask = i.unsqueeze(1) == torch.arange(6, device=x.device).view(1, -1, 1, 1)
    a1 = torch.stack((v, q, p, p, t, v), 1)
    a2 = torch.stack((t, v, v, q, p, p), 1)
    a3 = torch.stack((p, p, t, v, v, q), 1)
    a4 = torch.stack((a1, a2, a3), 1)  # n, 3, 6, H, W
    return torch.einsum("nijhw,njhw->nihw", a4, mask.to(x.dtype))


# ColorJitter(brightness, contrast, saturation, hue) strengths: FedU's reference code's, and the
# BYOL paper's (Grill et al. 2020, appendix B, Table 6), which solo-learn's CIFAR recipes also use
REFERENCE_JITTER = (0.8, 0.8, 0.8, 0.2)
BYOL_JITTER = (0.4, 0.4, 0.2, 0.1)


def color_jitter(x: torch.Tensor, g: torch.Generator, strength=REFERENCE_JITTER, p: float = 0.8):
    """ColorJitter(brightness, contrast, saturation, hue) applied to each image with probability p."""
    n = x.shape[0]
    bri, con, sat, hue = strength
    apply = (torch.rand(n, generator=g, device=_on(g)) < p).float()

    def factor(spread: float) -> torch.Tensor:
        f = _uniform(n, max(0.0, 1 - spread), 1 + spread, g)
        return (apply * f + (1 - apply)).to(x.device, x.dtype).view(n, 1, 1, 1)

    fb, fc, fs = factor(bri), factor(con), factor(sat)
    fh = (apply * _uniform(n, -hue, hue, g)).to(x.device, x.dtype).view(n, 1, 1)

    def brightness(x):
        return (x * fb).clamp(0, 1)

    def contrast(x):
        return (x * fc + _gray(x).mean(dim=(1, 2, 3), keepdim=True) * (1 - fc)).clamp(0, 1)

    def saturation(x):
        return (x * fs + _gray(x) * (1 - fs)).clamp(0, 1)

    def hue_shift(x):
        if hue <= 0:
            return x
        hsv = _rgb_to_hsv(x)
        return _hsv_to_rgb(torch.stack((torch.remainder(hsv[:, 0] + fh, 1.0), hsv[:, 1], hsv[:, 2]), 1))

    ops = (brightness, contrast, saturation, hue_shift)
    if _on(g).type == "cpu":
        for op in torch.randperm(4, generator=g).tolist():
            x = ops[op](x)
        return x
    # on a GPU the order stays on the device: each position computes the four operations and keeps
    # the drawn one (more arithmetic, no device-to-host sync)
    order = torch.randperm(4, generator=g, device=_on(g))
    for position in range(4):
        x = sum((order[position] == k).to(x.dtype) * op(x) for k, op in enumerate(ops))
    return x


def random_grayscale(x: torch.Tensor, g: torch.Generator, p: float = 0.2) -> torch.Tensor:
    use = (torch.rand(x.shape[0], generator=g, device=_on(g)) < p).to(x.device).view(-1, 1, 1, 1)
    return torch.where(use, _gray(x).expand_as(x), x)


def to_float(images_uint8_nhwc: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 NHWC batch -> float NCHW in [0, 1] on device (no normalisation, docs/algorithms.md#byol)."""
    return images_uint8_nhwc.to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255.0)


@dataclass(frozen=True)
class View:
    """One augmented view: output size and RandomResizedCrop's scale range (the recipe in docs/algorithms.md#byol)."""

    size: int = 32
    scale: tuple[float, float] = (0.08, 1.0)


TWO_VIEWS = (View(), View())


def augment_view(x: torch.Tensor, g: torch.Generator, view: View = View(), jitter=REFERENCE_JITTER) -> torch.Tensor:
    """One view of a float NCHW batch in [0, 1]: crop + flip, colour jitter of strengths `jitter`
    (brightness, contrast, saturation, hue), grayscale (docs/algorithms.md#byol)."""
    x = resized_crop_flip(x, view.size, g, scale=view.scale)
    x = color_jitter(x, g, tuple(jitter))
    return random_grayscale(x, g)


def make_views(x: torch.Tensor, recipe: tuple[View, ...], g: torch.Generator, jitter=REFERENCE_JITTER) -> list[torch.Tensor]:
    """The views of a recipe, drawn in order from one generator."""
    return [augment_view(x, g, view, jitter) for view in recipe]


def byol_view(x: torch.Tensor, g: torch.Generator, out_size: int = 32) -> torch.Tensor:
    """One view of FedU's recipe (docs/algorithms.md#byol)."""
    return augment_view(x, g, View(out_size))
