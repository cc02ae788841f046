"""The ServerApp and ClientApp named in pyproject's [tool.flwr.app.components] (`flwr run`).

They are built by the same functions as the simulation (app/federation.py). The experiment
config still comes from conf/: the run config key `overrides` carries the Hydra overrides
(e.g. "strategy=fedu dataset=cifar100 experiment=cpu"), so nothing is configured twice.
A SuperNode says which partition it serves through --node-config
"partition-id=0 num-partitions=5", may point at the public data with data-dir=<folder>, or
train on its own images with local-data=<.npz or folder> (tasks/local_data.py); state-dir=<folder>
keeps its per-round client state on disk for resume.
"""

from __future__ import annotations

import shlex
from functools import lru_cache
from pathlib import Path

from flwr.client import ClientApp
from flwr.server import ServerApp, ServerAppComponents
from flwr.server.compat import start_grid

from app.config import compose, to_plain
from app.federation import build_client, build_strategy, client_resources, server_config
from app.report import RunReport
from app.resume import load_state, resumed_config
from app.simulation import preflight


@lru_cache(maxsize=4)
def config_from_overrides(overrides: str) -> dict:
    return to_plain(compose(shlex.split(overrides)))


def _server_components(context) -> tuple[ServerAppComponents, RunReport]:
    overrides = shlex.split(str(context.run_config.get("overrides", "")))
    cfg = dict(config_from_overrides(shlex.join(overrides)))
    cfg["command_line"] = [o for o in overrides if o.split("=", 1)[0] not in ("resume", "output_dir")]
    resume_state = None
    if cfg["resume"]:  # continue an interrupted deployment run in its own output directory
        out_dir = str(cfg["resume"])
        resume_state = load_state(out_dir)
        cfg = resumed_config(resume_state, cfg["command_line"])
        cfg["resume"] = out_dir
    else:
        out_dir = cfg.get("output_dir") or str(Path("outputs") / f"deployment-run-{context.run_id}")
    cfg["output_dir"] = out_dir
    preflight(cfg)
    report = RunReport(cfg, Path(out_dir), resume_state)
    components = ServerAppComponents(strategy=build_strategy(cfg, report, resume_state),
                                     config=server_config(cfg, resume_state))
    return components, report


def _server_main(grid, context) -> None:
    """Run the rounds, then close summary.json and the W&B run whatever happened (as in simulation)."""
    components, report = _server_components(context)
    try:
        start_grid(grid=grid, strategy=components.strategy, config=components.config)
    except BaseException as err:  # noqa: BLE001 - record, then re-raise: the run's status becomes failed
        report.fail(f"{type(err).__name__}: {err}")
        raise
    finally:
        summary = report.finish()
    if summary["status"] != "completed":
        raise RuntimeError(f"run failed: {summary['error']} (results so far: {report.path})")


def _client_fn(context):
    cfg = dict(config_from_overrides(str(context.run_config.get("overrides", ""))))
    node = context.node_config
    if "data-dir" in node:
        cfg["data_dir"] = str(node["data-dir"])
    if "local-data" in node:  # the node's own images instead of a slice of the public set
        cfg["local_data"] = str(node["local-data"])
    if "num-partitions" in node and int(node["num-partitions"]) != cfg["num_clients"]:
        raise ValueError(
            f"this SuperNode was started with num-partitions={node['num-partitions']} but the run "
            f"has num_clients={cfg['num_clients']}; restart it with matching --node-config"
        )
    threads = int(client_resources(cfg)["num_cpus"])
    state_dir = str(node["state-dir"]) if "state-dir" in node else None
    return build_client(cfg, int(node["partition-id"]), context.state, threads, state_dir).to_client()


server_app = ServerApp()
server_app.main()(_server_main)
client_app = ClientApp(client_fn=_client_fn)
