"""Local self-supervised training of one client for one round (SPEC §1.1)."""

from __future__ import annotations

import math
import time

import numpy as np
import torch

from tasks.augment import byol_view, to_float
from tasks.methods.base import SSLMethod


class NonFiniteLossError(FloatingPointError):
    """Training diverged; the message names the client, the round and the step."""


def resolve_device(device: str) -> torch.device:
    """`auto` -> CUDA when present, else CPU; anything else is passed to torch."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def round_lr(base_lr: float, server_round: int, num_rounds: int, schedule: str = "cosine") -> float:
    """eta_r = 1/2 eta_0 (1 + cos(pi r / R)) with r = server_round - 1, constant inside a round."""
    if schedule == "constant":
        return base_lr
    r = server_round - 1
    return 0.5 * base_lr * (1 + math.cos(math.pi * r / num_rounds))


def client_generator(seed: int, server_round: int, partition_id: int) -> torch.Generator:
    """One generator per (seed, round, client): the same draws whatever ran before."""
    mixed = np.random.SeedSequence([seed, server_round, partition_id]).generate_state(1)[0]
    return torch.Generator().manual_seed(int(mixed))


def sgd_step(opt: torch.optim.Optimizer, loss: torch.Tensor, who: str, epoch: int, step: int, fix: str) -> None:
    """One optimizer step, refusing a NaN/inf loss with who, where (0-based epoch/step) and what to change."""
    if not torch.isfinite(loss):
        raise NonFiniteLossError(f"{who}: non-finite loss ({loss.item()}) at epoch {epoch + 1}, step {step + 1}; {fix}")
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def train_one_round(
    method: SSLMethod,
    images: np.ndarray,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    momentum: float,
    weight_decay: float,
    device: torch.device,
    generator: torch.Generator,
    progress_start: float,
    progress_span: float,
    who: str,
) -> dict:
    """E epochs of SGD on uint8 NHWC `images` with two augmented views per image.

    The optimizer is rebuilt each round (SPEC §1.1); batches drop the last incomplete one.
    progress_start/progress_span place this round in the client's whole run (for schedules
    such as BYOL's cosine tau). Raises NonFiniteLossError naming `who` on a NaN/inf loss.
    """
    n = len(images)
    steps_per_epoch = n // batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"{who}: {n} examples is fewer than batch_size={batch_size}; lower batch_size")
    method.to(device).train()
    opt = torch.optim.SGD(method.trainable_parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    data = torch.from_numpy(np.ascontiguousarray(images))
    total_steps = epochs * steps_per_epoch
    losses, t0 = [], time.perf_counter()
    for epoch in range(epochs):
        order = torch.randperm(n, generator=generator)
        for step in range(steps_per_epoch):
            idx = order[step * batch_size : (step + 1) * batch_size]
            x = to_float(data[idx], device)
            v1, v2 = byol_view(x, generator), byol_view(x, generator)
            loss = method.loss(v1, v2)
            sgd_step(opt, loss, who, epoch, step,
                     f"lower the learning rate (ssl.lr={lr:g} this round) or check the data")
            done = epoch * steps_per_epoch + step + 1
            method.after_step(progress_start + progress_span * done / total_steps)
            losses.append(loss.detach())
    return {
        "loss": float(torch.stack(losses).mean()),
        "steps": total_steps,
        "train_seconds": time.perf_counter() - t0,
        "images_per_second": total_steps * batch_size / max(time.perf_counter() - t0, 1e-9),
    }
