"""What every client of this project shares (DESIGN.md conv. 5): identity, local state kept in
`context.state` (and on disk for resume), and the fault injection used to test what a run survives.
Subclasses implement `fit` for their task (SSLClient: self-supervised; ReIDClient: FedPav)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from flwr.app import ArrayRecord, ConfigRecord, RecordDict
from flwr.client import NumPyClient

from clients import state_store
from tasks.train import resolve_device

STATE_WEIGHTS = "fedssl.local_weights"
STATE_INFO = "fedssl.client_info"


class InjectedFault(RuntimeError):
    """Raised on purpose by `faults.client_raise`, to test what a run survives."""


def _hit(pairs, pid: int, rnd: int) -> bool:
    return any(int(p) == pid and int(r) == rnd for p, r in (pairs or []))


class StatefulClient(NumPyClient):
    def __init__(self, cfg: dict, partition_id: int, state: RecordDict, threads: int = 1,
                 state_dir: str | None = None):
        self.cfg, self.pid, self.state, self.threads = cfg, int(partition_id), state, threads
        root = state_dir or cfg.get("client_state_dir")
        self.state_dir = Path(root) / str(self.pid) if root else None

    def get_properties(self, config):
        return {"partition_id": self.pid}

    def begin_round(self, config) -> tuple[int, str, torch.device]:
        """Common start of fit: faults, state recovery after a restart, threads, device."""
        rnd = int(config["server_round"])
        self._inject_faults(rnd)
        self._recover(int(config.get("resume_round", 0)))
        torch.set_num_threads(self.threads)
        return rnd, f"client {self.pid}, round {rnd}", resolve_device(str(self.cfg["device"]))

    @property
    def first_participation(self) -> bool:
        return STATE_WEIGHTS not in self.state

    def _info(self) -> dict:
        """What the client noted about itself (rounds trained, last round, ...)."""
        info = self.state.get(STATE_INFO)
        return dict(info) if info is not None else {}

    def _restore(self, module: nn.Module) -> dict:
        """Load what this client kept (strict=False: only its kept keys) and return its info."""
        if STATE_WEIGHTS in self.state:
            module.load_state_dict(self.state[STATE_WEIGHTS].to_torch_state_dict(), strict=False)
        return self._info()

    def _persist(self, module: nn.Module, keep: list[str], info: dict, config) -> None:
        """Keep `keep` of the module and `info` in context.state, and on disk when checkpointing."""
        sd = module.state_dict()
        self.state[STATE_WEIGHTS] = ArrayRecord({k: sd[k].detach().cpu() for k in keep})
        self.state[STATE_INFO] = ConfigRecord(info)
        if int(config.get("checkpoint_every", 0)) > 0 and self.state_dir is not None:
            state_store.save(self.state_dir, int(config["server_round"]), self.state,
                             keep_from=int(config.get("last_checkpoint", 0)))

    def _recover(self, resume_round: int) -> None:
        """After a restart the in-memory state is empty: reload the saved one (<= resume_round)."""
        if STATE_WEIGHTS in self.state or resume_round <= 0 or self.state_dir is None:
            return
        state_store.restore(self.state_dir, resume_round, self.state)

    def _inject_faults(self, rnd: int) -> None:
        faults = self.cfg.get("faults") or {}
        if _hit(faults.get("client_hang"), self.pid, rnd):
            time.sleep(float(faults.get("hang_seconds", 60)))
        if _hit(faults.get("client_raise"), self.pid, rnd):
            raise InjectedFault(f"injected fault: client {self.pid} raises in round {rnd}")

    def _corrupt(self, arrays: list[np.ndarray], rnd: int) -> list[np.ndarray]:
        faults = self.cfg.get("faults") or {}
        if _hit(faults.get("nan_update"), self.pid, rnd):
            arrays[0] = np.full_like(arrays[0], np.nan)
        if _hit(faults.get("wrong_shape_update"), self.pid, rnd):
            arrays[0] = arrays[0].reshape(-1)[:-1].copy()
        return arrays
