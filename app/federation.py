"""The one place that builds a run's federation from a resolved config (docs/architecture.md#the-floors).

`prepare` refuses everything that can be refused before training (config types and ranges, the
task and its data, the strategy's own arguments) and builds the task's layout, the strategy
(Hydra `instantiate` of conf/strategy/<name>.yaml's `_target_`) and the report, writing nothing.
The simulation (app/simulation.py) and the deployment apps (app/deployment.py) both start from
it, and both build clients with `build_client`, so the two modes cannot drift apart.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

from flwr.client import ClientApp
from flwr.common import log
from flwr.server import ServerApp, ServerAppComponents, ServerConfig
from hydra.errors import InstantiationException
from hydra.utils import instantiate

from app.audit import UpdateAudit
from app.environment import check_machine
from app.registry import STRATEGY_META, not_constructor_args, task_of
from app.report import RunReport
from app.resume import save_state, set_rng_states
from app.schema import clients_per_round, validate
from app.summary import SummarySchema
from clients.task_client import TaskClient
from protocol.checks import ConfigError
from protocol.hooks import ServerHooks
from protocol.layout import Layout
from strategies.trust import ExampleLimits
from tasks.common.checkpoint import CheckpointError, save_checkpoint
from tasks.common.federated_data import partitions
from tasks.common.sections import images_of
from tasks.common.precision import compute_for
from tasks.common.task_row import Task
from tasks.common.training import resolve_device


THREAD_SCALING = 0.83  # one client on t threads trains t**0.83 times as fast as on one (measured, issue 13)


def plan_cores(per_round: int, cores: int) -> tuple[int, int]:
    """(clients in parallel, threads each) that finish a round of `per_round` equal clients soonest
    on `cores`: waves of `parallel` clients, no idle core in a last wave when fewer threads on more
    clients do not pay (5 clients on 2 cores: one at a time on 2 threads; 10: two at a time on 1)."""
    def round_time(parallel: int) -> tuple[float, int]:
        threads = cores // parallel
        return math.ceil(per_round / parallel) / threads ** THREAD_SCALING, -parallel

    parallel = min(range(1, max(1, min(per_round, cores)) + 1), key=round_time)
    return parallel, max(1, cores // parallel)


def client_resources(cfg: dict) -> dict:
    """CPUs/GPUs per simulated client; `auto` plans them from the clients per round and the cores."""
    res = cfg["client_resources"]
    cores = os.cpu_count() or 1
    parallel, threads = plan_cores(clients_per_round(cfg), cores)
    num_cpus = res["num_cpus"]
    num_cpus = threads if num_cpus == "auto" else int(num_cpus)
    num_gpus = res["num_gpus"]
    if num_gpus == "auto":
        import torch

        use_gpu = str(cfg["device"]) != "cpu" and torch.cuda.is_available()
        num_gpus = (torch.cuda.device_count() / min(parallel, 4 * torch.cuda.device_count())) if use_gpu else 0.0
    return {"num_cpus": num_cpus, "num_gpus": float(num_gpus)}


def compute_settings(cfg: dict) -> dict:
    """What the server's hardware makes of `device`, `precision` and friends, and why (a client
    resolves `auto` again on its own hardware), with the cores plan; for the log and summary.json."""
    threads = int(client_resources(cfg)["num_cpus"])
    parallel = max(1, min(clients_per_round(cfg), (os.cpu_count() or 1) // threads))
    return {**compute_for(cfg, resolve_device(str(cfg["device"]))).describe(),
            "transfer_dtype": str(cfg.get("transfer_dtype", "float32")), "parallel_clients": parallel,
            "threads_per_client": threads}


def compute_line(c: dict) -> str:
    note = f" ({c['channels_last_note']})" if c.get("channels_last_note") else ""
    return (f"compute: {c['precision']} on {c['device']} ({c['precision_reason']}), channels_last="
            f"{c['channels_last']}{note}, compile={c['compile']}, weights travel as {c['transfer_dtype']}, "
            f"{c['parallel_clients']} client(s) in parallel x {c['threads_per_client']} thread(s)")


def resolved(cfg: dict, task: Task | None, settings) -> tuple[Task, object]:
    """(the run's task row, its section): the caller's when it has them, else worked out from `cfg`."""
    task = task or task_of(cfg)
    return task, task.settings(cfg) if settings is None else settings


def build_layout(cfg: dict, task: Task | None = None, settings=None) -> tuple[Layout, list]:
    """The upload layout and the initial global arrays, from the same code the clients run (`task`:
    the run's row and `settings` its section, when the caller has them)."""
    task, settings = resolved(cfg, task, settings)
    return task.layout(settings, task.layout_options(settings))


def _nested_targets(node, prefix: str) -> list[str]:
    if isinstance(node, dict):
        return [f"{prefix}.{k}" for k in node if k == "_target_"] + [
            t for k, v in node.items() for t in _nested_targets(v, f"{prefix}.{k}")]
    if isinstance(node, (list, tuple)):
        return [t for i, v in enumerate(node) for t in _nested_targets(v, f"{prefix}[{i}]")]
    return []


def strategy_class(cfg: dict):
    """The strategy's constructor with its config arguments bound (`_target_` + conf/strategy keys).

    `_target_` must name one of the project's strategy classes (app/registry.STRATEGY_TARGETS) and
    is checked before anything is imported or built; its arguments are passed as plain values
    (no nested `_target_`: Hydra would call whatever it names)."""
    key = "strategy._target_"
    target = STRATEGY_META[key].check(cfg["strategy"].get("_target_"), key)
    node = {k: v for k, v in cfg["strategy"].items() if k not in not_constructor_args()}
    nested = [t for k, v in node.items() for t in _nested_targets(v, f"strategy.{k}")]
    if nested:
        raise ConfigError(f"{nested[0]}: a strategy's arguments are plain values; only {key} names a class "
                          f"(one of {list(STRATEGY_META[key].options)})")
    try:
        return instantiate({"_target_": target, **node}, _partial_=True, _convert_="all", _recursive_=False)
    except InstantiationException as err:
        raise ConfigError(f"strategy={cfg['strategy']['name']}: cannot build {cfg['strategy']['_target_']} "
                          f"({err.__cause__ or err})") from err


def summary_schema(cfg: dict, task: Task | None = None, make_strategy=None, settings=None) -> SummarySchema:
    """What the run's summary.json holds (the task's metrics, the strategy's and the task's own fields)."""
    cls, (task, settings) = (make_strategy or strategy_class(cfg)).func, resolved(cfg, task, settings)
    return SummarySchema(task.metrics, (*cls.CLIENT_FIELDS, *task.client_fields(settings)), cls.ROUND_FIELDS)


@dataclass
class Federation:
    """A run ready to start: its config, task (the registry's row, resolved once) and the task's section
    of the config (Task.settings, built once), strategy and report (nothing written yet)."""

    cfg: dict
    task: Task
    settings: object
    strategy: object
    report: RunReport
    resume_state: dict | None = None
    deployed: bool = False

    def server_components(self, context=None) -> ServerAppComponents:
        if self.resume_state is not None:  # the random streams continue where the saved run stopped
            set_rng_states(self.resume_state["rng"])
        return ServerAppComponents(strategy=self.strategy,
                                   config=server_config(self.cfg, self.resume_state, self.deployed))


DEPLOYMENT_ROUND_TIMEOUT = 3600.0  # seconds: round_timeout=null in a deployment (a silent node must not stall it)


def example_limits(cfg: dict, task, deployed: bool) -> ExampleLimits:
    """How many examples each client may claim (strategies/trust.py): in simulation of an image task
    the partitions' own sizes (the server computes them as the clients do); else trust.max_examples
    for every site, or, with none, claims capped at trust.examples_ratio x the round's median."""
    trust = cfg.get("trust") or {}
    maximum, ratio = trust.get("max_examples", "auto"), float(trust.get("examples_ratio", 4.0))
    if maximum != "auto":
        return ExampleLimits(maximum=int(maximum), ratio=ratio)
    if not deployed and task.data_kind == "images":
        return ExampleLimits(per_partition={pid: len(p) for pid, p in enumerate(partitions(images_of(cfg)))},
                             ratio=ratio)
    return ExampleLimits(ratio=ratio)


def prepare(cfg: dict, out_dir: str | Path | None = None, resume_state: dict | None = None,
            deployed: bool = False) -> Federation:
    """Check everything that can be checked before training, and build the server side
    (`deployed`: for SuperNodes, whose data the server may not hold)."""
    validate(cfg)
    check_machine(cfg, out_dir or cfg.get("output_dir"), "resume" if resume_state else "output_dir",
                  computes=not deployed)
    task = task_of(cfg)
    settings = task.settings(cfg)
    task.preflight(settings)
    if not deployed:  # the simulation reads every client's data itself: no SuperNode serves its own
        task.simulation_preflight(settings)
    layout, initial = task.layout(settings, task.layout_options(settings))
    if resume_state is not None:
        if resume_state["layout"] != layout.fingerprint:
            raise CheckpointError("resume: the saved global model does not fit this model/method config "
                                  "(different keys or shapes); resume with the original settings")
        initial = resume_state["arrays"]
    make_strategy = strategy_class(cfg)
    out_dir = Path(out_dir or cfg.get("output_dir") or "outputs")
    schema = summary_schema(cfg, task, make_strategy, settings)
    report = RunReport(cfg, out_dir, schema, task.name, resume_state)

    def checkpoint(models, server_round):
        return save_checkpoint(out_dir / "checkpoint_final.pt", cfg, layout.keys, models, server_round)

    def persist(server_round, arrays, strategy_state):
        save_state(out_dir, server_round, cfg, layout.fingerprint, arrays, strategy_state, report.summary)
        if cfg["faults"]["exit_after_round"] == server_round:
            log(logging.ERROR, "fault injection: the server process dies after round %s", server_round)
            os._exit(75)

    hooks = ServerHooks(evaluate=task.evaluator(settings, layout), report=report.report, save_checkpoint=checkpoint,
                        save_state=persist if cfg["checkpoint_every"] > 0 else (lambda *a: None),
                        round_started=lambda rnd, n: report.progress.round_started(rnd, n),
                        client_done=lambda n: report.progress.client_done(n),
                        audit=UpdateAudit(out_dir) if cfg["audit_updates"] else None, **task.server_hooks(settings))
    strategy = make_strategy(
        layout=layout, hooks=hooks, initial_arrays=initial, num_rounds=cfg["num_rounds"],
        num_clients=cfg["num_clients"], fraction_fit=float(cfg["fraction_fit"]),
        min_fit_clients=int(cfg["min_fit_clients"]), eval_every=int(cfg["eval_every"]),
        eval_at_start=bool(cfg["eval"]["at_start"]), seed=int(cfg["seed"]),
        norm_bound=None if cfg.get("norm_bound") is None else float(cfg["norm_bound"]),
        checkpoint_every=int(cfg["checkpoint_every"]), resume_from=resume_state,
        transfer_dtype=str(cfg.get("transfer_dtype", "float32")), example_limits=example_limits(cfg, task, deployed),
        client_timeout=float((cfg.get("trust") or {}).get("client_timeout", 600.0)))
    return Federation(cfg, task, settings, strategy, report, resume_state, deployed)


def server_config(cfg: dict, resume_state: dict | None = None, deployed: bool = False) -> ServerConfig:
    done = resume_state["round"] if resume_state else 0  # Flower counts the remaining rounds from 1
    timeout = cfg.get("round_timeout")
    if timeout is None and deployed:
        timeout = DEPLOYMENT_ROUND_TIMEOUT
    return ServerConfig(num_rounds=cfg["num_rounds"] - done, round_timeout=None if timeout is None else float(timeout))


def build_server_app(federation: Federation) -> ServerApp:
    return ServerApp(server_fn=federation.server_components)


def build_client(cfg: dict, partition_id: int, state, threads: int = 1, state_dir: str | None = None,
                 task: Task | None = None, settings=None) -> TaskClient:
    """The client of partition `partition_id`, running the local round of the run's task (`task`: its
    row and `settings` its section, when the caller has them)."""
    task, settings = resolved(cfg, task, settings)
    return TaskClient(task.local_round, cfg, partition_id, state, threads=threads, state_dir=state_dir,
                      local_evaluate=task.local_evaluate, settings=settings)


def make_client_fn(cfg: dict, task: Task | None = None, settings=None):
    """client_fn for Flower: one client for the partition named in the node config (the task and its
    section resolved once, not per client)."""
    threads, (task, settings) = int(client_resources(cfg)["num_cpus"]), resolved(cfg, task, settings)

    def client_fn(context):
        return build_client(cfg, int(context.node_config["partition-id"]), context.state, threads,
                            task=task, settings=settings).to_client()

    return client_fn


def build_client_app(cfg: dict, task: Task | None = None, settings=None) -> ClientApp:
    return ClientApp(client_fn=make_client_fn(cfg, task, settings))
