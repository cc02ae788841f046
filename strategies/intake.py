"""Who the clients are and what the server takes from them: a part every strategy owns (`Intake`).

It binds each node to the partition it serves (strategies/trust.IdentityBook), says why a chosen
partition takes no part in a round, and screens every answer (strategies/trust.py): bad ones are
rejected and recorded, a client's fatal error retires it, and the round is stopped only when too few
valid updates remain. What it learns about clients (bindings, retirements, who took part) is part
of the federation's saved state."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Mapping, Sequence
from logging import WARNING

import numpy as np
from flwr.common import FitRes, GetPropertiesIns, log, parameters_to_ndarrays
from flwr.server.client_proxy import ClientProxy

from protocol.hooks import RunStopped
from protocol.layout import Layout
from protocol.messages import grouped
from protocol.transfer import decode
from protocol.weights import NDArrays
from strategies.failures import NODE_LOST, NOT_CONNECTED, error_text, failed_partition
from strategies.trust import ExampleLimits, IdentityBook, arrays_problem, is_int, metrics_problem


class Intake:
    """The server's view of its clients for one strategy: bindings, retirements, participation, and the
    screening of every answer. `record` is the round's record (strategies/round_book.py) it writes into."""

    def __init__(self, *, num_clients: int, layout: Layout, limits: ExampleLimits, transfer_dtype: str,
                 min_fit_clients: int, norm_bound: float | None, pool_clients: bool, client_timeout: float, hooks):
        self.layout, self.limits, self.transfer_dtype = layout, limits, transfer_dtype
        self.min_fit_clients, self.norm_bound, self.pool_clients = min_fit_clients, norm_bound, pool_clients
        self.client_timeout, self.hooks = float(client_timeout), hooks  # hooks.audit: every update kept (app/audit.py)
        self.identity = IdentityBook(num_clients)
        self.retired: dict[int, str] = {}  # partition id -> the fatal error that ended its participation
        self.identity_notes: list[dict] = []  # refusals and re-bindings seen while sampling, for the round's record
        self.pid_of: dict[str, int] = {}  # Flower node id -> partition id
        self.participated: set[int] = set()
        self.absent: list[int] = []  # chosen this round, but not connected

    def state(self) -> dict:
        """What the intake remembers across rounds (node ids are not kept: they change when a federation restarts)."""
        return {"participated": sorted(self.participated), "identity": self.identity.state(),
                "retired": {str(p): e for p, e in sorted(self.retired.items())}}

    def load(self, state: dict) -> None:
        self.participated = set(int(p) for p in state["participated"])
        self.identity.load(state.get("identity", {}))
        self.retired = {int(p): str(e) for p, e in state.get("retired", {}).items()}

    def connected(self, clients: dict[str, ClientProxy]) -> dict[int, ClientProxy]:
        """{partition id: proxy} of the connected nodes, new ones asked first which partition they serve. A
        restarted node may be listed twice for a while (its old id until its heartbeat expires): the id
        learned last is the one that is alive."""
        self.learn_partition_ids(list(clients.values()))
        return {pid: clients[cid] for cid, pid in self.pid_of.items() if cid in clients}

    def learn_partition_ids(self, clients: Sequence[ClientProxy]) -> None:
        """Ask new nodes which partition they serve (within client_timeout) and bind it (IdentityBook);
        a node that does not answer, or whose claim is refused, takes no part and is recorded. A node
        lost meanwhile (the SuperLink's Node Unavailable), or a bound node that cannot answer (the first
        contact of every node after a resume), is its partition's failure for the round (`absence`), as
        a loss in any other round: never a reason to stop the run."""
        unknown = [c for c in clients if c.cid not in self.pid_of]
        if not unknown:
            return

        def ask(c: ClientProxy):
            try:
                res = c.get_properties(GetPropertiesIns(config={}), timeout=self.client_timeout, group_id=0)
                return c.cid, dict(res.properties).get("partition_id"), None
            except Exception as err:  # noqa: BLE001 - one node's failure is recorded, not raised
                return c.cid, None, error_text(err)

        with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
            answers = list(pool.map(ask, unknown))
        lost = {cid for cid, _, failed in answers if failed == NODE_LOST}  # gone: its partition may pass on
        connected = {c.cid for c in clients} - lost
        contested = self.identity.contested({cid: claimed for cid, claimed, failed in answers if not failed}, connected)
        for cid, claimed, failed in answers:
            disputed = int(claimed) if not failed and is_int(claimed) and int(claimed) in contested else None
            bound = self.identity.partition_of(cid)
            if failed and (cid in lost or bound is not None):  # recorded by `absence` as its partition's failure
                self.identity_notes.append({"node": cid, "partition_id": bound, "failed": failed if cid in lost else
                                         f"its node {cid} did not say which partition it serves ({failed})"})
                continue
            if failed:
                pid, refused, note = None, f"node {cid} did not say which partition it serves ({failed})", None
            elif disputed is not None:
                pid, refused, note = None, contested[disputed], None
            else:
                pid, refused, note = self.identity.claim(cid, claimed, connected)
            if pid is None:
                self.identity_notes.append({"node": cid, "partition_id": None, "reason": refused,
                                         **({"claimed": disputed} if disputed is not None else {})})
                log(WARNING, "%s", refused)
                continue
            for other in [n for n, p in self.pid_of.items() if p == pid]:
                del self.pid_of[other]  # the partition's earlier node is gone
            if note:
                self.identity_notes.append({"node": cid, "partition_id": pid, "note": note})
            self.pid_of[cid] = pid

    def absence(self, pid: int) -> str:
        """Why partition `pid` takes no part in this round: retired, its node lost (or mute) as the server
        asked it, its claimants refused, a node lost before it said which partition it serves, or no node."""
        if pid in self.retired:
            return f"left the federation: {self.retired[pid]}"
        failed = [n["failed"] for n in self.identity_notes if "failed" in n and n["partition_id"] == pid]
        refused = [n["reason"] for n in self.identity_notes if n.get("claimed") == pid]
        unbound = [n["node"] for n in self.identity_notes if "failed" in n and n["partition_id"] is None]
        if failed or refused:
            return failed[0] if failed else f"no node bound to it ({refused[0]})"
        if unbound and pid not in self.identity.node_of:
            who = f"node {unbound[0]}" if len(unbound) == 1 else f"nodes {', '.join(unbound)}"
            return f"no node bound to it ({who} lost before saying which partition it serves)"
        return NOT_CONNECTED

    def note_identity(self, record: dict, server_round: int) -> None:
        """The round's identity refusals (`rejected`) and re-bindings (`identity`) into its record;
        failed contacts are already its absent partitions' failures (`absence`)."""
        for note in self.identity_notes:
            if "failed" not in note:
                (record["rejected"] if "reason" in note else record.setdefault("identity", [])).append(
                    {**note, "round": server_round})
        self.identity_notes = []

    def update_problem(self, pid: int, arrays: NDArrays, num_examples, global_arrays: NDArrays) -> str | None:
        """Why a decoded update cannot be combined, or None: its arrays (strategies/trust.py), its
        example count, and with norm_bound the L2 norm of its change from the global model."""
        why = arrays_problem(arrays, self.layout) or self.limits.problem(pid, num_examples)
        if why is None and self.norm_bound is not None:
            norm = float(np.sqrt(sum(float(np.sum((a.astype(np.float64) - g.astype(np.float64)) ** 2))
                                     for a, g in zip(arrays, global_arrays) if np.issubdtype(a.dtype, np.floating))))
            if norm > self.norm_bound:
                why = f"update norm {norm:.4g} (change from the global model) exceeds norm_bound {self.norm_bound}"
        return why

    def screen(self, server_round: int, proxy: ClientProxy, res: FitRes, global_arrays: NDArrays) -> tuple[int | None, NDArrays, dict, str | None]:
        """(partition id, decoded arrays, metrics, why rejected) of one answer; a fatal error the client
        reported retires it (its participation ends)."""
        pid = self.pid_of.get(proxy.cid)
        metrics = dict(res.metrics) if isinstance(res.metrics, Mapping) else {}
        why = "its node serves no bound partition" if pid is None else metrics_problem(metrics)
        claimed = metrics.get("partition_id", pid)
        if why is None and claimed != pid:
            why = f"reports partition {claimed!r}, but its node serves partition {pid}"
        if why is None and "fatal_error" in metrics:
            self.retired[pid] = f"round {server_round}: {metrics['fatal_error']}"
            return pid, [], metrics, None
        arrays = []
        if why is None:
            try:
                arrays = decode(parameters_to_ndarrays(res.parameters), self.layout.wire_dtypes(), self.transfer_dtype)
                why = self.update_problem(pid, arrays, res.num_examples, global_arrays)
            except Exception as err:  # noqa: BLE001 - an undecodable upload is the client's fault
                why = f"cannot be decoded ({type(err).__name__}: {str(err)[:200]})"
        return pid, arrays, metrics, why

    def collect_updates(self, record: dict, server_round: int, results, failures,
                        global_arrays: NDArrays) -> list[tuple[int, NDArrays, int, dict]]:
        """Valid updates sorted by partition id; failures, retirements and rejections recorded."""
        rec = record
        received = sum(sum(len(t) for t in r.parameters.tensors) for _, r in results)
        rec["bytes_received"] = 0 if self.pool_clients else received
        for f in failures:
            pid = failed_partition(f, self.pid_of)
            rec["failures"].append({"partition_id": pid, "round": server_round, "error": error_text(f)})
            log(WARNING, "round %s: client %s failed: %s", server_round, pid, error_text(f))
        updates, fatal = [], []
        for proxy, res in results:
            pid, arrays, metrics, why = self.screen(server_round, proxy, res, global_arrays)
            res.parameters.tensors.clear()  # decoded: its serialised copy is not needed again (memory at scale)
            if "fatal_error" in metrics and why is None:
                fatal.append(str(metrics["fatal_error"]))
                rec["failures"].append({"partition_id": pid, "round": server_round,
                                        "error": f"left the federation: {metrics['fatal_error']}"})
                log(WARNING, "round %s: client %s left the federation: %s", server_round, pid, metrics["fatal_error"])
                continue
            if self.hooks.audit is not None:
                self.hooks.audit.update(server_round, pid, arrays, res.num_examples, why)
            if why is not None:
                rec["rejected"].append({"partition_id": pid, "node": proxy.cid, "round": server_round, "reason": why})
                log(WARNING, "round %s: update of client %s rejected: %s", server_round, pid, why)
                continue
            updates.append((pid, arrays, int(res.num_examples), metrics))
            self.participated.add(pid)
        updates.sort(key=lambda u: u[0])
        for pid, _, n, metrics in updates:
            rec["clients"][str(pid)] = {
                "loss": float(metrics.get("loss", float("nan"))), "num_examples": int(n),
                "train_seconds": float(metrics.get("train_seconds", 0.0)),
                "images_per_second": float(metrics.get("images_per_second", 0.0)),
                **({"lr": float(metrics["lr"])} if "lr" in metrics else {}),  # the round's (peak) learning rate
                # where its local state came from: kept, restored:<round> (after a restart), new
                **({"state": str(metrics["state"])} if "state" in metrics else {}),
                **{k: metrics[k] for k in self.layout.client_metrics if k in metrics},  # the task's own
            }
        if len(updates) < max(1, self.min_fit_clients):
            errors = grouped([*((f["partition_id"], f["error"]) for f in rec["failures"]),
                              *((r.get("partition_id"), r["reason"]) for r in rec["rejected"])])
            lead = f"{'; '.join(fatal)}: " if fatal else ""  # the clients' own errors say what to change
            raise RunStopped(f"{lead}round {server_round}: only {len(updates)} valid updates, min_fit_clients is "
                             f"{self.min_fit_clients} ({errors or 'no client answered'})")
        losses = [(float(m.get("loss", np.nan)), n) for _, _, n, m in updates]
        rec["train_loss"] = float(sum(l * n for l, n in losses) / sum(n for _, n in losses))
        return updates

    def screen_reports(self, results) -> tuple[dict[int, tuple[int, dict]], list[dict]]:
        """Clients' evaluation reports ({partition id: (test images, figures)}) that pass the checks, and
        the refused ones as evaluation failures (who and why)."""
        reports, refused = {}, []
        for proxy, res in results:
            pid = self.pid_of.get(proxy.cid)
            metrics = dict(res.metrics) if isinstance(res.metrics, Mapping) else {}
            why = "its node serves no bound partition" if pid is None else metrics_problem(metrics)
            if why is None and metrics.get("partition_id", pid) != pid:
                why = f"reports partition {metrics.get('partition_id')!r}, but its node serves partition {pid}"
            n = res.num_examples
            if why is None and (not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 0):
                why = f"num_examples must be an integer >= 0, got {n!r}"
            if why is None and self.limits.per_partition.get(pid) is not None and n > self.limits.per_partition[pid]:
                why = f"num_examples = {n} exceeds the {self.limits.per_partition[pid]} examples this client can hold"
            if why is not None:
                refused.append({"partition_id": pid, "node": proxy.cid, "error": f"report refused: {why}"})
                log(WARNING, "evaluation report of client %s refused: %s", pid, why)
                continue
            reports[pid] = (int(n), metrics)
        return reports, refused
