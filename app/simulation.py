"""Run one experiment in Flower's simulation engine (Ray) and return its report."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from flwr.common import parameters_to_ndarrays

from app.config import centralise
from app.calibrate import first_round_estimate
from app.federation import (Federation, build_client_app, build_server_app, client_resources, compute_line,
                            compute_settings, prepare)
from app.progress import Progress, clock, for_run
from app.report import RunReport

log = logging.getLogger("fedssl")


class RunFailed(RuntimeError):
    """The federation did not complete; summary.json holds every finished round."""


def preflight(cfg: dict) -> Federation:
    """Everything that can be refused before training starts (app/federation.prepare); writes nothing."""
    return prepare(centralise(cfg))


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


def live_progress(cfg: dict, federation: Federation, compute: dict) -> Progress:
    """The live round line; on a terminal, timed first by a few real training steps."""
    done = int(federation.resume_state["round"]) if federation.resume_state else 0
    progress = for_run(cfg, compute["parallel_clients"], done_rounds=done)
    if progress.show:  # the layout and weights prepare() built, not a second model
        strategy = federation.strategy
        estimate = first_round_estimate(cfg, strategy.layout, parameters_to_ndarrays(strategy.initial_parameters),
                                        compute["parallel_clients"], compute["threads_per_client"])
        progress.first_round_estimate = estimate
        if estimate is not None:
            log.info("estimate from three training steps: a round trains in ~%s, the run's %d rounds in ~%s "
                     "(evaluation extra)", clock(estimate), cfg["num_rounds"] - done,
                     clock(estimate * (cfg["num_rounds"] - done)))
    return progress


def run(cfg: dict, out_dir: str | Path, resume_state: dict | None = None) -> RunReport:
    """Simulate the federation described by the resolved config `cfg`; write results to out_dir.

    `resume_state` (app/resume.load_state) continues an interrupted run in the same out_dir.
    This is the only place that calls the simulation engine (DESIGN.md conv. 7).
    """
    from flwr.simulation import run_simulation

    cfg = dict(centralise(cfg), client_state_dir=str(Path(out_dir) / "client_state"))
    federation = prepare(cfg, out_dir, resume_state)
    cpu_warning(cfg)
    report = federation.report
    report.start()
    compute = report.summary["compute"] = compute_settings(cfg)
    log.info(compute_line(compute))
    report.progress = live_progress(cfg, federation, compute)
    resources = client_resources(cfg)
    # Ray's workers inherit this: fewer malloc arenas, less memory held by freed tensors (issue 13)
    os.environ.setdefault("MALLOC_ARENA_MAX", "2")
    init_args = {"include_dashboard": False, "logging_level": logging.WARNING, "log_to_driver": True}
    if cfg["ray"].get("address"):
        init_args["address"] = cfg["ray"]["address"]
    else:
        init_args["num_cpus"] = os.cpu_count() or 1
    log.info("simulating %d clients (%s per client) -> %s", cfg["num_clients"], resources, report.out_dir)
    try:
        run_simulation(
            server_app=build_server_app(federation),
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
    return report
