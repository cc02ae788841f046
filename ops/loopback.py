"""SuperLink + SuperNodes on this machine as child processes (issues 4, 17): start them, kill
and restart them as a machine that fails would be, and ask the `flwr` CLI about them.

`LocalFederation` is what the one-command loopback federation (ops/local_federation.py), the
chaos soak (benchmarks/deployment_chaos.py) and the deployment tests stand on. Every process it
starts runs in a session of its own; `stop()` ends them and everything they started.
"""

from __future__ import annotations

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
from ops.processes import descendants, free_port, send_signal, stop_processes

ROOT = Path(__file__).resolve().parents[1]
CONNECTION = "local-federation"
# what flower-supernode prints (Flower exit code 305) when the SuperLink refuses its key
REFUSED = "Failed to activate SuperNode"
ACTIVATED = "SuperNode ID:"  # what it prints once the SuperLink has activated it


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
        self.nodes: dict[str, tuple[dict, Path | None]] = {}  # SuperNode name -> (node config, key): restarts
        self.tls: dict[str, Path] = {}
        for d in (self.home, self.logs):
            d.mkdir(parents=True, exist_ok=True)
        self.env = dict(os.environ, FLWR_HOME=str(self.home), FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
                        PYTHONUNBUFFERED="1",
                        # the SuperLink and SuperNodes start flower-superexec / flwr-serverapp by name
                        PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))

    # ---------------------------------------------------------------- processes
    def _spawn(self, name: str, cmd: list[str]) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "a")  # a restarted process continues its log
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
            self.tls = self.tls or make_tls(self.workdir / "certs", ["127.0.0.1", "localhost"])  # kept on restart
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

    def start_supernode(self, name: str, node_config: dict, private_key: Path | None = None,
                        root_certificates: Path | None = None) -> subprocess.Popen:
        """SuperNode `name`; `root_certificates` other than the federation's CA: a node that must not connect."""
        cmd = [_tool("flower-supernode"), "--superlink", f"127.0.0.1:{self.port}", "--port", str(free_port()),
               "--node-config", " ".join(f"{k}={_toml_string(v) if isinstance(v, (str, Path)) else v}"
                                         for k, v in node_config.items())]
        if self.secure:
            private_key = private_key or self.node_key(name)
            cmd += ["--root-certificates", str(root_certificates or self.tls["ca_cert"]),
                    "--auth-supernode-private-key", str(private_key)]
        else:
            cmd += ["--insecure"]
        self.nodes[name] = (dict(node_config), private_key)
        return self._spawn(name, cmd)

    def kill(self, name: str, sig: int = signal.SIGKILL) -> int:
        """Kill a process and everything it started at once (a machine that loses power); its exit code."""
        proc = self.procs[name]
        for pid in [proc.pid, *descendants(proc.pid)]:
            send_signal(pid, sig)
        return proc.wait()

    def restart(self, name: str, patience: float = 180) -> subprocess.Popen:
        """Start a stopped process again as it was: the SuperLink on its port with its database and
        certificates; a SuperNode with its node config (partition, state dir) and key.

        The SuperLink refuses to activate a key whose earlier node it still counts as online (until
        two missed heartbeats, about a minute): a SuperNode is started again every 5 s until it is
        activated, for at most `patience` seconds."""
        if self.procs[name].poll() is None:
            raise FederationError(f"{name} is still running")
        if name == "superlink":
            self.start_superlink()
            return self.procs[name]
        config, key = self.nodes[name]
        deadline = time.monotonic() + patience
        while True:
            start = (self.logs / f"{name}.log").stat().st_size
            proc = self.start_supernode(name, config, key)
            if self._activated(name, proc, start, deadline):
                return proc
            if REFUSED not in self._log_since(name, start) or time.monotonic() > deadline:
                raise self.exited(name)
            time.sleep(5)

    def _log_since(self, name: str, offset: int) -> str:
        return (self.logs / f"{name}.log").read_bytes()[offset:].decode(errors="replace")

    def _activated(self, name: str, proc: subprocess.Popen, log_start: int, deadline: float) -> bool:
        """Whether SuperNode `name` got its node id; when it exits first, the processes it left
        behind (its SuperExec runs in a session of its own) are stopped with it."""
        family: set[int] = set()
        while time.monotonic() < deadline:
            family.update(descendants(proc.pid))
            if ACTIVATED in self._log_since(name, log_start):
                return True
            if proc.poll() is not None:
                for pid in family:
                    send_signal(pid, signal.SIGKILL)
                return False
            time.sleep(0.5)
        return False

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
                                   f"(`flwr supernode register <key>.pub`), or a node with this key is still "
                                   f"online (started again within a minute of its end)")
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

    def wait_for_run(self, run_id: str, timeout: float, on_poll=None, on_node_exit=None) -> dict:
        """Until the run finishes. A SuperLink that exits ends the wait with an error; a SuperNode that
        exits does not (the run goes on with the others, and the node may come back):
        `on_node_exit(name, code)` hears of it once per exit."""
        deadline = time.monotonic() + timeout
        heard: set[tuple[str, int]] = set()
        while time.monotonic() < deadline:
            run = self.status(run_id)
            if on_poll:
                on_poll(run)
            if str(run["status"]).startswith("finished"):
                return run
            if self.procs["superlink"].poll() is not None:
                raise self.exited("superlink")
            for name, proc in list(self.procs.items()):
                if name != "superlink" and proc.poll() is not None and (name, proc.pid) not in heard:
                    heard.add((name, proc.pid))
                    if on_node_exit:
                        on_node_exit(name, proc.returncode)
            time.sleep(2)
        raise FederationError(f"run {run_id} did not finish within {timeout:.0f} s (status {run['status']})")
