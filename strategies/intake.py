"""A round's answers as the server takes them in (issue 26): each screened (strategies/trust.py),
bad ones rejected and recorded, a client's fatal error retiring it, and the round stopped only when
too few valid updates remain. Functions of the strategy (`s`, a FedSSL), kept out of its class so
that its file keeps to the round's protocol."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Mapping, Sequence
from logging import WARNING

import numpy as np
from flwr.common import FitRes, GetPropertiesIns, log, parameters_to_ndarrays
from flwr.server.client_proxy import ClientProxy

from protocol.hooks import RunStopped
from protocol.messages import grouped
from protocol.transfer import decode
from protocol.weights import NDArrays
from strategies.failures import NODE_LOST, NOT_CONNECTED, error_text, failed_partition
from strategies.trust import arrays_problem, is_int, metrics_problem


def learn_partition_ids(s, clients: Sequence[ClientProxy]) -> None:
    """Ask new nodes which partition they serve (within client_timeout) and bind it (IdentityBook);
    a node that does not answer, or whose claim is refused, takes no part and is recorded. A node
    lost meanwhile (the SuperLink's Node Unavailable), or a bound node that cannot answer (the first
    contact of every node after a resume), is its partition's failure for the round (`absence`), as
    a loss in any other round: never a reason to stop the run."""
    unknown = [c for c in clients if c.cid not in s.pid_of]
    if not unknown:
        return

    def ask(c: ClientProxy):
        try:
            res = c.get_properties(GetPropertiesIns(config={}), timeout=s.client_timeout, group_id=0)
            return c.cid, dict(res.properties).get("partition_id"), None
        except Exception as err:  # noqa: BLE001 - one node's failure is recorded, not raised
            return c.cid, None, error_text(err)

    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(ask, unknown))
    lost = {cid for cid, _, failed in answers if failed == NODE_LOST}  # gone: its partition may pass on
    connected = {c.cid for c in clients} - lost
    contested = s.identity.contested({cid: claimed for cid, claimed, failed in answers if not failed}, connected)
    for cid, claimed, failed in answers:
        disputed = int(claimed) if not failed and is_int(claimed) and int(claimed) in contested else None
        bound = s.identity.partition_of(cid)
        if failed and (cid in lost or bound is not None):  # recorded by `absence` as its partition's failure
            s.identity_notes.append({"node": cid, "partition_id": bound, "failed": failed if cid in lost else
                                     f"its node {cid} did not say which partition it serves ({failed})"})
            continue
        if failed:
            pid, refused, note = None, f"node {cid} did not say which partition it serves ({failed})", None
        elif disputed is not None:
            pid, refused, note = None, contested[disputed], None
        else:
            pid, refused, note = s.identity.claim(cid, claimed, connected)
        if pid is None:
            s.identity_notes.append({"node": cid, "partition_id": None, "reason": refused,
                                     **({"claimed": disputed} if disputed is not None else {})})
            log(WARNING, "%s", refused)
            continue
        for other in [n for n, p in s.pid_of.items() if p == pid]:
            del s.pid_of[other]  # the partition's earlier node is gone
        if note:
            s.identity_notes.append({"node": cid, "partition_id": pid, "note": note})
        s.pid_of[cid] = pid


def absence(s, pid: int) -> str:
    """Why partition `pid` takes no part in this round: retired, its node lost (or mute) as the server
    asked it, its claimants refused, a node lost before it said which partition it serves, or no node."""
    if pid in s.retired:
        return f"left the federation: {s.retired[pid]}"
    failed = [n["failed"] for n in s.identity_notes if "failed" in n and n["partition_id"] == pid]
    refused = [n["reason"] for n in s.identity_notes if n.get("claimed") == pid]
    unbound = [n["node"] for n in s.identity_notes if "failed" in n and n["partition_id"] is None]
    if failed or refused:
        return failed[0] if failed else f"no node bound to it ({refused[0]})"
    if unbound and pid not in s.identity.node_of:
        who = f"node {unbound[0]}" if len(unbound) == 1 else f"nodes {', '.join(unbound)}"
        return f"no node bound to it ({who} lost before saying which partition it serves)"
    return NOT_CONNECTED


def note_identity(s, server_round: int) -> None:
    """The round's identity refusals (`rejected`) and re-bindings (`identity`) into its record;
    failed contacts are already its absent partitions' failures (`absence`)."""
    for note in s.identity_notes:
        if "failed" not in note:
            (s.record["rejected"] if "reason" in note else s.record.setdefault("identity", [])).append(
                {**note, "round": server_round})
    s.identity_notes = []


def update_problem(s, pid: int, arrays: NDArrays, num_examples) -> str | None:
    """Why a decoded update cannot be combined, or None: its arrays (strategies/trust.py), its
    example count, and with norm_bound the L2 norm of its change from the global model."""
    why = arrays_problem(arrays, s.layout) or s.limits.problem(pid, num_examples)
    if why is None and s.norm_bound is not None:
        norm = float(np.sqrt(sum(float(np.sum((a.astype(np.float64) - g.astype(np.float64)) ** 2))
                                 for a, g in zip(arrays, s.global_arrays) if np.issubdtype(a.dtype, np.floating))))
        if norm > s.norm_bound:
            why = f"update norm {norm:.4g} (change from the global model) exceeds norm_bound {s.norm_bound}"
    return why


def screen(s, server_round: int, proxy: ClientProxy, res: FitRes) -> tuple[int | None, NDArrays, dict, str | None]:
    """(partition id, decoded arrays, metrics, why rejected) of one answer; a fatal error the client
    reported retires it (its participation ends)."""
    pid = s.pid_of.get(proxy.cid)
    metrics = dict(res.metrics) if isinstance(res.metrics, Mapping) else {}
    why = "its node serves no bound partition" if pid is None else metrics_problem(metrics)
    claimed = metrics.get("partition_id", pid)
    if why is None and claimed != pid:
        why = f"reports partition {claimed!r}, but its node serves partition {pid}"
    if why is None and "fatal_error" in metrics:
        s.retired[pid] = f"round {server_round}: {metrics['fatal_error']}"
        return pid, [], metrics, None
    arrays = []
    if why is None:
        try:
            arrays = decode(parameters_to_ndarrays(res.parameters), s.layout.wire_dtypes(), s.transfer_dtype)
            why = update_problem(s, pid, arrays, res.num_examples)
        except Exception as err:  # noqa: BLE001 - an undecodable upload is the client's fault
            why = f"cannot be decoded ({type(err).__name__}: {str(err)[:200]})"
    return pid, arrays, metrics, why


def collect_updates(s, server_round: int, results, failures) -> list[tuple[int, NDArrays, int, dict]]:
    """Valid updates sorted by partition id; failures, retirements and rejections recorded."""
    rec = s.record
    received = sum(sum(len(t) for t in r.parameters.tensors) for _, r in results)
    rec["bytes_received"] = 0 if s.pool_clients else received
    for f in failures:
        pid = failed_partition(f, s.pid_of)
        rec["failures"].append({"partition_id": pid, "round": server_round, "error": error_text(f)})
        log(WARNING, "round %s: client %s failed: %s", server_round, pid, error_text(f))
    updates, fatal = [], []
    for proxy, res in results:
        pid, arrays, metrics, why = screen(s, server_round, proxy, res)
        res.parameters.tensors.clear()  # decoded: its serialised copy is not needed again (memory at scale)
        if "fatal_error" in metrics and why is None:
            fatal.append(str(metrics["fatal_error"]))
            rec["failures"].append({"partition_id": pid, "round": server_round,
                                    "error": f"left the federation: {metrics['fatal_error']}"})
            log(WARNING, "round %s: client %s left the federation: %s", server_round, pid, metrics["fatal_error"])
            continue
        if s.hooks.audit is not None:
            s.hooks.audit.update(server_round, pid, arrays, res.num_examples, why)
        if why is not None:
            rec["rejected"].append({"partition_id": pid, "node": proxy.cid, "round": server_round, "reason": why})
            log(WARNING, "round %s: update of client %s rejected: %s", server_round, pid, why)
            continue
        updates.append((pid, arrays, int(res.num_examples), metrics))
        s.participated.add(pid)
    updates.sort(key=lambda u: u[0])
    for pid, _, n, metrics in updates:
        rec["clients"][str(pid)] = {
            "loss": float(metrics.get("loss", float("nan"))), "num_examples": int(n),
            "train_seconds": float(metrics.get("train_seconds", 0.0)),
            "images_per_second": float(metrics.get("images_per_second", 0.0)),
            **({"lr": float(metrics["lr"])} if "lr" in metrics else {}),  # the round's (peak) learning rate
            # where its local state came from: kept, restored:<round> (after a restart), new
            **({"state": str(metrics["state"])} if "state" in metrics else {}),
            **{k: metrics[k] for k in s.layout.client_metrics if k in metrics},  # the task's own
        }
    if len(updates) < max(1, s.min_fit_clients):
        errors = grouped([*((f["partition_id"], f["error"]) for f in rec["failures"]),
                          *((r.get("partition_id"), r["reason"]) for r in rec["rejected"])])
        lead = f"{'; '.join(fatal)}: " if fatal else ""  # the clients' own errors say what to change
        raise RunStopped(f"{lead}round {server_round}: only {len(updates)} valid updates, min_fit_clients is "
                         f"{s.min_fit_clients} ({errors or 'no client answered'})")
    losses = [(float(m.get("loss", np.nan)), n) for _, _, n, m in updates]
    rec["train_loss"] = float(sum(l * n for l, n in losses) / sum(n for _, n in losses))
    return updates


def screen_reports(s, results) -> tuple[dict[int, tuple[int, dict]], list[dict]]:
    """Clients' evaluation reports ({partition id: (test images, figures)}) that pass the checks, and
    the refused ones as evaluation failures (who and why)."""
    reports, refused = {}, []
    for proxy, res in results:
        pid = s.pid_of.get(proxy.cid)
        metrics = dict(res.metrics) if isinstance(res.metrics, Mapping) else {}
        why = "its node serves no bound partition" if pid is None else metrics_problem(metrics)
        if why is None and metrics.get("partition_id", pid) != pid:
            why = f"reports partition {metrics.get('partition_id')!r}, but its node serves partition {pid}"
        n = res.num_examples
        if why is None and (not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 0):
            why = f"num_examples must be an integer >= 0, got {n!r}"
        if why is None and s.limits.per_partition.get(pid) is not None and n > s.limits.per_partition[pid]:
            why = f"num_examples = {n} exceeds the {s.limits.per_partition[pid]} examples this client can hold"
        if why is not None:
            refused.append({"partition_id": pid, "node": proxy.cid, "error": f"report refused: {why}"})
            log(WARNING, "evaluation report of client %s refused: %s", pid, why)
            continue
        reports[pid] = (int(n), metrics)
    return reports, refused
