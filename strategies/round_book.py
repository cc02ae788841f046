"""A round's record from its start to its report, and when a round is evaluated, checkpointed and saved: a part every strategy owns (`RoundBook`).

The record (who was chosen, bytes, every client's figures, failures and rejections, the aggregate's
timing, the evaluation) is opened when the round's instructions go out and reported once the round
is over (summary.json, W&B, console, through the ServerHooks). The schedule: evaluation every
`eval_every` rounds, at the start with `eval_at_start`, and always at the last round; the model and
the federation's state saved every `checkpoint_every` rounds and at the last round. A layout
evaluated by its clients (strategies/site_evaluation.py) closes its evaluation rounds only once the
clients have answered. Flower counts rounds from 1 again after a resume: `round_offset` maps its
numbers to the run's.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from protocol.hooks import ServerHooks
from protocol.weights import NDArrays
from strategies.site_evaluation import merge_site_reports


class RoundBook:
    def __init__(self, *, hooks: ServerHooks, num_rounds: int, eval_every: int, eval_at_start: bool,
                 checkpoint_every: int, evaluated_by_clients: bool, state_of: Callable[[], dict],
                 resumed_round: int = 0):
        self.state_of = state_of  # the strategy's state_dict: what a resumed run starts from
        self.hooks, self.num_rounds, self.eval_every, self.eval_at_start = hooks, num_rounds, eval_every, eval_at_start
        self.checkpoint_every, self.by_clients = checkpoint_every, evaluated_by_clients
        self.round_offset = self.last_checkpoint = resumed_round  # the round a resumed run starts after
        self.record: dict = {}
        self.started = time.perf_counter()
        self.pending: tuple | None = None  # an evaluation round waiting for its clients' reports

    def run_round(self, flower_round: int) -> int:
        return flower_round + self.round_offset

    def is_first(self, server_round: int) -> bool:
        """The run's first round, or the first after a resume: it waits for every client."""
        return server_round == self.round_offset + 1

    def open(self, server_round: int, selected: list[int], bytes_sent: int) -> dict:
        self.started = time.perf_counter()
        self.record = {"round": server_round, "selected": selected, "bytes_sent": bytes_sent, "clients": {},
                       "failures": [], "rejected": []}
        return self.record

    def aggregated(self) -> None:
        self.record["fit_seconds"] = time.perf_counter() - self.started

    def stopped(self, why: str) -> None:
        """The run ends in this round: its record says why, and is reported."""
        self.record["fatal_error"] = why
        self.hooks.report(self.record)

    def evaluate(self, flower_round: int, arrays_of: Callable[[], NDArrays],
                 models_to_evaluate: Callable[[NDArrays], dict[str, NDArrays]]) -> dict | None:
        """The end of a round (round 0: the starting point): evaluated if due, checkpointed and saved if
        due, reported. Returns the evaluation record, or None when there is none (yet)."""
        if flower_round == 0 and self.round_offset > 0:
            return None  # resumed: the starting point was evaluated in the interrupted run
        server_round = self.run_round(flower_round)
        final = server_round == self.num_rounds
        due = final or (server_round == 0 and self.eval_at_start) or (
            server_round > 0 and self.eval_every > 0 and server_round % self.eval_every == 0)
        due = due and not (self.by_clients and server_round == 0)  # clients evaluate after a round's aggregation
        record = self.record if server_round > 0 else {"round": 0}
        persist = server_round > 0 and (
            final or (self.checkpoint_every > 0 and server_round % self.checkpoint_every == 0))
        arrays = arrays_of() if (due or persist) else []  # deserialised once
        if due and not self.by_clients:
            t0 = time.perf_counter()
            record["eval"] = self.hooks.evaluate(server_round, models_to_evaluate(arrays), final)
            record["eval_seconds"] = time.perf_counter() - t0
        if final:
            record["checkpoint"] = self.hooks.save_checkpoint(models_to_evaluate(arrays), server_round)
        if server_round > 0:
            record["wall_seconds"] = time.perf_counter() - self.started
        if due and self.by_clients:  # closed by `clients_evaluated`, once the clients have answered
            self.pending = (record, final, persist, arrays, time.perf_counter())
            return None
        self.close(record, server_round > 0 or due, persist, arrays)
        return record["eval"] if due else None

    def clients_evaluated(self, reports: dict[int, tuple[int, dict]], lost: list[dict]) -> dict:
        """The pending evaluation round closed with its clients' reports ({partition id: (test images,
        figures)}) and the clients that failed or were refused."""
        record, final, persist, arrays, t0 = self.pending
        self.pending = None
        record["eval"] = merge_site_reports(reports, lost, final)
        record["eval_seconds"] = time.perf_counter() - t0
        self.close(record, True, persist, arrays)
        return record["eval"]

    def close(self, record: dict, report: bool, persist: bool, arrays: NDArrays) -> None:
        """Report the round (summary.json, W&B, console) and save the state to resume from."""
        if report:
            self.hooks.report(record)
        if persist:
            self.hooks.save_state(record["round"], arrays, self.state_of())
            self.last_checkpoint = record["round"]
