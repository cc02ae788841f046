"""A real federation on this machine in one command (issue 4, part 2).

    python -m ops.local_federation --nodes 2 experiment=smoke strategy=fedu

starts a SuperLink and N SuperNodes on 127.0.0.1 (TLS with a fresh development CA and
SuperNode authentication with registered EC keys, unless --insecure), waits until every
SuperNode is online, submits the experiment with `flwr run` (the Hydra overrides travel in the
run config), follows it, reports whether it completed (`flwr run` exits 0 even when a run
fails, so the status comes from `flwr list`), and stops every process it started, also on
failure or Ctrl-C. Exit status 0 only when the run finished as completed and summary.json says so.

Everything lands in --workdir (default outputs/local-federation/<time>): certs/, keys/,
flwr-home/ (its own FLWR_HOME, so ~/.flwr is not touched), logs/, client_state/ (each
SuperNode's state dir) and run/ (summary.json, checkpoint). SuperNode i serves partition i of the
public dataset, or its own images with --local-data i=<.npz or folder>.

While the run goes on it prints one line per finished round. A SuperNode that exits (killed, a
crash) does not stop the run: the round goes on with the others, the node's loss is recorded in
summary.json, and with --restart-after S the node is started again after S seconds with its state
dir, from which it continues (issue 17). `resume=<workdir>/run` (the same --workdir, by default
the run's parent folder) continues a run whose server was stopped, from its last checkpoint.
"""

from __future__ import annotations

import argparse
import json
import shlex
import signal
import sys
import time
from pathlib import Path

from ops.loopback import ROOT, FederationError, LocalFederation


class RoundLines:
    """One line per finished round, from the run's summary.json (the simulation's per-round line)."""

    def __init__(self, cfg: dict):
        from app.federation import summary_schema

        self.path, self.num_rounds = Path(cfg["output_dir"]) / "summary.json", cfg["num_rounds"]
        self.schema = summary_schema(cfg)
        self.printed = max((r["round"] for r in self._rounds()), default=0)  # a resumed run's earlier rounds

    def _rounds(self) -> list[dict]:
        try:
            return json.loads(self.path.read_text()).get("rounds", [])
        except (OSError, ValueError):  # not written yet, or being replaced
            return []

    def print_new(self) -> None:
        for record in self._rounds():
            if record["round"] > self.printed:
                self.printed = record["round"]
                print(self.schema.progress_line(record, self.num_rounds), flush=True)
                for line in problem_lines(record):
                    print(line, flush=True)


def problem_lines(record: dict) -> list[str]:
    """A round's lost or failed clients and rejected updates, each with its reason (summary.json's)."""
    def who(entry: dict) -> str:
        node = f" (node {entry['node']})" if entry.get("node") else ""
        return f"client {entry.get('partition_id')}{node}"

    return ([f"  round {record['round']}: {who(f)} failed: {f.get('error')}" for f in record.get("failures") or []]
            + [f"  round {record['round']}: {who(r)}'s update rejected: {r.get('reason')}"
               for r in record.get("rejected") or []])


def _parse_local_data(items: list[str], nodes: int) -> dict[int, str]:
    out = {}
    for item in items:
        pid, sep, path = item.partition("=")
        if not sep or not pid.isdigit() or not 0 <= int(pid) < nodes:
            raise SystemExit(f"error: --local-data {item!r}: expected <partition id 0..{nodes - 1}>=<path>")
        out[int(pid)] = str(Path(path).expanduser().resolve())
    return out


def composed(overrides: list[str]) -> dict:
    """The config the ServerApp will run: a fresh one, or the saved run's for `resume=`."""
    from app.config import compose, to_plain
    from app.resume import run_config

    def fresh(o):
        cfg = to_plain(compose(o, deployed=True))  # as the ServerApp composes it
        return cfg, cfg["output_dir"]

    return run_config(overrides, fresh)[0]


def run_experiment(args) -> int:
    from app.config import ConfigError, override_value
    from tasks.common.checkpoint import CheckpointError

    overrides = list(args.overrides)
    keys = {o.split("=", 1)[0].lstrip("+") for o in overrides}
    if "num_clients" in keys:
        raise SystemExit("error: the number of clients is the number of SuperNodes here; use --nodes, not num_clients=")
    resume = override_value(overrides, "resume")
    default = Path(resume).parent if resume else ROOT / "outputs" / "local-federation" / time.strftime("%Y%m%d-%H%M%S")
    workdir = Path(args.workdir or default).resolve()  # resumed: where the nodes' state dirs are
    overrides.append(f"num_clients={args.nodes}")
    if "output_dir" not in keys:
        overrides.append(f"output_dir={workdir / 'run'}")
    try:  # a typo, or a resume= that cannot be resumed, fails here, before any process starts
        cfg = composed(overrides)
    except (ConfigError, CheckpointError) as err:
        raise SystemExit(f"error: {err}") from None
    data_dir = str(Path(args.data_dir or cfg["data_dir"]).expanduser().resolve())
    if "data_dir" not in keys:
        overrides.append(f"data_dir={data_dir}")
    local_data = _parse_local_data(args.local_data, args.nodes)

    print(f"local federation in {workdir} ({'insecure' if args.insecure else 'TLS + SuperNode authentication'})")
    t0 = time.perf_counter()
    with LocalFederation(workdir, secure=not args.insecure, port=args.port) as fed:
        try:
            fed.start_superlink()
            print(f"SuperLink on 127.0.0.1:{fed.port} (log: {fed.logs / 'superlink.log'})")
            for i in range(args.nodes):
                node = {"partition-id": i, "num-partitions": args.nodes, "data-dir": data_dir,
                        "state-dir": str(workdir / "client_state")}
                if i in local_data:
                    node["local-data"] = local_data[i]
                fed.start_supernode(f"supernode-{i}", node)
            fed.wait_for_nodes(args.nodes)
            print(f"{args.nodes} SuperNodes online after {time.perf_counter() - t0:.1f} s; submitting: "
                  f"{shlex.join(overrides)}")
            rounds = RoundLines(cfg)
            run_id = fed.submit(overrides)
            seen = {"status": None}
            down: dict[str, float] = {}

            def show(run):
                rounds.print_new()  # before the status: a finished run's last round comes first
                if run["status"] != seen["status"]:
                    seen["status"] = run["status"]
                    print(f"run {run_id}: {run['status']} ({run.get('elapsed', 0):.0f} s)", flush=True)
                for name, since in list(down.items()):
                    if time.monotonic() - since >= args.restart_after:
                        fed.restart(name)
                        del down[name]
                        print(f"{name} restarted (same partition and state dir)", flush=True)

            def node_exited(name, code):
                what = (f"restarting it in {args.restart_after:.0f} s" if args.restart_after >= 0 else
                        "not restarted (--restart-after to restart exited SuperNodes)")
                print(f"warning: {name} exited with code {code}; the run goes on with the other SuperNodes, "
                      f"{what}; log: {fed.logs / (name + '.log')}", file=sys.stderr, flush=True)
                if args.restart_after >= 0:
                    down[name] = time.monotonic()

            run = fed.wait_for_run(run_id, args.timeout, on_poll=show, on_node_exit=node_exited)
            rounds.print_new()
        except FederationError as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
    summary_path = Path(cfg["output_dir"]) / "summary.json"  # composed with the output_dir the run got
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    ok = run["status"] == "finished:completed" and summary.get("status") == "completed"
    print(f"run {run_id}: {run['status']}; summary.json: {summary.get('status', 'missing')} ({summary_path}); "
          f"{run.get('network-traffic', {}).get('total-bytes', 0) / 1e6:.1f} MB over the network, "
          f"{time.perf_counter() - t0:.0f} s in all")
    if not ok:
        print(f"the run did not complete: {summary.get('error') or run.get('status-details')}; "
              f"logs: {workdir / 'logs'}", file=sys.stderr)
    return 0 if ok else 1


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("overrides", nargs="*", help="Hydra overrides, as for main.py (e.g. experiment=smoke)")
    p.add_argument("--nodes", type=int, default=2, help="number of SuperNodes (= num_clients)")
    p.add_argument("--workdir", type=Path, help="default: outputs/local-federation/<time>")
    p.add_argument("--insecure", action="store_true", help="no TLS, no SuperNode authentication (debugging only)")
    p.add_argument("--data-dir", help="public dataset folder for the SuperNodes and the server (default: data_dir)")
    p.add_argument("--local-data", action="append", default=[], metavar="PID=PATH",
                   help="SuperNode PID trains on its own images (.npz or folder) instead of its partition")
    p.add_argument("--port", type=int, help="SuperLink port (default: a free one)")
    p.add_argument("--timeout", type=float, default=24 * 3600, help="seconds to wait for the run")
    p.add_argument("--restart-after", type=float, default=-1, metavar="SECONDS",
                   help="restart a SuperNode that exited after this many seconds, as a site that reboots "
                        "(default: leave it down; the run goes on with the others)")
    args = p.parse_args(argv)
    if args.nodes < 1:
        p.error("--nodes must be >= 1")
    return args


def main(argv=None) -> int:
    args = parse(argv)

    def terminate(signum, frame):  # `kill` of this script still stops the federation it started
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, terminate)
    return run_experiment(args)


if __name__ == "__main__":
    sys.exit(main())
