"""The torch-side services a strategy is given, and how a run is stopped (convention 2, docs/architecture.md#conventions-and-where-they-come-from)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from protocol.weights import NDArrays


class RunStopped(RuntimeError):
    """The federation cannot continue; the message names the client, the round and the cause."""


@dataclass
class ServerHooks:
    """What a strategy may ask of the rest of the run, NumPy in and NumPy out.

    evaluate(round, models, final) -> metrics: `models` maps a name ("global" or a partition id)
        to arrays in the upload layout; final=True asks for the end-of-run protocol too.
    report(record): one round's record, for summary.json, the console line and W&B.
    save_checkpoint(models, round) -> path of the final checkpoint written.
    save_state(round, global arrays, strategy state): persist the federation after a round
        (resume); called every `checkpoint_every` rounds and after the last one.
    distill(student, teachers, round) -> (arrays, loss): server-side knowledge distillation
        (FedPav, docs/algorithms.md#fedpav); None when the task has none.
    round_started(round, clients), client_done(num_examples): a round began with this many
        clients; one client's answer arrived (the live progress line, app/progress.py).
    audit: None, or what keeps a copy of every received update and of each round's aggregate
        (`audit_updates=true`, app/audit.py): round_started(round), update(round, pid, arrays,
        num_examples, rejected reason or None), aggregate(round, arrays).
    """

    evaluate: Callable[[int, dict[str, NDArrays], bool], dict]
    report: Callable[[dict], None]
    save_checkpoint: Callable[[dict[str, NDArrays], int], str]
    save_state: Callable[[int, NDArrays, dict], None] = lambda rnd, arrays, state: None
    distill: Callable[[NDArrays, list[NDArrays], int], tuple[NDArrays, float]] | None = None
    round_started: Callable[[int, int], None] = lambda rnd, clients: None
    client_done: Callable[[int], None] = lambda num_examples: None
    audit: object | None = None
