"""One client's round as every task's client side sees it (no Flower here).

The Flower client (clients/task_client.py) unpacks the message into a `LocalRound`, calls the
task's `local_round(r) -> LocalResult`, and packs the result; everything torch happens in between.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from protocol.instructions import Instructions
from tasks.common.arrays import layout_fingerprint
from tasks.common.precision import Compute, compute_for
from tasks.common.training import client_generator, resolve_device


class LayoutMismatch(RuntimeError):
    """Server and client disagree on what is uploaded (different config or code version)."""


@dataclass
class LocalRound:
    """What a client has at the start of its round.

    received: the server's weights in the upload layout (empty when it sent none).
    kept: what this client kept from its earlier rounds (None: its first participation).
    info: its notes from earlier rounds (rounds_trained, last_round, FedEMA's lambda, ...).
    settings: the task's own typed section (tasks/common/task_row.Task.settings), what its round reads.
    cfg: the run's config, for what every task's client reads alike (device, precision, seed).
    """

    cfg: dict
    partition_id: int
    instructions: Instructions
    received: list[np.ndarray]
    kept: dict[str, torch.Tensor] | None
    info: dict = field(default_factory=dict)
    settings: Any = None

    @property
    def server_round(self) -> int:
        return int(self.instructions.server_round)

    @property
    def first(self) -> bool:
        return self.kept is None

    @property
    def who(self) -> str:
        return f"client {self.partition_id}, round {self.server_round}"

    def device(self) -> torch.device:
        return resolve_device(str(self.cfg["device"]))

    def compute(self) -> Compute:
        """Device, precision and memory format of this client's training (`auto` on its own hardware)."""
        return compute_for(self.cfg, self.device())

    def generator(self) -> torch.Generator:
        """The client's random stream for this round, seeded by (seed, round, partition id)."""
        return client_generator(int(self.cfg["seed"]), self.server_round, self.partition_id)

    def check_layout(self, module: nn.Module, keys: list[str]) -> None:
        mine = layout_fingerprint(module, keys)
        if self.instructions.layout and self.instructions.layout != mine:
            raise LayoutMismatch(f"{self.who}: the server's upload layout (fingerprint {self.instructions.layout}) "
                                 f"differs from this client's ({mine}): it runs another config or code version; "
                                 f"start it with the run's settings")

    def restore(self, module: nn.Module) -> None:
        """Load what this client kept (strict=False: only its kept keys)."""
        if self.kept:
            module.load_state_dict(self.kept, strict=False)


@dataclass
class LocalResult:
    """What a client's round produced: its upload, what it keeps until its next round, new notes."""

    upload: list[np.ndarray]
    num_examples: int
    metrics: dict
    kept: dict[str, torch.Tensor]
    info: dict = field(default_factory=dict)


def kept_state(module: nn.Module, keys: list[str]) -> dict[str, torch.Tensor]:
    sd = module.state_dict()
    return {k: sd[k].detach().cpu() for k in keys}
