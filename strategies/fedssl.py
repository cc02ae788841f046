"""Flower strategies for federated self-supervised learning (SPEC §2), NumPy only.

`FedSSL` is plain federated averaging of the parts a method uploads (`strategy=fedavg`,
FedSimSiam/FedSimCLR/... later). `FedU` adds the divergence-aware predictor update and the
per-client decisions (`strategy=fedu`; `predictor=global` gives FedBYOL, `predictor=local`
the local-predictor ablation). `Standalone` aggregates nothing and evaluates each client's
own model. Torch-side work (evaluation, checkpoints, reports) is injected as `ServerHooks`.

Per-round protocol, shared by all three:
- clients are identified by partition id (learned once through get_properties), sampled with
  a generator seeded by (seed, round), and aggregated in partition-id order, so a rerun is
  bit-identical;
- every client gets its own FitIns config (SPEC §2.3: the DAPU decision travels per client);
- every update is checked (count, shapes, finite values) before it can be averaged in;
- failures and rejected updates are recorded with who, round and why.
"""

from __future__ import annotations

import concurrent.futures
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from logging import WARNING

import numpy as np
from flwr.common import (
    FitIns,
    FitRes,
    GetPropertiesIns,
    Parameters,
    Scalar,
    log,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import FedAvg

from strategies.weights import NDArrays, dapu_adopts_global, layer_divergence, nbytes, weighted_average


class RunStopped(RuntimeError):
    """The federation cannot continue; the message names the client, the round and the cause."""


@dataclass
class ServerHooks:
    """Torch-side services a strategy is given (DESIGN.md conv. 2).

    evaluate(round, models, final) -> metrics: `models` maps a name ("global" or a
        partition id) to uploaded-layout arrays; final=True asks for the linear probe too.
    report(record): one round's record (fit and evaluation), for summary.json/console/W&B.
    save_checkpoint(models, round) -> path of the final checkpoint written.
    save_state(round, global arrays, strategy state): persist the federation after a round
        (resume); called every `checkpoint_every` rounds and after the last one.
    distill(student, teachers, round) -> (arrays, loss): knowledge distillation (FedPav only).
    """

    evaluate: Callable[[int, dict[str, NDArrays], bool], dict]
    report: Callable[[dict], None]
    save_checkpoint: Callable[[dict[str, NDArrays], int], str]
    save_state: Callable[[int, NDArrays, dict], None] = lambda rnd, arrays, state: None
    # distill(student arrays, teachers' arrays, round) -> (new arrays, loss): FedPav's server-side KD
    distill: Callable[[NDArrays, list[NDArrays], int], tuple[NDArrays, float]] | None = None


@dataclass
class Layout:
    """The wire layout of an upload, derived from the method's SyncPlan on both sides."""

    keys: list[str]
    shapes: list[tuple[int, ...]]
    fingerprint: str
    divergence_layers: list[int] = field(default_factory=list)

    def check(self, arrays: NDArrays) -> str | None:
        """Why `arrays` is not a valid update in this layout, or None if it is."""
        if len(arrays) != len(self.keys):
            return f"expected {len(self.keys)} arrays, got {len(arrays)}"
        for key, shape, arr in zip(self.keys, self.shapes, arrays):
            if tuple(arr.shape) != tuple(shape):
                return f"{key}: shape {tuple(arr.shape)}, expected {tuple(shape)}"
            if np.issubdtype(arr.dtype, np.floating) and not np.all(np.isfinite(arr)):
                return f"{key}: non-finite values"
        return None


class ClientFailed(RuntimeError):
    """A selected client did not deliver an update; carries its partition id."""

    def __init__(self, partition_id: int, error: BaseException):
        super().__init__(f"client {partition_id}: {type(error).__name__}: {error}")
        self.partition_id, self.error = partition_id, error


class _TrackedClient(ClientProxy):
    """Wraps a ClientProxy for one fit call so that a failure names the client it came from
    (Flower reports a failed fit as a bare exception)."""

    def __init__(self, inner: ClientProxy, partition_id: int):
        super().__init__(inner.cid)
        self.inner, self.partition_id = inner, partition_id

    def fit(self, ins, timeout, group_id):
        try:
            return self.inner.fit(ins, timeout=timeout, group_id=group_id)
        except BaseException as err:  # noqa: BLE001 - re-raised with the client's id
            raise ClientFailed(self.partition_id, err) from err

    def get_properties(self, ins, timeout, group_id):
        return self.inner.get_properties(ins, timeout, group_id)

    def get_parameters(self, ins, timeout, group_id):
        return self.inner.get_parameters(ins, timeout, group_id)

    def evaluate(self, ins, timeout, group_id):
        return self.inner.evaluate(ins, timeout, group_id)

    def reconnect(self, ins, timeout, group_id):
        return self.inner.reconnect(ins, timeout, group_id)


_CAUSE = re.compile(r"\b([A-Za-z_][\w.]*(?:Error|Exception|Fault)): ([^\n'\\]+)")


def _error_text(failure) -> str:
    """A one-line reason: the client's own exception, or that its message expired (timeout)."""
    if isinstance(failure, ClientFailed):
        text = str(failure.error)
    elif isinstance(failure, BaseException):
        text = f"{type(failure).__name__}: {failure}"
    else:
        _, res = failure
        return f"status {res.status.code.name}: {res.status.message}"
    if "TTL" in text or "expired" in text:
        return "no answer within round_timeout (the message expired)"
    causes = [m for m in _CAUSE.findall(text) if "RayTaskError" not in m[0] and m[0] != "ValueError"]
    return f"{causes[-1][0]}: {causes[-1][1].strip()}" if causes else text[:500]


@dataclass(frozen=True)
class ClientRules:
    """What an SSL client does with the weights this strategy sends, and what it keeps.

    mix_global: mix the received model into its local one instead of replacing it (FedEMA, SPEC §3).
    keep_everything: its whole local model persists between rounds (standalone, FedEMA).
    keep_optional: it may decline the optional parts (FedU's predictor under DAPU or `predictor=local`),
    so it keeps its own copy of them (SPEC §2.3).
    """

    mix_global: bool = False
    keep_everything: bool = False
    keep_optional: bool = False


class FedSSL(FedAvg):
    """Federated averaging of a method's uploaded parts, weighted by examples (SPEC §2.6)."""

    predictor_mode = "global"

    @classmethod
    def client_rules(cls, strategy_cfg: dict) -> ClientRules:
        """The client side of this strategy's protocol (clients/ssl_client.py reads it)."""
        return ClientRules()

    def __init__(
        self,
        *,
        layout: Layout,
        hooks: ServerHooks,
        initial_arrays: NDArrays,
        num_rounds: int,
        num_clients: int,
        fraction_fit: float = 1.0,
        min_fit_clients: int = 1,
        eval_every: int = 10,
        eval_at_start: bool = False,
        seed: int = 0,
        norm_bound: float | None = None,
        checkpoint_every: int = 0,
        resume_from: dict | None = None,
    ):
        super().__init__(
            fraction_fit=fraction_fit,
            fraction_evaluate=0.0,
            min_fit_clients=min_fit_clients,
            min_evaluate_clients=0,
            min_available_clients=num_clients,
            initial_parameters=ndarrays_to_parameters(initial_arrays),
            accept_failures=True,
        )
        self.layout, self.hooks = layout, hooks
        self.num_rounds, self.num_clients, self.seed = num_rounds, num_clients, seed
        self.eval_every, self.eval_at_start, self.norm_bound = eval_every, eval_at_start, norm_bound
        self.checkpoint_every = checkpoint_every
        self.pid_of: dict[str, int] = {}  # Flower node id -> partition id
        self.participated: set[int] = set()
        self.record: dict = {}
        self._round_start = time.perf_counter()
        # Resume: Flower counts rounds from 1 again; `round_offset` maps them to the real ones.
        self.round_offset = 0
        self.last_checkpoint = 0
        if resume_from is not None:
            self.round_offset = self.last_checkpoint = int(resume_from["round"])
            self.load_state_dict(resume_from["strategy_state"])

    # ---------------------------------------------------------------- state for resume
    def state_dict(self) -> dict:
        """Everything the strategy remembers across rounds, as plain Python/NumPy values.
        Subclasses extend it; node ids are not kept (they change when a federation restarts)."""
        return {"participated": sorted(self.participated)}

    def load_state_dict(self, state: dict) -> None:
        self.participated = set(int(p) for p in state["participated"])

    # ---------------------------------------------------------------- client selection
    def _learn_partition_ids(self, clients: Sequence[ClientProxy]) -> None:
        unknown = [c for c in clients if c.cid not in self.pid_of]
        if not unknown:
            return

        def ask(c: ClientProxy) -> tuple[str, int]:
            res = c.get_properties(GetPropertiesIns(config={}), timeout=None, group_id=0)
            return c.cid, int(res.properties["partition_id"])

        with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
            for cid, pid in pool.map(ask, unknown):
                self.pid_of[cid] = pid

    def sample_clients(self, server_round: int, client_manager: ClientManager) -> list[ClientProxy]:
        """Seeded choice by partition id: the same clients every rerun of the same round."""
        client_manager.wait_for(self.min_available_clients)
        clients = list(client_manager.all().values())
        self._learn_partition_ids(clients)
        clients.sort(key=lambda c: self.pid_of[c.cid])
        n = max(1, min(len(clients), int(round(len(clients) * self.fraction_fit))))
        rng = np.random.default_rng([self.seed, server_round])
        chosen = np.sort(rng.choice(len(clients), size=n, replace=False))
        return [clients[i] for i in chosen]

    def client_config(self, server_round: int, pid: int) -> dict[str, Scalar]:
        return {
            "server_round": server_round,
            "layout": self.layout.fingerprint,
            "replace": True,
            "adopt_global_predictor": True,
            # resume: clients with no state in memory look for their saved state <= this round
            "resume_round": self.round_offset,
            "checkpoint_every": self.checkpoint_every,
            "last_checkpoint": self.last_checkpoint,
        }

    def sends_weights_to(self, pid: int) -> bool:
        return True

    def configure_fit(self, server_round: int, parameters: Parameters, client_manager: ClientManager):
        server_round += self.round_offset
        self._round_start = time.perf_counter()
        chosen = self.sample_clients(server_round, client_manager)
        empty = Parameters(tensors=[], tensor_type="numpy.ndarray")
        instructions, sent = [], 0
        for c in chosen:
            pid = self.pid_of[c.cid]
            params = parameters if self.sends_weights_to(pid) else empty
            sent += sum(len(t) for t in params.tensors)
            instructions.append((_TrackedClient(c, pid), FitIns(params, self.client_config(server_round, pid))))
        self.record = {
            "round": server_round,
            "selected": sorted(self.pid_of[c.cid] for c in chosen),
            "bytes_sent": sent,
            "clients": {},
            "failures": [],
            "rejected": [],
        }
        return instructions

    def configure_evaluate(self, server_round, parameters, client_manager):
        return []  # representations are evaluated centrally (SPEC §4)

    # ---------------------------------------------------------------- aggregation
    def _collect(self, server_round: int, results, failures) -> list[tuple[int, NDArrays, int, dict]]:
        """Valid updates sorted by partition id; failures and rejections recorded."""
        rec = self.record
        rec["bytes_received"] = sum(sum(len(t) for t in r.parameters.tensors) for _, r in results)
        for f in failures:
            pid = f.partition_id if isinstance(f, ClientFailed) else (
                self.pid_of.get(f[0].cid) if isinstance(f, tuple) else None)
            rec["failures"].append({"partition_id": pid, "round": server_round, "error": _error_text(f)})
            log(WARNING, "round %s: client %s failed: %s", server_round, pid, _error_text(f))
        updates = []
        for proxy, res in results:
            metrics = dict(res.metrics)
            pid = int(metrics.get("partition_id", self.pid_of.get(proxy.cid, -1)))
            self.pid_of[proxy.cid] = pid
            if "fatal_error" in metrics:
                raise RunStopped(str(metrics["fatal_error"]))
            arrays = parameters_to_ndarrays(res.parameters)
            why = self.layout.check(arrays)
            if why is None and self.norm_bound is not None:
                norm = float(np.sqrt(sum(float(np.sum(a.astype(np.float64) ** 2)) for a in arrays)))
                if norm > self.norm_bound:
                    why = f"update norm {norm:.4g} exceeds norm_bound {self.norm_bound}"
            if why is None and res.num_examples <= 0:
                why = f"num_examples = {res.num_examples}"
            if why is not None:
                rec["rejected"].append({"partition_id": pid, "round": server_round, "reason": why})
                log(WARNING, "round %s: update of client %s rejected: %s", server_round, pid, why)
                continue
            updates.append((pid, arrays, res.num_examples, metrics))
            self.participated.add(pid)
        updates.sort(key=lambda u: u[0])
        for pid, _, n, metrics in updates:
            rec["clients"][str(pid)] = {
                "loss": float(metrics.get("loss", float("nan"))),
                "num_examples": int(n),
                "train_seconds": float(metrics.get("train_seconds", 0.0)),
                "images_per_second": float(metrics.get("images_per_second", 0.0)),
            }
        if len(updates) < max(1, self.min_fit_clients):
            errors = "; ".join(f"client {f['partition_id']}: {f['error']}" for f in rec["failures"])
            errors += "; ".join(f"client {r['partition_id']}: {r['reason']}" for r in rec["rejected"])
            raise RunStopped(
                f"round {server_round}: only {len(updates)} valid updates, min_fit_clients is "
                f"{self.min_fit_clients} ({errors or 'no client answered'})"
            )
        losses = [(float(m.get("loss", np.nan)), n) for _, _, n, m in updates]
        rec["train_loss"] = float(sum(l * n for l, n in losses) / sum(n for _, n in losses))
        return updates

    def aggregate_updates(self, server_round: int, updates) -> NDArrays:
        return weighted_average([u[1] for u in updates], [u[2] for u in updates])

    def aggregate_fit(self, server_round: int, results: list[tuple[ClientProxy, FitRes]], failures):
        server_round += self.round_offset
        try:
            updates = self._collect(server_round, results, failures)
            aggregated = self.aggregate_updates(server_round, updates)
        except RunStopped as err:
            self.record["fatal_error"] = str(err)
            self.hooks.report(self.record)
            raise
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
            server_round > 0 and self.eval_every > 0 and server_round % self.eval_every == 0
        )
        record = self.record if server_round > 0 else {"round": 0}
        persist = server_round > 0 and (
            final or (self.checkpoint_every > 0 and server_round % self.checkpoint_every == 0))
        arrays = parameters_to_ndarrays(parameters) if (due or persist) else []  # deserialised once
        if due:
            t0 = time.perf_counter()
            record["eval"] = self.hooks.evaluate(server_round, self.models_to_evaluate(arrays), final)
            record["eval_seconds"] = time.perf_counter() - t0
        if final:
            record["checkpoint"] = self.hooks.save_checkpoint(self.models_to_evaluate(arrays), server_round)
        if server_round > 0:
            record["wall_seconds"] = time.perf_counter() - self._round_start
        if server_round > 0 or due:
            self.hooks.report(record)
        if persist:
            self.hooks.save_state(server_round, arrays, self.state_dict())
            self.last_checkpoint = server_round
        if due:
            return 0.0, {k: v for k, v in record["eval"].items() if isinstance(v, (int, float))}
        return None


class FedU(FedSSL):
    """FedU (SPEC §2): FedSSL plus per-client divergence and the predictor decision.

    predictor: "dapu" (FedU), "global" (FedBYOL), "local" (ablation: never adopt).
    divergence: "paper" computes d_k = distance(client k's upload, new aggregate) here at
    aggregation time, keeping one scalar per client; "reference" uses the distance between
    the client's online encoder before and after its local training, reported by the client.
    """

    def __init__(self, *, predictor: str = "dapu", mu: float = 0.4, divergence: str = "paper", **kwargs):
        self.divergence: dict[int, float] = {}  # last divergence per partition id
        self.adopt_global: dict[int, bool] = {}  # decision for the client's next participation
        super().__init__(**kwargs)
        if predictor not in ("dapu", "global", "local"):
            raise ValueError(f"unknown predictor mode '{predictor}'; valid: ['dapu', 'global', 'local']")
        if divergence not in ("paper", "reference"):
            raise ValueError(f"unknown divergence form '{divergence}'; valid: ['paper', 'reference']")
        if mu < 0:
            raise ValueError(f"mu must be >= 0, got {mu}")
        if not self.layout.divergence_layers:
            raise ValueError("FedU needs backbone conv layers in the uploaded parts to measure divergence")
        self.predictor_mode, self.mu, self.divergence_form = predictor, mu, divergence

    @classmethod
    def client_rules(cls, strategy_cfg: dict) -> ClientRules:
        return ClientRules(keep_optional=strategy_cfg.get("predictor", "dapu") != "global")

    def state_dict(self) -> dict:
        return {**super().state_dict(), "divergence": dict(self.divergence), "adopt_global": dict(self.adopt_global)}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.divergence = {int(k): float(v) for k, v in state["divergence"].items()}
        self.adopt_global = {int(k): bool(v) for k, v in state["adopt_global"].items()}

    def client_config(self, server_round: int, pid: int) -> dict[str, Scalar]:
        config = super().client_config(server_round, pid)
        # a client never seen keeps no local predictor yet, so it takes the global one
        config["adopt_global_predictor"] = self.adopt_global.get(pid, True)
        return config

    def decide(self, divergence: float) -> bool:
        if self.predictor_mode == "global":
            return True
        if self.predictor_mode == "local":
            return False
        return dapu_adopts_global(divergence, self.mu)

    def aggregate_updates(self, server_round: int, updates) -> NDArrays:
        aggregated = super().aggregate_updates(server_round, updates)
        for pid, arrays, _, metrics in updates:
            if self.divergence_form == "paper":
                d = layer_divergence(arrays, aggregated, self.layout.divergence_layers)
            else:
                d = float(metrics["divergence_reference"])
            self.divergence[pid] = d
            self.adopt_global[pid] = self.decide(d)
            entry = self.record["clients"][str(pid)]
            entry["divergence"] = d
            entry["predictor_next"] = "global" if self.adopt_global[pid] else "local"
            entry["predictor_used"] = str(metrics.get("predictor_used", ""))
        return aggregated


class Standalone(FedSSL):
    """Lower bound: every client trains alone; nothing is aggregated (SPEC §2 baselines).

    The server sends the initial model to a client only on its first participation, keeps the
    latest upload of every client, and evaluates each client's own model (SPEC §4).
    """

    def __init__(self, **kwargs):
        self.latest: dict[int, NDArrays] = {}
        super().__init__(**kwargs)
        self.initial_arrays = [a.copy() for a in kwargs["initial_arrays"]]

    @classmethod
    def client_rules(cls, strategy_cfg: dict) -> ClientRules:
        return ClientRules(keep_everything=True)

    def state_dict(self) -> dict:
        return {**super().state_dict(), "latest": {pid: arrays for pid, arrays in self.latest.items()}}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.latest = {int(pid): [np.asarray(a) for a in arrays] for pid, arrays in state["latest"].items()}

    def client_config(self, server_round: int, pid: int) -> dict[str, Scalar]:
        config = super().client_config(server_round, pid)
        config["replace"] = pid not in self.participated
        return config

    def sends_weights_to(self, pid: int) -> bool:
        return pid not in self.participated

    def aggregate_updates(self, server_round: int, updates) -> NDArrays:
        for pid, arrays, _, _ in updates:
            self.latest[pid] = arrays
        return self.initial_arrays  # what a client joining later starts from

    def models_to_evaluate(self, global_arrays: NDArrays) -> dict[str, NDArrays]:
        if not self.latest:
            return super().models_to_evaluate(global_arrays)
        return {str(pid): arrays for pid, arrays in sorted(self.latest.items())}


class FedEMA(FedSSL):
    """FedEMA (SPEC §3): FedU's synchronisation; each client mixes local and global models
    itself (tasks/fedema.py). The server averages as FedAvg and records every client's
    divergence d_k, lambda_k and mu_k (or that it was reset after skipping rounds)."""

    @classmethod
    def client_rules(cls, strategy_cfg: dict) -> ClientRules:
        return ClientRules(mix_global=True, keep_everything=True)

    def aggregate_updates(self, server_round: int, updates) -> NDArrays:
        aggregated = super().aggregate_updates(server_round, updates)
        for pid, _, _, metrics in updates:
            entry = self.record["clients"][str(pid)]
            for key in ("divergence", "lambda", "mu"):
                if f"ema_{key}" in metrics:
                    entry[key] = float(metrics[f"ema_{key}"])
            entry["mixing"] = str(metrics.get("ema_mixing", "mixed" if "ema_mu" in metrics else "first"))
        return aggregated
