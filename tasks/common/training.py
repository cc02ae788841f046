"""What every task's local training shares: device, threads, the round's learning rate and
random stream, one checked optimizer step."""

from __future__ import annotations

import math

import numpy as np
import torch


class NonFiniteLossError(FloatingPointError):
    """Training diverged; the message names the client, the round and the step."""


def resolve_device(device: str) -> torch.device:
    """`auto` -> CUDA when present, else CPU; anything else is passed to torch."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def use_threads(threads: int) -> None:
    """CPU threads for this client's torch work (several clients may share the machine's cores)."""
    torch.set_num_threads(max(1, int(threads)))


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
