"""The ServerApp and ClientApp named in pyproject's [tool.flwr.app.components] (`flwr run`).

They are built by the same functions as the simulation (app/federation.py). The experiment
config still comes from conf/: the run config key `overrides` carries the Hydra overrides
(e.g. "strategy=fedu dataset=cifar100 experiment=cpu"), so nothing is configured twice.
A SuperNode says which partition it serves through --node-config
"partition-id=0 num-partitions=5", may point at the public data with data-dir=<folder>, or
train on its own images with local-data=<.npz or folder> (tasks/common/local_data.py);
state-dir=<folder> keeps its per-round client state on disk, from which a restarted SuperNode
continues (clients/state_store.py); overrides="<Hydra overrides>" adds the site's own settings.
"""

from __future__ import annotations

import logging
import shlex
from functools import lru_cache
from pathlib import Path

from flwr.client import ClientApp
from flwr.common import log
from flwr.server import ServerApp
from flwr.server.compat import start_grid

from app.config import compose, to_plain
from app.federation import Federation, build_client, client_resources, compute_line, compute_settings, prepare
from app.progress import for_run
from app.registry import task_of
from app.schema import clients_per_round
from app.resume import run_config
from app.signals import signals_stop_run, stop_of, stopped_text


@lru_cache(maxsize=4)
def config_from_overrides(overrides: str) -> dict:
    return to_plain(compose(shlex.split(overrides), deployed=True))  # experiment=auto: paper on every node


def server_federation(context) -> Federation:
    """The run the researcher submitted, or the continuation of `resume=<its output directory>`."""
    def fresh(overrides):
        cfg = config_from_overrides(shlex.join(overrides))
        return cfg, cfg.get("output_dir") or str(Path("outputs") / f"deployment-run-{context.run_id}")

    cfg, out_dir, resume_state = run_config(shlex.split(str(context.run_config.get("overrides", ""))), fresh)
    return prepare(cfg, out_dir, resume_state, deployed=True)


def _server_main(grid, context) -> None:
    """Run the rounds, then close summary.json and the W&B run whatever happened (as in simulation)."""
    federation = server_federation(context)
    report = federation.report
    report.start()
    compute = report.summary["compute"] = compute_settings(federation.cfg)
    log(logging.INFO, compute_line(compute))
    report.progress = for_run(federation.cfg, clients_per_round(federation.cfg))  # SuperNodes train side by side
    components = federation.server_components()
    try:
        with signals_stop_run():  # `flwr stop` or a killed ServerApp process: recorded, not left "running"
            start_grid(grid=grid, strategy=components.strategy, config=components.config)
    except BaseException as err:  # noqa: BLE001 - record, then re-raise: the run's status becomes failed
        stop = stop_of(err)
        report.fail(stopped_text(stop, report.summary) if stop else f"{type(err).__name__}: {err}")
        raise
    finally:
        summary = report.finish()
    if summary["status"] != "completed":
        raise RuntimeError(report.failure_line())


@lru_cache(maxsize=4)
def node_client(overrides: str, data_dir: str | None, local_data: str | None, num_partitions: int | None):
    """(config, task, the task's section, threads) of a SuperNode's clients, resolved once per setting
    (Flower calls the client_fn for every message)."""
    cfg = dict(config_from_overrides(overrides))
    if data_dir is not None:
        cfg["data_dir"] = data_dir
    if local_data is not None:  # the node's own images instead of a slice of the public set
        cfg["local_data"] = local_data
    if num_partitions is not None and num_partitions != cfg["num_clients"]:
        raise ValueError(
            f"this SuperNode was started with num-partitions={num_partitions} but the run "
            f"has num_clients={cfg['num_clients']}; restart it with matching --node-config"
        )
    task = task_of(cfg)
    return cfg, task, task.settings(cfg), int(client_resources(cfg)["num_cpus"])


def _client_fn(context):
    node = context.node_config
    # the site's own settings on top of the run's (device=cpu, precision=fp32, ...); one that changes
    # what is uploaded is refused by the layout check at its first round, with both fingerprints
    overrides = " ".join(str(o) for o in (context.run_config.get("overrides", ""), node.get("overrides", "")) if o)
    cfg, task, settings, threads = node_client(
        overrides, str(node["data-dir"]) if "data-dir" in node else None,
        str(node["local-data"]) if "local-data" in node else None,
        int(node["num-partitions"]) if "num-partitions" in node else None)
    state_dir = str(node["state-dir"]) if "state-dir" in node else None
    return build_client(cfg, int(node["partition-id"]), context.state, threads, state_dir, task=task,
                        settings=settings).to_client()


server_app = ServerApp()
server_app.main()(_server_main)
client_app = ClientApp(client_fn=_client_fn)
