"""FedSSL: the base every strategy of this project builds on, and plain FedAvg (docs/algorithms.md#upload-and-aggregation).

It averages a task's uploaded parts weighted by examples (`strategy=fedavg`; `strategy=centralised`
is the same with one client holding everything). Subclasses change what a client is told
(`instructions`), how updates are combined (`aggregate_updates`) and what is evaluated
(`models_to_evaluate`). NumPy only: torch work is injected as ServerHooks (convention 2, docs/architecture.md#conventions-and-where-they-come-from).

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

import time
import uuid
from collections.abc import Sequence
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
from strategies.site_evaluation import merge_site_reports
from strategies.intake import absence, collect_updates, learn_partition_ids, note_identity, screen_reports
from strategies.trust import ExampleLimits, IdentityBook, aggregate_problem


class FedSSL(FedAvg):
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
        self.eval_every, self.eval_at_start, self.norm_bound = eval_every, eval_at_start, norm_bound
        self.checkpoint_every = checkpoint_every
        self.robust = Choice(options=RULES).check(robust, "strategy.robust")
        self.clip_norm = Float(above=0, null=True).check(clip_norm, "strategy.clip_norm")
        self.trim_fraction = Float(min=0, max=0.49).check(trim_fraction, "strategy.trim_fraction")
        self.limits = example_limits or ExampleLimits()
        self.dp = (Float(above=0, null=True).check(dp_noise_multiplier, "strategy.dp_noise_multiplier"),
                   Float(above=0).check(dp_clip, "strategy.dp_clip"), Float(above=0, max=1).check(dp_delta, "strategy.dp_delta"))
        self.dp_rounds = 0  # rounds whose aggregate was noised: the privacy spent so far
        if self.dp[0] is not None and (robust != "none" or layout.sum_merge or layout.regions):
            raise ConfigError("strategy.dp_noise_multiplier adds noise to a clipped mean of the updates; it cannot be "
                              "combined with strategy.robust, global clusters or SDR's groups (docs/deployment.md, \"Trust\")")
        self.client_timeout = float(client_timeout)
        self.global_arrays = [np.asarray(a) for a in initial_arrays]  # what the clients receive (the server's fp32)
        self.identity = IdentityBook(num_clients)
        self.retired: dict[int, str] = {}  # partition id -> the fatal error that ended its participation
        self.identity_notes: list[dict] = []  # refusals and re-bindings seen while sampling, for the round's record
        self.pid_of: dict[str, int] = {}  # Flower node id -> partition id
        self.participated: set[int] = set()
        self.record: dict = {}
        self._round_start = time.perf_counter()
        self.absent: list[int] = []  # chosen this round, but not connected
        self.pending_eval: tuple | None = None  # a round whose clients evaluate (Layout.evaluated_by)
        # which run this is (kept across resumes) and which start of its server: clients tell their
        # own saved state from another run's, and from an interrupted part of this one
        self.run_token, self.session = uuid.uuid4().hex, uuid.uuid4().hex
        # Resume: Flower counts rounds from 1 again; `round_offset` maps them to the real ones.
        self.round_offset = self.last_checkpoint = 0
        if resume_from is not None:
            self.round_offset = self.last_checkpoint = int(resume_from["round"])
            self.load_state_dict(resume_from["strategy_state"])

    # ---------------------------------------------------------------- state for resume
    def state_dict(self) -> dict:
        """Everything the strategy remembers across rounds, as plain Python/NumPy values.
        Subclasses extend it; node ids are not kept (they change when a federation restarts)."""
        return {"participated": sorted(self.participated), "run_token": self.run_token,
                "identity": self.identity.state(), "retired": {str(p): e for p, e in sorted(self.retired.items())},
                "dp_rounds": self.dp_rounds}

    def load_state_dict(self, state: dict) -> None:
        self.participated = set(int(p) for p in state["participated"])
        self.run_token = str(state.get("run_token") or self.run_token)  # states saved before it existed: a new one
        self.identity.load(state.get("identity", {}))
        self.retired = {int(p): str(e) for p, e in state.get("retired", {}).items()}
        self.dp_rounds = int(state.get("dp_rounds", 0))

    # ---------------------------------------------------------------- client selection
    def _learn_partition_ids(self, clients: Sequence[ClientProxy]) -> None:
        learn_partition_ids(self, clients)

    def sample_clients(self, server_round: int, client_manager: ClientManager) -> list[ClientProxy]:
        """Seeded choice of partition ids: the same clients every rerun of the same round. Chosen
        clients that are not connected are left in `self.absent` (recorded as failed)."""
        first = server_round == self.round_offset + 1
        client_manager.wait_for(self.min_available_clients if first else max(1, self.min_fit_clients))
        connected = client_manager.all()
        self._learn_partition_ids(list(connected.values()))
        # a restarted node may be listed twice for a while (its old id until its heartbeat
        # expires): the id learned last is the one that is alive
        by_pid = {pid: connected[cid] for cid, pid in self.pid_of.items() if cid in connected}
        n = max(1, min(self.num_clients, int(round(self.num_clients * self.fraction_fit))))
        rng = np.random.default_rng([self.seed, server_round])
        pids = [int(p) for p in np.sort(rng.choice(self.num_clients, size=n, replace=False))]
        self.absent = [p for p in pids if p not in by_pid or p in self.retired]
        return [by_pid[p] for p in pids if p in by_pid and p not in self.retired]

    def instructions(self, server_round: int, pid: int) -> Instructions:
        """What client `pid` is told this round; subclasses change what they decide."""
        return Instructions(server_round=server_round, layout=self.layout.fingerprint,
                            layout_options=dict(self.layout.options), transfer_dtype=self.transfer_dtype,
                            resume_round=self.round_offset,
                            checkpoint_every=self.checkpoint_every, last_checkpoint=self.last_checkpoint,
                            run_token=self.run_token, session=self.session)

    def sends_weights_to(self, pid: int) -> bool:
        return True

    def configure_fit(self, server_round: int, parameters: Parameters, client_manager: ClientManager):
        server_round += self.round_offset
        self._round_start = time.perf_counter()
        if self.hooks.audit is not None:
            self.hooks.audit.round_started(server_round)
        chosen = self.sample_clients(server_round, client_manager)
        parameters = self.on_the_wire(parameters)
        empty = Parameters(tensors=[], tensor_type="numpy.ndarray")
        instructions, sent = [], 0
        for c in chosen:
            pid = self.pid_of[c.cid]
            params = parameters if self.sends_weights_to(pid) else empty
            sent += sum(len(t) for t in params.tensors)
            config = self.instructions(server_round, pid).to_config()
            instructions.append((TrackedClient(c, pid, self.hooks.client_done), FitIns(params, config)))
        selected = sorted([*(self.pid_of[c.cid] for c in chosen), *self.absent])
        self.record = {"round": server_round, "selected": selected,
                       "bytes_sent": 0 if self.pool_clients else sent, "clients": {}, "failures": [], "rejected": []}
        for pid in self.absent:
            error = absence(self, pid)
            self.record["failures"].append({"partition_id": pid, "round": server_round, "error": error})
            log(WARNING, "round %s: client %s: %s", server_round, pid, error)
        note_identity(self, server_round)
        if not chosen:  # Flower would skip the round: it stops, naming every chosen client's failure
            self.aggregate_fit(server_round - self.round_offset, [], [])
        self.hooks.round_started(server_round, len(chosen))
        return instructions

    def on_the_wire(self, parameters: Parameters) -> Parameters:
        """The global weights as they travel this run (transfer_dtype); the server keeps fp32."""
        if self.transfer_dtype == "float32":
            return parameters
        return ndarrays_to_parameters(encode(parameters_to_ndarrays(parameters), self.transfer_dtype))

    # ---------------------------------------------------------------- aggregation
    def _collect(self, server_round: int, results, failures) -> list[tuple[int, NDArrays, int, dict]]:
        """Valid updates sorted by partition id; failures, retirements and rejections recorded."""
        return collect_updates(self, server_round, results, failures)

    def combine(self, updates, weights: list[float] | None = None) -> NDArrays:
        """The updates combined by the run's robust rule (protocol/robust.py), weighted by `weights`
        (default: the clients' example counts, capped where the server knows no limit: ExampleLimits)."""
        if self.dp[0] is not None:
            return self.private_mean(updates)
        if weights is None:
            weights, capped = self.limits.weights([u[0] for u in updates], [u[2] for u in updates])
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
        server_round += self.round_offset
        try:
            updates = self._collect(server_round, results, failures)
            aggregated = self.aggregate_updates(server_round, updates)
            why = aggregate_problem(aggregated, self.layout)
            if why is not None:
                raise RunStopped(f"round {server_round}: the aggregate is not a valid model ({why}); the global "
                                 f"model stays that of round {server_round - 1}")
            if self.hooks.audit is not None:
                self.hooks.audit.aggregate(server_round, aggregated)
        except RunStopped as err:
            self.record["fatal_error"] = str(err)
            self.hooks.report(self.record)
            raise
        self.global_arrays = aggregated
        self.record["fit_seconds"] = time.perf_counter() - self._round_start
        return ndarrays_to_parameters(aggregated), {"train_loss": self.record["train_loss"]}

    # ---------------------------------------------------------------- evaluation and reports
    def models_to_evaluate(self, global_arrays: NDArrays) -> dict[str, NDArrays]:
        return {"global": global_arrays}

    def evaluate(self, server_round: int, parameters: Parameters):
        if server_round == 0 and self.round_offset > 0:
            return None  # resumed: the starting point was evaluated in the interrupted run
        server_round += self.round_offset
        final = server_round == self.num_rounds
        due = final or (server_round == 0 and self.eval_at_start) or (
            server_round > 0 and self.eval_every > 0 and server_round % self.eval_every == 0)
        by_clients = self.layout.evaluated_by == "clients"
        due = due and not (by_clients and server_round == 0)  # clients evaluate after a round's aggregation
        record = self.record if server_round > 0 else {"round": 0}
        persist = server_round > 0 and (
            final or (self.checkpoint_every > 0 and server_round % self.checkpoint_every == 0))
        arrays = parameters_to_ndarrays(parameters) if (due or persist) else []  # deserialised once
        if due and not by_clients:
            t0 = time.perf_counter()
            record["eval"] = self.hooks.evaluate(server_round, self.models_to_evaluate(arrays), final)
            record["eval_seconds"] = time.perf_counter() - t0
        if final:
            record["checkpoint"] = self.hooks.save_checkpoint(self.models_to_evaluate(arrays), server_round)
        if server_round > 0:
            record["wall_seconds"] = time.perf_counter() - self._round_start
        if due and by_clients:  # closed by aggregate_evaluate, once the clients have answered
            self.pending_eval = (record, final, persist, arrays, time.perf_counter())
            return None
        self._close(record, server_round > 0 or due, persist, arrays)
        if due:
            return 0.0, {k: v for k, v in record["eval"].items() if isinstance(v, (int, float))}
        return None

    def _close(self, record: dict, report: bool, persist: bool, arrays: NDArrays) -> None:
        """Report the round (summary.json, W&B, console) and save the state to resume from."""
        if report:
            self.hooks.report(record)
        if persist:
            self.hooks.save_state(record["round"], arrays, self.state_dict())
            self.last_checkpoint = record["round"]

    def configure_evaluate(self, server_round, parameters, client_manager):
        """Representations are evaluated centrally (docs/algorithms.md#evaluating-representations); a layout evaluated by the clients sends
        the global weights to every connected client after an evaluation round's aggregation."""
        if self.pending_eval is None:
            return []
        server_round += self.round_offset
        connected = client_manager.all()
        self._learn_partition_ids(list(connected.values()))
        by_pid = {pid: connected[cid] for cid, pid in self.pid_of.items() if cid in connected}
        if not by_pid:
            self.aggregate_evaluate(server_round - self.round_offset, [], [])
            return []
        params = self.on_the_wire(parameters)
        return [(TrackedClient(c, pid, None), EvaluateIns(params, self.instructions(server_round, pid).to_config()))
                for pid, c in sorted(by_pid.items())]

    def aggregate_evaluate(self, server_round: int, results, failures):
        record, final, persist, arrays, t0 = self.pending_eval
        self.pending_eval = None
        reports, refused = screen_reports(self, results)
        lost = [{"partition_id": failed_partition(f, self.pid_of), "error": error_text(f)} for f in failures] + refused
        record["eval"] = merge_site_reports(reports, lost, final)
        record["eval_seconds"] = time.perf_counter() - t0
        self._close(record, True, persist, arrays)
        return 0.0, {k: v for k, v in record["eval"].items() if isinstance(v, (int, float))}
