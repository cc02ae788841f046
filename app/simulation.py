"""Run one experiment in Flower's simulation engine (Ray) and return its summary."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from app.config import ConfigError, centralise, validate
from app.federation import build_client_app, build_server_app, client_resources
from app.report import RunReport
from tasks.federated_data import dataset_from_cfg, partitions
from tasks.reid_data import check_reid_data, is_reid

log = logging.getLogger("fedssl")


class RunFailed(RuntimeError):
    """The federation did not complete; summary.json holds every finished round."""


def preflight(cfg: dict) -> None:
    """Everything that can be refused before training starts: values, data, partition."""
    validate(cfg)
    if is_reid(cfg):
        check_reid_data(cfg)  # every client's identities, its evaluation set, the public set
        return
    dataset_from_cfg(cfg)  # DataError naming the paths searched
    parts = partitions(cfg)  # PartitionError for impossible splits
    small = [k for k, p in enumerate(parts) if len(p) < cfg["batch_size"]]
    if small:
        raise ConfigError(
            f"clients {small} hold fewer examples than batch_size={cfg['batch_size']} "
            f"(smallest: {min(len(parts[k]) for k in small)}); lower batch_size or use fewer clients"
        )


def cpu_warning(cfg: dict) -> None:
    import torch

    if str(cfg["device"]) != "cpu" and torch.cuda.is_available():
        return
    if float(cfg["model"]["width"]) >= 1.0 and cfg["num_rounds"] * cfg["local_epochs"] >= 50:
        log.warning(
            "running the paper protocol (full ResNet-18, %d rounds x %d epochs) on CPU: expect days. "
            "For a ~10 minute CPU run use experiment=cpu; for seconds, experiment=smoke.",
            cfg["num_rounds"], cfg["local_epochs"],
        )


def run(cfg: dict, out_dir: str | Path, resume_state: dict | None = None) -> dict:
    """Simulate the federation described by the resolved config `cfg`; write results to out_dir.

    `resume_state` (app/resume.load_state) continues an interrupted run in the same out_dir.
    This is the only place that calls the simulation engine (DESIGN.md conv. 7).
    """
    from flwr.simulation import run_simulation

    cfg = centralise(cfg)
    preflight(cfg)
    cpu_warning(cfg)
    cfg = dict(cfg, client_state_dir=str(Path(out_dir) / "client_state"))
    report = RunReport(cfg, Path(out_dir), resume_state)
    resources = client_resources(cfg)
    init_args = {"include_dashboard": False, "logging_level": logging.WARNING, "log_to_driver": True}
    if cfg["ray"].get("address"):
        init_args["address"] = cfg["ray"]["address"]
    else:
        init_args["num_cpus"] = os.cpu_count() or 1
    log.info("simulating %d clients (%s per client) -> %s", cfg["num_clients"], resources, report.out_dir)
    try:
        run_simulation(
            server_app=build_server_app(cfg, report, resume_state),
            client_app=build_client_app(cfg),
            num_supernodes=cfg["num_clients"],
            backend_config={"client_resources": resources, "init_args": init_args},
        )
    except BaseException as err:  # noqa: BLE001 - record, then re-raise
        report.fail(f"{type(err).__name__}: {err}")
        report.finish()
        raise
    summary = report.finish()
    if summary["status"] != "completed":
        raise RunFailed(f"run failed: {summary['error']} (results so far: {report.path})")
    return summary
