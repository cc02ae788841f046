"""The one Flower NumPyClient of this project (conventions 1 and 5, docs/architecture.md#conventions-and-where-they-come-from): it only translates.

evaluate (tasks evaluated by their clients): the same, with the task's `local_evaluate`.
fit: read the round's Instructions from the fit config (the strategy's only channel to it),
recover its saved state after a restart, hand the received weights, what it kept and its notes to
the task's `local_round` (tasks/<task>/local.py, given by the task's registry row), keep what the
task says to keep, and pack the upload. Everything it must remember between rounds is in
`context.state`, because Flower builds a new client object every round, in its smallest form: its
notes there, its weights in its state dir (clients/state_store.py, the run's `client_state/<id>/`
in a simulation, the SuperNode's `state-dir`), read back only when it trains again; without a
state dir they stay in `context.state`. A restarted client continues from its saved state.
"""

from __future__ import annotations

from collections.abc import Callable
from logging import INFO
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, RecordDict
from flwr.client import NumPyClient
from flwr.common import log

from clients import faults, state_store
from protocol.instructions import Instructions
from protocol.transfer import decode
from tasks.common.local import LocalResult, LocalRound
from tasks.common.memory import release_memory
from tasks.common.training import NonFiniteLossError, use_threads



class TaskClient(NumPyClient):
    """Client `partition_id` of a run whose task trains with `local_round`."""

    def __init__(self, local_round: Callable[[LocalRound], LocalResult], cfg: dict, partition_id: int,
                 state: RecordDict, *, settings, threads: int = 1, state_dir: str | None = None,
                 local_evaluate: Callable[[LocalRound], tuple[int, dict]] | None = None):
        """`settings`: the task's section of the config (Task.settings), handed to every local round;
        required, so a caller that forgot it fails here, not in its first round."""
        self.local_round, self.cfg, self.pid, self.state, self.threads = local_round, cfg, int(partition_id), state, threads
        self.local_evaluate, self.settings = local_evaluate, settings
        root = state_dir or cfg.get("client_state_dir")
        self.state_dir = Path(root) / str(self.pid) if root else None

    def get_properties(self, config):
        faults_cfg, num_clients = self.cfg.get("faults") or {}, self.cfg.get("num_clients", 1)
        return {"partition_id": faults.claimed_partition(faults_cfg, self.pid, num_clients)}

    def fit(self, parameters, config):
        ins = Instructions.from_config(config)
        rnd = int(ins.server_round)
        injected = faults.before_training(self.cfg.get("faults") or {}, self.pid, rnd)
        if injected is not None:  # a hostile client's answer without training (faults.hostile)
            return injected
        use_threads(self.threads)
        kept, info, source = self._kept(ins)
        try:
            received = decode(list(parameters or []), None, ins.transfer_dtype)
            out = self.local_round(LocalRound(self.cfg, self.pid, ins, received, kept, info, self.settings))
        except NonFiniteLossError as err:
            return [], 0, {"partition_id": self.pid, "fatal_error": str(err)}
        info.update(out.info)
        info.update({"rounds_trained": int(info.get("rounds_trained", 0)) + 1, "last_round": rnd,
                     "session": ins.session})
        self._persist(out, info, ins)
        upload, num_examples, metrics = faults.hostile_reply(  # as is, unless faults.hostile names this client
            self.cfg.get("faults") or {}, self.pid, rnd, self.cfg.get("num_clients", 1),
            faults.corrupt(self.cfg.get("faults") or {}, out.upload, self.pid, rnd), received,
            out.num_examples, {"partition_id": self.pid, "state": source, **out.metrics}, ins.transfer_dtype)
        del out, kept, received
        release_memory()  # this round's model, optimizer and states are gone: give their pages back
        return upload, num_examples, metrics

    def evaluate(self, parameters, config):
        """Score the model this client would use (the received weights with what it keeps) on its
        own test data: for layouts evaluated by the clients (protocol/layout.py `evaluated_by`)."""
        if self.local_evaluate is None:
            raise RuntimeError(f"client {self.pid}: this task is evaluated on the server, not by its clients")
        ins = Instructions.from_config(config)
        use_threads(self.threads)
        kept, info, source = self._kept(ins)
        received = decode(list(parameters or []), None, ins.transfer_dtype)
        num_examples, metrics = self.local_evaluate(LocalRound(self.cfg, self.pid, ins, received, kept, info,
                                                               self.settings))
        del kept, received
        release_memory()
        return 0.0, int(num_examples), {"partition_id": self.pid, "state": source, **metrics}

    def _kept(self, ins: Instructions) -> tuple[dict | None, dict, str]:
        """(what this client kept, its notes, where they came from): "kept" (in memory since its
        last round), "restored:<round>" (from its state dir after a restart or a resume) or "new"
        (nothing of this run: a first participation, or a restart with an empty state dir)."""
        if state_store.INFO in self.state and self.state[state_store.INFO].get("session", ins.session) == ins.session:
            info = dict(self.state[state_store.INFO])
            if state_store.WEIGHTS in self.state:
                return self.state[state_store.WEIGHTS].to_torch_state_dict(), info, "kept"
            return state_store.load(self.state_dir, int(info["state_round"]))[0], info, "kept"
        restored = None if self.state_dir is None else state_store.recover(
            self.state_dir, ins.run_token, ins.session, int(ins.resume_round))
        if restored is None:
            if int(ins.server_round) > 1:
                where = f"in {self.state_dir}" if self.state_dir else "(no state dir)"
                log(INFO, "client %s: no saved state of this run %s: a first participation", self.pid, where)
            return None, {}, "new"
        rnd, weights, info = restored
        log(INFO, "client %s: continues from its own state of round %s (%s)", self.pid, rnd, self.state_dir)
        return weights, info, f"restored:{rnd}"

    def _persist(self, out: LocalResult, info: dict, ins: Instructions) -> None:
        """Keep the weights on disk when there is a state dir (in context.state otherwise), the
        notes in context.state. Without checkpoints only the newest file is kept."""
        rnd = int(ins.server_round)
        if self.state_dir is None:
            self.state[state_store.WEIGHTS] = ArrayRecord(out.kept)
        else:
            info["state_round"] = rnd
            keep_from = int(ins.last_checkpoint) if int(ins.checkpoint_every) > 0 else rnd
            state_store.save(self.state_dir, rnd, out.kept, info, keep_from=keep_from)
        self.state[state_store.INFO] = ConfigRecord(info)
