"""The one Flower NumPyClient of this project (DESIGN.md conv. 1 and 5): it only translates.

fit: read the round's Instructions from the fit config (the strategy's only channel to it),
recover its saved state after a restart, hand the received weights, what it kept and its notes to
the task's `local_round` (tasks/<task>/local.py, given by the task's registry row), keep what the
task says to keep, and pack the upload. Everything it must remember between rounds is in
`context.state`, because Flower builds a new client object every round; with checkpointing on it
is also written to its own disk, so a restarted client continues from its own state.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, RecordDict
from flwr.client import NumPyClient

from clients import faults, state_store
from protocol.instructions import Instructions
from tasks.common.local import LocalResult, LocalRound
from tasks.common.training import NonFiniteLossError, use_threads

STATE_WEIGHTS = "fedssl.local_weights"
STATE_INFO = "fedssl.client_info"


class TaskClient(NumPyClient):
    """Client `partition_id` of a run whose task trains with `local_round`."""

    def __init__(self, local_round: Callable[[LocalRound], LocalResult], cfg: dict, partition_id: int,
                 state: RecordDict, threads: int = 1, state_dir: str | None = None):
        self.local_round, self.cfg, self.pid, self.state, self.threads = local_round, cfg, int(partition_id), state, threads
        root = state_dir or cfg.get("client_state_dir")
        self.state_dir = Path(root) / str(self.pid) if root else None

    def get_properties(self, config):
        return {"partition_id": self.pid}

    def fit(self, parameters, config):
        ins = Instructions.from_config(config)
        rnd = int(ins.server_round)
        faults.before_training(self.cfg.get("faults") or {}, self.pid, rnd)
        self._recover(int(ins.resume_round))
        use_threads(self.threads)
        kept = self.state[STATE_WEIGHTS].to_torch_state_dict() if STATE_WEIGHTS in self.state else None
        info = dict(self.state[STATE_INFO]) if STATE_INFO in self.state else {}
        try:
            out = self.local_round(LocalRound(self.cfg, self.pid, ins, list(parameters or []), kept, info))
        except NonFiniteLossError as err:
            return [], 0, {"partition_id": self.pid, "fatal_error": str(err)}
        info.update(out.info)
        info.update({"rounds_trained": int(info.get("rounds_trained", 0)) + 1, "last_round": rnd})
        self._persist(out, info, ins)
        upload = faults.corrupt(self.cfg.get("faults") or {}, out.upload, self.pid, rnd)
        return upload, out.num_examples, {"partition_id": self.pid, **out.metrics}

    def _persist(self, out: LocalResult, info: dict, ins: Instructions) -> None:
        """Keep what the task says in context.state, and on disk when the run checkpoints."""
        self.state[STATE_WEIGHTS] = ArrayRecord(out.kept)
        self.state[STATE_INFO] = ConfigRecord(info)
        if int(ins.checkpoint_every) > 0 and self.state_dir is not None:
            state_store.save(self.state_dir, int(ins.server_round), self.state, keep_from=int(ins.last_checkpoint))

    def _recover(self, resume_round: int) -> None:
        """After a restart the in-memory state is empty: reload the saved one (<= resume_round)."""
        if STATE_WEIGHTS in self.state or resume_round <= 0 or self.state_dir is None:
            return
        state_store.restore(self.state_dir, resume_round, self.state)
