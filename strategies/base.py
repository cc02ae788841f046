"""FederatedAveraging: plain FedAvg of any task's uploaded parts, and the base every strategy of this project builds on (docs/algorithms.md#upload-and-aggregation).

It averages a task's uploaded parts weighted by examples (`strategy=fedavg`; `strategy=centralised`
is the same with one client holding everything). Subclasses change what a client is told
(`instructions`), how updates are combined (`aggregate_updates`) and what is evaluated
(`models_to_evaluate`). NumPy only: torch work is injected as ServerHooks (convention 2, docs/architecture.md#conventions-and-where-they-come-from).
The round's bookkeeping is in two parts the base owns: `Intake` (strategies/intake.py: who the
clients are, the checks on what they send) and `RoundBook` (strategies/round_book.py: the round's
record, and when it is evaluated, checkpointed and saved). A strategy file keeps its instructions,
its aggregation rule and the fields it reports.

Per-round protocol, shared by every strategy:
- clients are identified by partition id (learned once through get_properties), sampled with
  a generator seeded by (seed, round) over all `num_clients` partition ids, and aggregated in
  partition-id order, so a rerun is bit-identical;
- a run's first round (also after a resume) waits until every client is connected; later rounds
  go on with the clients that are: a chosen client whose node is offline or lost in any round, the
  first included (a SuperNode stopped or crashed, also while asked its partition), is recorded as
  failed for that round, and takes part again once it is back;
- every client gets its own Instructions in its fit config;
- nothing a client sends is trusted (strategies/trust.py): its metrics, arrays, example count and
  claimed partition are checked, and a bad value rejects that update for the round, never the run;
  a node's partition is bound at its first contact; a client's own fatal error ends its
  participation; only the server stops a run (too few valid updates, an invalid aggregate);
- updates are combined by `robust` (protocol/robust.py) or, with DP, clipped and noised (protocol/privacy.py);
  the aggregate is checked before it becomes the model; failures and rejections are recorded (who, round, why).
"""

from __future__ import annotations

import uuid
from logging import WARNING

import numpy as np
from flwr.common import (
    EvaluateIns,
    FitIns,
    FitRes,
    Parameters,
    log,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import FedAvg

from protocol.checks import Bool, Choice, ConfigError, Float
from protocol.hooks import RunStopped, ServerHooks
from protocol.instructions import Instructions
from protocol.layout import Layout
from protocol.fields import RoundField
from protocol.privacy import dp_mean, gaussian_epsilon
from protocol.robust import RULES, combine
from protocol.transfer import TRANSFER_DTYPES, encode
from protocol.weights import NDArrays
from strategies.cluster_merge import CLUSTER_FIELDS, merge_clusters
from strategies.failures import TrackedClient, error_text, failed_partition
from strategies.intake import Intake
from strategies.round_book import RoundBook
from strategies.trust import ExampleLimits, aggregate_problem


class FederatedAveraging(FedAvg):
    """Federated averaging of a task's uploaded parts, weighted by examples (docs/algorithms.md#upload-and-aggregation).

    pool_clients: one client holds what the federation would hold (strategy=centralised, the upper bound): no traffic counted.
    """

    CLIENT_FIELDS: tuple = ()  # protocol.fields.ClientField: per-client values this strategy records
    aggregates_by: str = "weighted_mean"  # the server's rule, read by app/audit.py (strategies/__init__.py lists them)
    ROUND_FIELDS: tuple = (RoundField("dp_epsilon", "DP epsilon", fmt=".3f"), *CLUSTER_FIELDS)  # round-level values

    def __init__(self, *, layout: Layout, hooks: ServerHooks, initial_arrays: NDArrays, num_rounds: int,
                 num_clients: int, fraction_fit: float = 1.0, min_fit_clients: int = 1, eval_every: int = 10,
                 eval_at_start: bool = False, seed: int = 0, norm_bound: float | None = None,
                 checkpoint_every: int = 0, resume_from: dict | None = None, name: str = "fedavg",
                 pool_clients: bool = False, transfer_dtype: str = "float32", robust: str = "none",
                 clip_norm: float | None = None, trim_fraction: float = 0.2,
                 example_limits: ExampleLimits | None = None, client_timeout: float = 600.0,
                 dp_noise_multiplier: float | None = None, dp_clip: float = 1.0, dp_delta: float = 1e-5):
        super().__init__(fraction_fit=fraction_fit, fraction_evaluate=0.0, min_fit_clients=min_fit_clients,
                         min_evaluate_clients=0, min_available_clients=num_clients,
                         initial_parameters=ndarrays_to_parameters(initial_arrays), accept_failures=True)
        self.layout, self.hooks, self.name = layout, hooks, name
        self.pool_clients = Bool().check(pool_clients, "strategy.pool_clients")
        self.transfer_dtype = Choice(options=TRANSFER_DTYPES).check(transfer_dtype, "transfer_dtype")
        self.num_rounds, self.num_clients, self.seed = num_rounds, num_clients, seed
        self.robust = Choice(options=RULES).check(robust, "strategy.robust")
        self.clip_norm = Float(above=0, null=True).check(clip_norm, "strategy.clip_norm")
        self.trim_fraction = Float(min=0, max=0.49).check(trim_fraction, "strategy.trim_fraction")
        self.dp = (Float(above=0, null=True).check(dp_noise_multiplier, "strategy.dp_noise_multiplier"),
                   Float(above=0).check(dp_clip, "strategy.dp_clip"), Float(above=0, max=1).check(dp_delta, "strategy.dp_delta"))
        self.dp_rounds = 0  # rounds whose aggregate was noised: the privacy spent so far
        if self.dp[0] is not None and (robust != "none" or layout.sum_merge or layout.regions):
            raise ConfigError("strategy.dp_noise_multiplier adds noise to a clipped mean of the updates; it cannot be "
                              "combined with strategy.robust, global clusters or SDR's groups (docs/deployment.md, \"Trust\")")
        self.global_arrays = [np.asarray(a) for a in initial_arrays]  # what the clients receive (the server's fp32)
        self.intake = Intake(num_clients=num_clients, layout=layout, limits=example_limits or ExampleLimits(),
                             transfer_dtype=self.transfer_dtype, min_fit_clients=min_fit_clients, norm_bound=norm_bound,
                             pool_clients=self.pool_clients, client_timeout=client_timeout, hooks=hooks)
        self.book = RoundBook(hooks=hooks, num_rounds=num_rounds, eval_every=eval_every, eval_at_start=eval_at_start,
                              checkpoint_every=checkpoint_every, evaluated_by_clients=layout.evaluated_by == "clients",
                              state_of=self.state_dict, resumed_round=int(resume_from["round"]) if resume_from else 0)
        # which run this is (kept across resumes) and which start of its server: clients tell their
        # own saved state from another run's, and from an interrupted part of this one
        self.run_token, self.session = uuid.uuid4().hex, uuid.uuid4().hex
        if resume_from is not None:
            self.load_state_dict(resume_from["strategy_state"])

    @property
    def record(self) -> dict:
        """This round's record (strategies/round_book.py): a strategy adds the fields it reports."""
        return self.book.record

    # ---------------------------------------------------------------- state for resume
    def state_dict(self) -> dict:
        """Everything the strategy remembers across rounds, as plain Python/NumPy values.
        Subclasses extend it; node ids are not kept (they change when a federation restarts)."""
        return {**self.intake.state(), "run_token": self.run_token, "dp_rounds": self.dp_rounds}

    def load_state_dict(self, state: dict) -> None:
        self.intake.load(state)
        self.run_token = str(state.get("run_token") or self.run_token)  # states saved before it existed: a new one
        self.dp_rounds = int(state.get("dp_rounds", 0))

    # ---------------------------------------------------------------- client selection
    def sample_clients(self, server_round: int, client_manager: ClientManager) -> list[ClientProxy]:
        """Seeded choice of partition ids: the same clients every rerun of the same round. Chosen
        clients that are not connected are left in `intake.absent` (recorded as failed)."""
        first = self.book.is_first(server_round)
        client_manager.wait_for(self.min_available_clients if first else max(1, self.min_fit_clients))
        by_pid = self.intake.connected(client_manager.all())
        n = max(1, min(self.num_clients, int(round(self.num_clients * self.fraction_fit))))
        rng = np.random.default_rng([self.seed, server_round])
        pids = [int(p) for p in np.sort(rng.choice(self.num_clients, size=n, replace=False))]
        retired = self.intake.retired
        self.intake.absent = [p for p in pids if p not in by_pid or p in retired]
        return [by_pid[p] for p in pids if p in by_pid and p not in retired]

    def instructions(self, server_round: int, pid: int) -> Instructions:
        """What client `pid` is told this round; subclasses change what they decide."""
        return Instructions(server_round=server_round, layout=self.layout.fingerprint,
                            layout_options=dict(self.layout.options), transfer_dtype=self.transfer_dtype,
                            resume_round=self.book.round_offset,
                            checkpoint_every=self.book.checkpoint_every, last_checkpoint=self.book.last_checkpoint,
                            run_token=self.run_token, session=self.session)

    def sends_weights_to(self, pid: int) -> bool:
        return True

    def configure_fit(self, server_round: int, parameters: Parameters, client_manager: ClientManager):
        server_round = self.book.run_round(server_round)
        if self.hooks.audit is not None:
            self.hooks.audit.round_started(server_round)
        chosen = self.sample_clients(server_round, client_manager)
        parameters = self.on_the_wire(parameters)
        empty = Parameters(tensors=[], tensor_type="numpy.ndarray")
        instructions, sent, pid_of, absent = [], 0, self.intake.pid_of, self.intake.absent
        for c in chosen:
            pid = pid_of[c.cid]
            params = parameters if self.sends_weights_to(pid) else empty
            sent += sum(len(t) for t in params.tensors)
            config = self.instructions(server_round, pid).to_config()
            instructions.append((TrackedClient(c, pid, self.hooks.client_done), FitIns(params, config)))
        record = self.book.open(server_round, sorted([*(pid_of[c.cid] for c in chosen), *absent]),
                                0 if self.pool_clients else sent)
        for pid in absent:
            error = self.intake.absence(pid)
            record["failures"].append({"partition_id": pid, "round": server_round, "error": error})
            log(WARNING, "round %s: client %s: %s", server_round, pid, error)
        self.intake.note_identity(record, server_round)
        if not chosen:  # Flower would skip the round: it stops, naming every chosen client's failure
            self.aggregate_fit(server_round - self.book.round_offset, [], [])  # raises RunStopped
        self.hooks.round_started(server_round, len(chosen))
        return instructions

    def on_the_wire(self, parameters: Parameters) -> Parameters:
        """The global weights as they travel this run (transfer_dtype); the server keeps fp32."""
        if self.transfer_dtype == "float32":
            return parameters
        return ndarrays_to_parameters(encode(parameters_to_ndarrays(parameters), self.transfer_dtype))

    # ---------------------------------------------------------------- aggregation
    def combine(self, updates, weights: list[float] | None = None) -> NDArrays:
        """The updates combined by the run's robust rule (protocol/robust.py), weighted by `weights`
        (default: the clients' example counts, capped where the server knows no limit: ExampleLimits)."""
        if self.dp[0] is not None:
            return self.private_mean(updates)
        if weights is None:
            weights, capped = self.intake.limits.weights([u[0] for u in updates], [u[2] for u in updates])
            if capped:
                self.record["capped"] = capped
        aggregated, info = combine(self.robust, [u[1] for u in updates], weights, self.global_arrays,
                                   self.clip_norm, self.trim_fraction)
        if "clip_scales" in info:
            self.record["clip_bound"] = info["clip_bound"]
            self.record["clipped"] = [u[0] for u, s in zip(updates, info["clip_scales"]) if s < 1.0]
        return aggregated

    def private_mean(self, updates) -> NDArrays:
        """The clipped, noised mean of the updates over the round's selected clients (protocol/privacy.py)."""
        z, clip, delta = self.dp
        rng = np.random.default_rng([self.seed, self.record["round"], 26])
        out, info = dp_mean([u[1] for u in updates], self.global_arrays, clip, z, len(self.record["selected"]), rng)
        self.dp_rounds += 1
        eps, order = gaussian_epsilon(self.dp_rounds, z, delta)
        self.record["dp_epsilon"] = eps
        self.record["dp"] = {"epsilon": eps, "delta": delta, "order": order, "noise_multiplier": z, "clip": clip,
                             "rounds": self.dp_rounds, "clipped": [u[0] for u, s in zip(updates, info["clip_scales"]) if s < 1]}
        return out

    def aggregate_updates(self, server_round: int, updates) -> NDArrays:
        return merge_clusters(self.layout, self.combine(updates), updates,
                              self.seed, server_round, self.global_arrays, self.record)  # global clusters: k-means

    def aggregate_fit(self, server_round: int, results: list[tuple[ClientProxy, FitRes]], failures):
        server_round = self.book.run_round(server_round)
        try:
            updates = self.intake.collect_updates(self.record, server_round, results, failures, self.global_arrays)
            aggregated = self.aggregate_updates(server_round, updates)
            why = aggregate_problem(aggregated, self.layout)
            if why is not None:
                raise RunStopped(f"round {server_round}: the aggregate is not a valid model ({why}); the global "
                                 f"model stays that of round {server_round - 1}")
            if self.hooks.audit is not None:
                self.hooks.audit.aggregate(server_round, aggregated)
        except RunStopped as err:
            self.book.stopped(str(err))
            raise
        self.global_arrays = aggregated
        self.book.aggregated()
        return ndarrays_to_parameters(aggregated), {"train_loss": self.record["train_loss"]}

    # ---------------------------------------------------------------- evaluation and reports
    def models_to_evaluate(self, global_arrays: NDArrays) -> dict[str, NDArrays]:
        return {"global": global_arrays}

    def evaluate(self, server_round: int, parameters: Parameters):
        evaluation = self.book.evaluate(server_round, lambda: parameters_to_ndarrays(parameters), self.models_to_evaluate)
        return None if evaluation is None else (0.0, _figures(evaluation))

    def configure_evaluate(self, server_round, parameters, client_manager):
        """Representations are evaluated centrally (docs/algorithms.md#evaluating-representations); a layout evaluated by the clients sends
        the global weights to every connected client after an evaluation round's aggregation."""
        if self.book.pending is None:
            return []
        server_round = self.book.run_round(server_round)
        by_pid = self.intake.connected(client_manager.all())
        if not by_pid:
            self.aggregate_evaluate(server_round - self.book.round_offset, [], [])
            return []
        params = self.on_the_wire(parameters)
        return [(TrackedClient(c, pid, None), EvaluateIns(params, self.instructions(server_round, pid).to_config()))
                for pid, c in sorted(by_pid.items())]

    def aggregate_evaluate(self, server_round: int, results, failures):
        reports, refused = self.intake.screen_reports(results)
        lost = [{"partition_id": failed_partition(f, self.intake.pid_of), "error": error_text(f)} for f in failures]
        return 0.0, _figures(self.book.clients_evaluated(reports, lost + refused))


def _figures(evaluation: dict) -> dict:
    return {k: v for k, v in evaluation.items() if isinstance(v, (int, float))}
