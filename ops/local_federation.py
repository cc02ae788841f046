"""A real federation on this machine in one command (issue 4, part 2).

    python -m ops.local_federation --nodes 2 experiment=smoke strategy=fedu

starts a SuperLink and N SuperNodes on 127.0.0.1 (TLS with a fresh development CA and
SuperNode authentication with registered EC keys, unless --insecure), waits until every
SuperNode is online, submits the experiment with `flwr run` (the Hydra overrides travel in the
run config), follows it, reports whether it completed (`flwr run` exits 0 even when a run
fails, so the status comes from `flwr list`), and stops every process it started, also on
failure or Ctrl-C. Exit status 0 only when the run finished as completed and summary.json says so.

Everything lands in --workdir (default outputs/local-federation/<time>): certs/, keys/,
flwr-home/ (its own FLWR_HOME, so ~/.flwr is not touched), logs/ and run/ (summary.json,
checkpoint). SuperNode i serves partition i of the public dataset, or its own images with
--local-data i=<.npz or folder>.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from ops.certificates import make_node_key, make_tls
from ops.processes import free_port, stop_processes

ROOT = Path(__file__).resolve().parents[1]
CONNECTION = "local-federation"
# what flower-supernode prints (Flower exit code 305) when the SuperLink refuses its key
REFUSED = "Failed to activate SuperNode"


class FederationError(RuntimeError):
    """A process did not start or the run did not complete; the message says where to look."""


def _tool(name: str) -> str:
    """The Flower executable from this Python's environment (the one that has our dependencies)."""
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else name


def _toml_string(value: str) -> str:
    return json.dumps(str(value))  # a JSON string is a valid TOML basic string


class LocalFederation:
    """SuperLink + SuperNodes as child processes; `stop()` (or leaving the `with`) ends them all."""

    def __init__(self, workdir: str | Path, *, secure: bool = True, port: int | None = None):
        self.workdir = Path(workdir).resolve()
        self.secure = secure
        self.port = port or free_port()
        self.home = self.workdir / "flwr-home"
        self.logs = self.workdir / "logs"
        self.procs: dict[str, subprocess.Popen] = {}
        self.tls: dict[str, Path] = {}
        for d in (self.home, self.logs):
            d.mkdir(parents=True, exist_ok=True)
        self.env = dict(os.environ, FLWR_HOME=str(self.home), FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
                        PYTHONUNBUFFERED="1",
                        # the SuperLink and SuperNodes start flower-superexec / flwr-serverapp by name
                        PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))

    # ---------------------------------------------------------------- processes
    def _spawn(self, name: str, cmd: list[str]) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "w")
        # own session: stopping it also stops the ServerApp/ClientApp subprocesses it starts
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=self.workdir,
                                start_new_session=True)
        log.close()
        self.procs[name] = proc
        return proc

    def log_tail(self, name: str, lines: int = 15) -> str:
        path = self.logs / f"{name}.log"
        text = path.read_text(errors="replace").splitlines() if path.exists() else []
        return "\n".join(text[-lines:])

    def start_superlink(self) -> None:
        cmd = [_tool("flower-superlink"), "--port", str(self.port), "--disable-runtime-dependency-installation",
               "--database", str(self.workdir / "superlink.db")]
        if self.secure:
            self.tls = make_tls(self.workdir / "certs", ["127.0.0.1", "localhost"])
            cmd += ["--ssl-ca-certfile", str(self.tls["ca_cert"]), "--ssl-certfile", str(self.tls["server_cert"]),
                    "--ssl-keyfile", str(self.tls["server_key"]), "--enable-supernode-auth"]
        else:
            cmd += ["--insecure"]
        self._spawn("superlink", cmd)
        self._write_connection()
        self._wait_for_port(self.port, "superlink")

    def _write_connection(self) -> None:
        lines = ["[superlink]", f'default = "{CONNECTION}"', "", f"[superlink.{CONNECTION}]",
                 f'address = "127.0.0.1:{self.port}"']
        lines.append(f"root-certificates = {_toml_string(self.tls['ca_cert'])}" if self.secure else "insecure = true")
        (self.home / "config.toml").write_text("\n".join(lines) + "\n")

    def _wait_for_port(self, port: int, name: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.procs[name].poll() is not None:
                raise self.exited(name)
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    return
            time.sleep(0.2)
        raise FederationError(f"{name} did not open port {port} within {timeout:.0f} s:\n{self.log_tail(name)}")

    def node_key(self, name: str, register: bool = True) -> Path:
        """A fresh EC key pair for a SuperNode; registered on the SuperLink unless register=False."""
        private, public = make_node_key(self.workdir / "keys", name)
        if register:
            self.flwr("supernode", "register", str(public), CONNECTION, "--name", name)
        return private

    def start_supernode(self, name: str, node_config: dict, private_key: Path | None = None) -> subprocess.Popen:
        cmd = [_tool("flower-supernode"), "--superlink", f"127.0.0.1:{self.port}", "--port", str(free_port()),
               "--node-config", " ".join(f"{k}={_toml_string(v) if isinstance(v, (str, Path)) else v}"
                                         for k, v in node_config.items())]
        if self.secure:
            cmd += ["--root-certificates", str(self.tls["ca_cert"]),
                    "--auth-supernode-private-key", str(private_key or self.node_key(name))]
        else:
            cmd += ["--insecure"]
        return self._spawn(name, cmd)

    def stop(self) -> None:
        """Stop every process it started and their descendants, SuperNodes first."""
        stop_processes([self.procs[n] for n in sorted(self.procs, key=lambda n: n == "superlink")])

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()

    # ---------------------------------------------------------------- flwr CLI
    def flwr(self, *args: str, timeout: float = 120) -> dict:
        """Run `flwr <args> --format json` against this federation and return its JSON answer."""
        cmd = [_tool("flwr"), *args, "--format", "json"]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=self.env, cwd=ROOT, timeout=timeout)
        try:
            answer = json.loads(proc.stdout[proc.stdout.index("{"):])
        except ValueError:
            answer = {"success": False, "error-message": (proc.stdout + proc.stderr).strip()[-2000:]}
        if not answer.get("success", False):
            raise FederationError(f"`flwr {' '.join(args)}` failed: {answer.get('error-message', answer)}")
        return answer

    def online_nodes(self) -> int:
        nodes = self.flwr("supernode", "list", CONNECTION)["nodes"]
        return sum(n.get("status") == "online" for n in nodes)

    def exited(self, name: str) -> FederationError:
        log = self.log_tail(name, 40)
        if REFUSED in log:
            return FederationError(f"{name} was refused by the SuperLink: its public key is not registered "
                                   f"(`flwr supernode register <key>.pub`)")
        return FederationError(f"{name} exited with code {self.procs[name].returncode}:\n{log}")

    def wait_for_nodes(self, count: int, timeout: float = 120, watch: list[str] | None = None) -> None:
        """Until `count` SuperNodes are online; fails early when a watched process (default: all) exits."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name in watch or list(self.procs):
                if self.procs[name].poll() is not None:
                    raise self.exited(name)
            if self.online_nodes() >= count:
                return
            time.sleep(1)
        raise FederationError(f"only {self.online_nodes()} of {count} SuperNodes came online within {timeout:.0f} s")

    def submit(self, overrides: list[str]) -> str:
        run_config = f"overrides={_toml_string(shlex.join(overrides))}"
        return str(self.flwr("run", str(ROOT), CONNECTION, "--run-config", run_config)["run-id"])

    def status(self, run_id: str) -> dict:
        runs = self.flwr("list", CONNECTION, "--run-id", run_id)["runs"]
        return runs[0]

    def wait_for_run(self, run_id: str, timeout: float, on_poll=None) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            run = self.status(run_id)
            if on_poll:
                on_poll(run)
            if str(run["status"]).startswith("finished"):
                return run
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise self.exited(name)
            time.sleep(2)
        raise FederationError(f"run {run_id} did not finish within {timeout:.0f} s (status {run['status']})")


def _parse_local_data(items: list[str], nodes: int) -> dict[int, str]:
    out = {}
    for item in items:
        pid, sep, path = item.partition("=")
        if not sep or not pid.isdigit() or not 0 <= int(pid) < nodes:
            raise SystemExit(f"error: --local-data {item!r}: expected <partition id 0..{nodes - 1}>=<path>")
        out[int(pid)] = str(Path(path).expanduser().resolve())
    return out


def run_experiment(args) -> int:
    from app.config import ConfigError, compose, to_plain

    overrides = list(args.overrides)
    keys = {o.split("=", 1)[0].lstrip("+") for o in overrides}
    if "num_clients" in keys:
        raise SystemExit("error: the number of clients is the number of SuperNodes here; use --nodes, not num_clients=")
    workdir = Path(args.workdir or ROOT / "outputs" / "local-federation" / time.strftime("%Y%m%d-%H%M%S")).resolve()
    overrides.append(f"num_clients={args.nodes}")
    if "output_dir" not in keys:
        overrides.append(f"output_dir={workdir / 'run'}")
    try:
        cfg = to_plain(compose(overrides))  # a typo fails here, before any process starts
    except ConfigError as err:
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
            run_id = fed.submit(overrides)
            seen = {"status": None}

            def show(run):
                if run["status"] != seen["status"]:
                    seen["status"] = run["status"]
                    print(f"run {run_id}: {run['status']} ({run.get('elapsed', 0):.0f} s)", flush=True)

            run = fed.wait_for_run(run_id, args.timeout, on_poll=show)
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
