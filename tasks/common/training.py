"""What every task's local training shares: device, threads, the round's learning rate and
random stream, one checked optimizer step."""

from __future__ import annotations

import math

import numpy as np
import torch

from protocol.checks import ConfigError


class NonFiniteLossError(FloatingPointError):
    """Training diverged; the message names the client, the round and the step."""


def resolve_device(device: str) -> torch.device:
    """`auto` -> CUDA when present, else CPU; anything else is passed to torch. `cuda`/`cuda:N` on a
    machine without that GPU is refused (ConfigError, one line) before any work."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            why = "this PyTorch is built without CUDA" if torch.version.cuda is None else "no NVIDIA GPU or driver found"
            raise ConfigError(f"device={device}: CUDA is not available on this machine ({why}); use device=cpu, or "
                              f"device=auto (a GPU when there is one, else the CPU)")
        index, count = torch.device(device).index, torch.cuda.device_count()
        if index is not None and index >= count:
            raise ConfigError(f"device={device}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}; "
                              f"use one of them, device=cuda (the first) or device=auto")
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


def check_finite(losses: torch.Tensor, who: str, epoch: int, fix: str) -> None:
    """An epoch's step losses, checked at once (one device sync): the first non-finite one stops
    the run with the same message a per-step check gives."""
    bad = torch.nonzero(~torch.isfinite(losses)).flatten()
    if len(bad):
        step = int(bad[0])
        raise NonFiniteLossError(f"{who}: non-finite loss ({losses[step].item()}) at epoch {epoch + 1}, "
                                 f"step {step + 1}; {fix}")


def sgd_step(opt: torch.optim.Optimizer, loss: torch.Tensor, who: str, epoch: int, step: int, fix: str,
             scaler: torch.amp.GradScaler | None = None, check: bool = True) -> None:
    """One optimizer step, refusing a NaN/inf loss with who, where (0-based epoch/step) and what to change.

    With fp16 (`scaler`, tasks/common/precision.py) the loss is scaled before backward and the
    step is skipped when the scaled gradients overflow (the scale then halves), as torch.amp does.
    check=False leaves the finiteness check to the caller (`check_finite`, once per epoch on a GPU).
    """
    if check and not torch.isfinite(loss):
        raise NonFiniteLossError(f"{who}: non-finite loss ({loss.item()}) at epoch {epoch + 1}, step {step + 1}; {fix}")
    opt.zero_grad(set_to_none=True)
    if scaler is None:
        loss.backward()
        opt.step()
        return
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()
