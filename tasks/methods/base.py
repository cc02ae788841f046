"""What every local SSL method provides, and which of its weights travel (DESIGN.md conv. 3-4).

A method is an nn.Module whose state_dict keys start with the name of one of its *parts*
(e.g. BYOL: `online.`, `predictor.`, `target.`). Which parts are uploaded to the server and
which stay on the client is declared in exactly one place per method, `SSLMethod.sync_plan`,
and both the client and the server derive their key lists from it, so the order of the
arrays that cross the wire is never guessed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class SyncPlan:
    """Parts of a method's model, by role in federated training.

    uploaded: parts sent to the server and aggregated.
    local: parts that never leave the client (BYOL's target, MoCo's key encoder and queue).
    optional: uploaded parts a client may decline to replace with the global version
        (FedU's predictor under DAPU), so the client keeps its own copy as local state.
    eval_encoder: the part whose backbone is evaluated as "the global encoder".
    """

    uploaded: tuple[str, ...]
    local: tuple[str, ...]
    optional: tuple[str, ...] = ()
    eval_encoder: str = "online"


def momentum_update(target: nn.Module, online: nn.Module, tau: float) -> None:
    """xi <- tau * xi + (1 - tau) * theta, parameters only (SPEC §1.1)."""
    with torch.no_grad():
        for t, o in zip(target.parameters(), online.parameters()):
            t.mul_(tau).add_(o.detach(), alpha=1.0 - tau)


def part_of(key: str) -> str:
    return key.split(".", 1)[0]


def batchnorm_keys(model: nn.Module) -> set[str]:
    """state_dict keys (weights, biases, running stats) that belong to BatchNorm layers."""
    keys = set()
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            for k in module.state_dict():
                keys.add(f"{name}.{k}")
    return keys


class SSLMethod(nn.Module):
    """Base class: subclasses build their parts as attributes and implement `loss`."""

    name = "base"

    def sync_plan(self, sync: str = "online") -> SyncPlan:  # pragma: no cover - abstract
        raise NotImplementedError

    def loss(self, v1: torch.Tensor, v2: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def after_step(self, progress: float) -> None:
        """Called after every optimizer step; progress in [0, 1] over the client's whole run."""

    def init_local_parts(self, received: set[str]) -> None:
        """First participation: initialise local parts from what the server sent."""

    def trainable_parameters(self):
        return [p for p in self.parameters() if p.requires_grad]
