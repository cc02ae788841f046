"""A chaos soak of a real deployment on loopback (issue 17): SuperNodes killed and restarted at
random, the server side killed once and resumed, and at the end a check that nothing was lost.

    python benchmarks/deployment_chaos.py [--nodes 4] [--rounds 20] [--seed 0] [overrides ...]

A smoke-preset FedU federation (SuperLink + N SuperNodes, TLS and SuperNode authentication, each
node with its own state dir) runs R rounds with `audit_updates=true`. A driver, seeded by --seed:
- every --kill-every rounds kills a random SuperNode with SIGKILL (node and ClientApp, at a random
  moment of the round) and starts it again after a random --down time, with the same key,
  partition and state dir;
- once, after the checkpoint of round --server-kill (default R/2), kills the SuperLink and its
  ServerApp, starts the SuperLink again and resumes the run through `flwr run` (resume=);
- in the first round after that resume (--resume-kill), kills a random SuperNode as soon as the
  resumed server first reaches it: as it is asked which partition it serves (`contact`, the
  default) or once it trains (`train`); `none` leaves that round to the --kill-every schedule;
- makes one random client send a non-finite update once (it must be rejected, and named).
At the end it prints rounds completed, updates aggregated and rejected, node failures by round,
what the driver did, and the audit (app/audit.py): each round's global model recomputed from the
updates it accepted, the final checkpoint against the last one, and no client restarted blank.
Its last line is `lost: 0` when nothing was lost (the count of problems otherwise); exit status 1
when something was lost or the run did not complete. Bounded by --timeout (seconds).
Writes table.md and table.json into --out (default benchmarks/results/deployment_chaos).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from app.audit import check  # noqa: E402
from ops.local_federation import RoundLines, composed  # noqa: E402
from ops.loopback import FederationError, LocalFederation  # noqa: E402
from tasks.common.checkpoint import load_file  # noqa: E402


# what a SuperNode's log says when a message of the phase reaches it (Flower's "Receiving: <type> message")
RESUME_KILL = {"contact": "Receiving: get_properties message", "train": "Receiving: train message", "none": None}


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("overrides", nargs="*", help="Hydra overrides on top of the soak's (e.g. strategy=fedbyol)")
    p.add_argument("--nodes", type=int, default=4)
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--seed", type=int, default=0, help="the driver's choices (which node, when, how long)")
    p.add_argument("--kill-every", type=int, default=3, help="kill a random SuperNode every N rounds")
    p.add_argument("--down", type=float, nargs=2, default=(5.0, 40.0), metavar=("MIN", "MAX"),
                   help="seconds a killed SuperNode stays down")
    p.add_argument("--server-kill", type=int, default=None, help="kill the server after this round (default R/2; 0: never)")
    p.add_argument("--resume-kill", choices=sorted(RESUME_KILL), default="contact",
                   help="kill a SuperNode in the first round after the resume: when the server asks its partition "
                        "(contact), once it trains (train), or not (none)")
    p.add_argument("--timeout", type=float, default=3600, help="seconds for the whole soak")
    p.add_argument("--workdir", type=Path, default=None, help="default: outputs/deployment-chaos/<time>")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "deployment_chaos")
    args = p.parse_args(argv)
    if args.nodes < 2 or args.rounds < 2:
        p.error("--nodes and --rounds must be >= 2 (a round goes on with the nodes that are up)")
    if args.server_kill is None:
        args.server_kill = args.rounds // 2
    return args


class Soak:
    """The federation, the driver's schedule and its log of what it did."""

    def __init__(self, args):
        self.args, self.rng = args, random.Random(args.seed)
        self.workdir = (args.workdir or ROOT / "outputs" / "deployment-chaos" / time.strftime("%Y%m%d-%H%M%S")).resolve()
        self.run_dir = self.workdir / "run"
        self.t0 = time.monotonic()
        self.events: list[dict] = []
        self.down: dict[str, float] = {}  # node -> when to start it again
        self.resume_victim: tuple[str, int] | None = None  # (node, its log's size at the resume) for --resume-kill
        self.resumed_run = ""

    def note(self, what: str, **info) -> None:
        event = {"t": round(time.monotonic() - self.t0, 1), "what": what, **info}
        self.events.append(event)
        print(f"[{event['t']:7.1f} s] {what} {json.dumps(info) if info else ''}", flush=True)

    def rounds_done(self) -> int:
        try:
            return len(json.loads((self.run_dir / "summary.json").read_text()).get("rounds", []))
        except (OSError, ValueError):
            return 0

    def saved_round(self) -> int:
        path = self.run_dir / "state" / "server.pt"
        try:
            return int(load_file(path)["round"]) if path.is_file() else 0
        except Exception:  # noqa: BLE001 - being replaced as it is read
            return 0

    def overrides(self, data_dir: str) -> list[str]:
        bad_pid, bad_round = self.rng.randrange(self.args.nodes), self.rng.randint(2, self.args.rounds)
        return ["experiment=smoke", "strategy=fedu", f"num_rounds={self.args.rounds}", f"num_clients={self.args.nodes}",
                "checkpoint_every=1", "audit_updates=true", f"output_dir={self.run_dir}", f"data_dir={data_dir}",
                f"faults.nan_update=[[{bad_pid},{bad_round}]]", *self.args.overrides]

    def restart_due(self, fed: LocalFederation) -> None:
        for name, when in list(self.down.items()):
            if time.monotonic() >= when:
                fed.restart(name)
                del self.down[name]
                self.note("restarted", node=name, round=self.rounds_done() + 1)

    def kill_node(self, fed: LocalFederation) -> None:
        up = [n for n in fed.nodes if n not in self.down]
        if len(up) <= 1:
            return  # keep one node up: a round needs min_fit_clients
        name = self.rng.choice(up)
        time.sleep(self.rng.uniform(0, 4))  # somewhere in the round
        code = fed.kill(name)
        self.down[name] = time.monotonic() + self.rng.uniform(*self.args.down)
        self.note("killed", node=name, round=self.rounds_done() + 1, exit_code=code)

    def kill_server(self, fed: LocalFederation, overrides: list[str]) -> str:
        fed.kill("superlink")
        self.note("killed server", after_checkpoint_of_round=self.saved_round())
        fed.restart("superlink")
        while self.down:  # a resumed run's first round waits for every client
            self.restart_due(fed)
            time.sleep(0.5)
        fed.wait_for_nodes(self.args.nodes, timeout=300, watch=["superlink"])
        if RESUME_KILL[self.args.resume_kill]:  # chosen before the resumed server can reach it
            name = self.rng.choice(sorted(fed.nodes))
            self.resume_victim = (name, (fed.logs / f"{name}.log").stat().st_size)
        run_id = fed.submit([o for o in overrides if not o.startswith("output_dir=")] + [f"resume={self.run_dir}"])
        self.note("resumed", from_round=self.saved_round(), run_id=run_id)
        self.resumed_run = str(run_id)
        return run_id

    def kill_after_resume(self, fed: LocalFederation) -> None:
        """--resume-kill: the chosen node is killed once the resumed server's first message of the
        phase reaches it (its partition asked, or its first training), in the resumed run's first round."""
        name, start = self.resume_victim
        seen = (fed.logs / f"{name}.log").read_bytes()[start:].decode(errors="replace")
        if self.args.resume_kill == "train":  # the resumed run's (a late message of the killed one's is not)
            seen = seen.partition(f"[RUN {self.resumed_run}, ROUND 1]")[2]
        if RESUME_KILL[self.args.resume_kill] not in seen:
            return
        if self.args.resume_kill == "train":
            time.sleep(self.rng.uniform(0, 4))  # somewhere in its training
        code = fed.kill(name)
        self.down[name] = time.monotonic() + self.rng.uniform(*self.args.down)
        self.resume_victim = None
        self.note("killed", node=name, round=self.rounds_done() + 1, exit_code=code, after_resume=self.args.resume_kill)

    def run(self) -> dict:
        args = self.args
        data_dir = str(Path(args.data_dir or composed(["experiment=smoke"])["data_dir"]).expanduser().resolve())
        overrides = self.overrides(data_dir)
        cfg = composed(overrides)  # a typo fails here
        status = "not started"
        with LocalFederation(self.workdir) as fed:
            fed.start_superlink()
            for i in range(args.nodes):
                fed.start_supernode(f"supernode-{i}", {"partition-id": i, "num-partitions": args.nodes,
                                                       "data-dir": data_dir, "state-dir": str(self.workdir / "client_state")})
            fed.wait_for_nodes(args.nodes, timeout=300)
            run_id = fed.submit(overrides)
            self.note("submitted", run_id=run_id, overrides=overrides)
            lines, next_kill, server_killed = RoundLines(cfg), args.kill_every, args.server_kill <= 0
            deadline = self.t0 + args.timeout
            try:
                while time.monotonic() < deadline:
                    lines.print_new()
                    self.restart_due(fed)
                    done = self.rounds_done()
                    if not server_killed and self.saved_round() >= args.server_kill and done < args.rounds:
                        run_id, server_killed = self.kill_server(fed, overrides), True
                        if self.resume_victim:  # that round's kill is the resume kill
                            next_kill = max(next_kill, self.rounds_done() + args.kill_every)
                        continue
                    if self.resume_victim:
                        self.kill_after_resume(fed)
                    if done >= next_kill and done < args.rounds - 1:
                        next_kill = done + args.kill_every
                        self.kill_node(fed)
                    status = str(fed.status(run_id)["status"])
                    if status.startswith("finished"):
                        break
                    if fed.procs["superlink"].poll() is not None:
                        raise fed.exited("superlink")
                    time.sleep(1)
                else:
                    status = f"timed out after {args.timeout:.0f} s ({status})"
            except FederationError as err:
                status = f"error: {err}"
            lines.print_new()
        return {"status": status, "wall_seconds": round(time.monotonic() - self.t0, 1)}


AFTER_RESUME = {"contact": "as the server asked its partition", "train": "as it trained"}


def table(args, result: dict, summary: dict, audit) -> str:
    failures = [f for r in summary.get("rounds", []) for f in r["failures"]]
    rejected = [x for r in summary.get("rounds", []) for x in r["rejected"]]
    restored = sorted((r["round"], int(pid), c["state"]) for r in summary.get("rounds", [])
                      for pid, c in r["clients"].items() if str(c.get("state", "")).startswith("restored"))
    kills = [e for e in result["events"] if e["what"] == "killed"]
    lines = [f"Deployment chaos soak: {args.nodes} SuperNodes, {args.rounds} rounds, seed {args.seed}, "
             f"smoke preset, FedU, TLS + SuperNode authentication (commit {result['commit']})", "",
             "| | |", "|---|---|",
             f"| run | {result['status']}; summary.json: {summary.get('status', 'missing')} |",
             f"| rounds completed | {len(summary.get('rounds', []))} of {args.rounds} |",
             f"| updates aggregated | {audit.aggregated} |",
             f"| updates rejected | {audit.rejected}: " + "; ".join(
                 f"round {x['round']} client {x['partition_id']} ({x['reason']})" for x in rejected) + " |",
             f"| SuperNodes killed (SIGKILL) and restarted | {len(kills)}: " + ", ".join(
                 f"{e['node']} in round {e['round']}" + (
                     f" (the first after the resume, {AFTER_RESUME[e['after_resume']]})" if e.get("after_resume") else "")
                 for e in kills) + " |",
             "| server killed and resumed | " + ", ".join(
                 f"from round {e['from_round']}" for e in result["events"] if e["what"] == "resumed") + " |",
             f"| clients that continued from their saved state | {len(restored)}: " + ", ".join(
                 f"client {p} in round {r} ({s})" for r, p, s in restored) + " |",
             f"| wall time | {result['wall_seconds']:.0f} s |", "",
             "Node failures by round:", "", "| round | client | error |", "|---|---|---|"]
    lines += [f"| {f['round']} | {f['partition_id']} | {f['error']} |" for f in failures] or ["| - | - | none |"]
    lines += ["", f"The final model equals the one the surviving updates imply: {'yes' if audit.models_match else 'NO'}. "
              "Audit (each round's global model recomputed from the updates it accepted, the final checkpoint "
              "against the last round, the summary's clients, no blank restarts): "
              + ("no problem." if not audit.problems else "; ".join(audit.problems)), ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    from tables import commit

    args = parse(argv)
    soak = Soak(args)
    result = soak.run()
    result.update(events=soak.events, commit=commit())
    summary_path = soak.run_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    audit = check(soak.run_dir) if summary else None
    if audit is None:
        from app.audit import AuditReport
        audit = AuditReport(problems=["no summary.json: the run never started"])
    ok = result["status"] == "finished:completed" and summary.get("status") == "completed"
    if not ok and audit.lost == 0:
        audit.problems.append(f"the run did not complete ({result['status']})")
    text = table(args, result, summary, audit)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "table.md").write_text(text)
    (args.out / "table.json").write_text(json.dumps(
        {"settings": {k: str(v) for k, v in vars(args).items()}, **result, "audit": vars(audit) | {"lost": audit.lost},
         "failures": [f for r in summary.get("rounds", []) for f in r["failures"]]}, indent=2))
    print(f"written: {args.out}/table.md, table.json; run: {soak.run_dir}")
    print(f"lost: {audit.lost}")
    return 0 if audit.lost == 0 and ok else 1


if __name__ == "__main__":
    sys.exit(main())
