"""Local self-supervised training of one client for one round (docs/algorithms.md#byol)."""

from __future__ import annotations

import time

import numpy as np
import torch

from tasks.common.augment import REFERENCE_JITTER, augmentation_generator, make_views, to_float
from tasks.common.precision import Compute
from tasks.common.training import check_finite, sgd_step
from tasks.ssl.methods.base import SSLMethod


def train_one_round(
    method: SSLMethod,
    images: np.ndarray,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    momentum: float,
    weight_decay: float,
    compute: Compute,
    generator: torch.Generator,
    progress_start: float,
    progress_span: float,
    who: str,
    warmup_until: float = 0.0,
    jitter: tuple[float, ...] = REFERENCE_JITTER,
    predictor_lr_mult: float = 1.0,
) -> dict:
    """E epochs of SGD on uint8 NHWC `images`, each batch augmented by the method's own recipe.

    The optimizer is rebuilt each round (docs/algorithms.md#byol); batches drop the last incomplete one.
    progress_start/progress_span place this round in the client's whole run (for schedules
    such as BYOL's cosine tau). Forward passes run in `compute`'s precision and memory format,
    the loss and the updates in fp32. Raises NonFiniteLossError naming `who` on a NaN/inf loss.
    warmup_until: the share of the whole run over which the learning rate rises linearly from 0
    to `lr` (step by step; ssl.warmup_rounds / num_rounds), 0 for none.
    jitter: the colour-jitter strengths of every view (ssl.jitter); predictor_lr_mult: the
    predictor's learning rate as a multiple of `lr` (ssl.predictor_lr_mult, warm-up included).
    """
    n = len(images)
    steps_per_epoch = n // batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"{who}: {n} examples is fewer than batch_size={batch_size}; lower batch_size")
    compute.prepare(method).train()
    groups = method.parameter_groups(predictor_lr_mult)
    for group in groups:
        group["lr"] = lr * group["lr_mult"]
    opt = torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)
    scaler = compute.scaler()
    device, on_cpu = compute.device, compute.device.type == "cpu"
    data = torch.from_numpy(np.ascontiguousarray(images)).to(device)  # the round's images stay on the device
    aug = augmentation_generator(generator, device)
    fix = f"lower the learning rate (ssl.lr={lr:g} this round) or check the data"
    total_steps = epochs * steps_per_epoch
    losses, t0 = [], time.perf_counter()
    for epoch in range(epochs):
        method.start_epoch(epoch, data, generator)
        order = torch.randperm(n, generator=generator).to(device)
        for step in range(steps_per_epoch):
            done = epoch * steps_per_epoch + step + 1
            at = progress_start + progress_span * done / total_steps  # this step's place in the run
            if warmup_until > 0:
                for group in opt.param_groups:
                    group["lr"] = lr * group["lr_mult"] * min(1.0, at / warmup_until)
            index = order[step * batch_size : (step + 1) * batch_size]
            x = to_float(data[index], device)
            with compute.step():
                views = [compute.images(v) for v in make_views(x, method.views, aug, jitter)]
                loss = method.loss(views, aug, index) if method.needs_index else method.loss(views, aug)
            # on a GPU the finiteness check waits for the epoch's end (no sync per step)
            sgd_step(opt, loss, who, epoch, step, fix, scaler, check=on_cpu)
            method.after_step(at)
            losses.append(loss.detach())
        if not on_cpu:
            check_finite(torch.stack(losses[-steps_per_epoch:]), who, epoch, fix)
    return {
        "loss": float(torch.stack(losses).mean()),
        "steps": total_steps,
        "train_seconds": time.perf_counter() - t0,
        "images_per_second": total_steps * batch_size / max(time.perf_counter() - t0, 1e-9),
    }


def recipe_options(ssl_cfg: dict) -> dict:
    """The recipe keys of the ssl section as `train_one_round` takes them (ssl.jitter,
    ssl.predictor_lr_mult; absent keys give the reference code's recipe)."""
    return {"jitter": tuple(float(v) for v in ssl_cfg.get("jitter", REFERENCE_JITTER)),
            "predictor_lr_mult": float(ssl_cfg.get("predictor_lr_mult", 1.0))}
