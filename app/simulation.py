"""Run one experiment in Flower's simulation engine (Ray) and return its report."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from flwr.common import parameters_to_ndarrays

from app.config import centralise
from app.calibrate import first_round_estimate
from app.console import libraries_to_log
from app.federation import (Federation, build_client_app, build_server_app, client_resources, compute_line,
                            compute_settings, prepare)
from app.progress import Progress, clock, for_run
from app.report import RunReport
from app.signals import signals_stop_run, stop_of, stopped_text

log = logging.getLogger("fedssl")


class RunFailed(RuntimeError):
    """The federation did not complete; summary.json holds every finished round. `exit_code`: the
    process's exit status when it is not the usual 1 (a run stopped by a signal: 128 + its number)."""

    def __init__(self, message: str, exit_code: int | None = None):
        super().__init__(message)
        self.exit_code = exit_code


def preflight(cfg: dict) -> Federation:
    """Everything that can be refused before training starts (app/federation.prepare); writes nothing."""
    return prepare(centralise(cfg))


def cpu_warning(cfg: dict) -> None:
    import torch

    if str(cfg["device"]) != "cpu" and torch.cuda.is_available():
        return
    if float(cfg["model"]["width"]) >= 1.0 and cfg["num_rounds"] * cfg["local_epochs"] >= 50:
        log.warning(
            "running the paper's protocol (full ResNet-18, %d rounds x %d epochs) on a CPU: expect days. "
            "experiment=cpu runs in about 4 minutes on 2 cores (what experiment=auto, the default, picks "
            "without a GPU), experiment=cpu_learn learns in 25-45 minutes, experiment=smoke takes seconds.",
            cfg["num_rounds"], cfg["local_epochs"],
        )


def live_progress(cfg: dict, federation: Federation, compute: dict) -> Progress:
    """The live round line; on a terminal, timed first by a few real training steps."""
    done = int(federation.resume_state["round"]) if federation.resume_state else 0
    progress = for_run(cfg, compute["parallel_clients"], done_rounds=done)
    if progress.show:  # the layout and weights prepare() built, not a second model
        strategy = federation.strategy
        estimate = first_round_estimate(cfg, federation.task, strategy.layout, parameters_to_ndarrays(strategy.initial_parameters),
                                        compute["parallel_clients"], compute["threads_per_client"])
        progress.first_round_estimate = estimate
        if estimate is not None:
            log.info("estimate from three training steps: a round's training takes ~%s, the run's %d rounds ~%s "
                     "(start-up of Ray and the clients, and evaluation, come on top)", clock(estimate),
                     cfg["num_rounds"] - done, clock(estimate * (cfg["num_rounds"] - done)))
    return progress


def run(cfg: dict, out_dir: str | Path, resume_state: dict | None = None) -> RunReport:
    """Simulate the federation described by the resolved config `cfg`; write results to out_dir.

    `resume_state` (app/resume.load_state) continues an interrupted run in the same out_dir.
    This is the only place that calls the simulation engine (convention 7, docs/architecture.md#conventions-and-where-they-come-from).
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
        with libraries_to_log(report.log_file), signals_stop_run():  # Flower's and Ray's lines: main.log only
            run_simulation(
                server_app=build_server_app(federation),
                client_app=build_client_app(cfg, federation.task, federation.settings),
                num_supernodes=cfg["num_clients"],
                backend_config={"client_resources": resources, "init_args": init_args},
            )
    except BaseException as err:  # noqa: BLE001 - record, then re-raise
        cause, stop = system_error(err) or err, stop_of(err)
        report.fail(stopped_text(stop, report.summary) if stop else f"{type(cause).__name__}: {cause}")
        report.finish()  # never raises: a full disk leaves summary.json's last version and says so
        if stop is not None:
            shutdown_ray()
            raise RunFailed(report.failure_line(), exit_code=128 + stop.signum) from err
        if cause is not err or isinstance(err, OSError) or report.unsaved:  # the machine's fault: one line
            raise RunFailed(report.failure_line()) from err
        raise
    summary = report.finish()
    if summary["status"] != "completed":
        raise RunFailed(report.failure_line())
    return report


def shutdown_ray() -> None:
    """Stop this process's Ray (its workers and actors); never raises."""
    try:
        import ray

        ray.shutdown()
    except Exception:  # noqa: BLE001 - a stopped run's record is written already
        pass


def system_error(err: BaseException | None) -> OSError | None:
    """The first OSError (a full disk, a permission) in `err`'s chain of causes: Flower re-raises a
    server error as `RuntimeError(...) from ex`."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, OSError):
            return err
        seen.add(id(err))
        err = err.__cause__
    return None
