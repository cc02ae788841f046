"""The commands main.py offers, each composing its config once:

    python main.py [key=value ...]                      train: simulate the federation (mode=train)
    python main.py resume=<run dir> [key=value ...]     continue an interrupted run
    python main.py mode=evaluate checkpoint=<path>|init evaluate without training (app/offline.py)
    python main.py mode=route checkpoint=<path> dataset=<downstream>   route an SDR checkpoint
    python main.py mode=export checkpoint=<path>        the learned network as safetensors + ONNX (app/export.py)
    python main.py mode=predict checkpoint=<path> images=<folder>      a detector on a folder (app/predict.py)
    python main.py mode=embed checkpoint=<path> images=<folder|.npz>   features of images (app/embed.py)
    python main.py -m key=a,b ...                       one run per combination, one after another, job n in
                                                        <output_dir>/<n> (default multirun/<date>/<time>/<n>)

Without output_dir every command gets a new folder of its own (`run_dir`); a fresh run never
writes into an earlier run's folder (app/outputs.py).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import sys
import time
from pathlib import Path

from app.config import compose, key_of, override_value, preset_line, to_plain
from app.embed import embed
from app.export import export
from app.offline import evaluate_offline, evaluation_line, evaluation_setup, route_offline
from app.outputs import RunFolderTaken, claim_new_folder, refusal, release_if_unused
from app.predict import predict
from app.report import LOG_FORMAT
from app.resume import run_config
from app.schema import RUN
from app.simulation import RunFailed, run
from protocol.checks import ConfigError
from protocol.hooks import RunStopped
from tasks.common.checkpoint import CheckpointError
from tasks.common.data import DataError
from tasks.common.export import ExportError
from tasks.common.local import LayoutMismatch
from tasks.common.partition import PartitionError

log = logging.getLogger("fedssl")
USER_ERRORS = (ConfigError, DataError, PartitionError, CheckpointError, RunFailed, RunStopped, LayoutMismatch, ExportError)


def log_to_console() -> None:
    """INFO lines on stdout in Hydra's job-logging format (a run adds its main.log: app/report.py)."""
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    if not any(getattr(h, "_fedssl", False) for h in root.handlers):
        console = logging.StreamHandler(sys.stdout)
        console.setFormatter(logging.Formatter(LOG_FORMAT))
        console._fedssl = True
        root.addHandler(console)
    logging.getLogger("flwr").propagate = False  # flwr prints its own lines; no duplicates
    logging.getLogger("alembic").setLevel(logging.WARNING)


def run_dir(composed) -> str:
    """A new folder where Hydra would have put this run (conf/config.yaml `hydra.run.dir`), with `-2`,
    `-3`, ... added when another run started in the same second took it (app/outputs.py)."""
    return str(claim_new_folder(composed.hydra.run.dir))


@contextlib.contextmanager
def default_folder_released(out_dir: str):
    """A command refused before it wrote anything leaves no empty folder of its own behind."""
    try:
        yield
    except BaseException:
        release_if_unused(out_dir)
        raise


def fresh_run(argv: list[str]) -> tuple[dict, str]:
    """The config of a new run and its output directory (output_dir, else Hydra's run dir)."""
    composed = compose(argv, with_hydra=True)
    cfg = to_plain(composed)
    return cfg, cfg.get("output_dir") or run_dir(composed)


def train(argv: list[str]) -> None:
    cfg, out_dir, resume_state = run_config(argv, fresh_run)
    log_to_console()
    log.info(preset_line(cfg, argv))
    with default_folder_released(out_dir):
        run(cfg, out_dir, resume_state)  # its closing line ends the console and main.log


def evaluate(argv: list[str]) -> None:
    setup = evaluation_setup(argv)
    out_dir = setup.cfg.get("output_dir") or run_dir(setup.composed)
    log_to_console()
    with default_folder_released(out_dir):
        print(evaluation_line(setup.cfg, evaluate_offline(setup, out_dir)))
    log.info("evaluate: %s/evaluation.json", out_dir)


def route(argv: list[str]) -> None:
    from tasks.sdr.route import table

    composed = compose(argv, with_hydra=True)
    cfg = dict(to_plain(composed), command_line=list(argv))
    out_dir = cfg.get("output_dir") or run_dir(composed)
    log_to_console()
    with default_folder_released(out_dir):
        print(table(route_offline(cfg, out_dir)))
    log.info("route: %s/route.json (and the exported backbone)", out_dir)


COMMANDS = {"train": train, "evaluate": evaluate, "route": route, "export": export, "predict": predict, "embed": embed}


def run_command(argv: list[str]) -> None:
    mode = override_value(argv, "mode") or "train"
    COMMANDS[RUN["mode"].check(mode, "mode")](argv)


def multirun_jobs(argv: list[str]) -> list[list[str]]:
    """The command line of every job of `-m`: job n writes into `<output_dir>/<n>`, or without
    output_dir into multirun/<date>/<time>/<n> (a folder of its own: `-2`, ... when another multirun
    started in the same second); a job with resume= continues that run in its own folder."""
    jobs, root = [], None
    for n, combination in enumerate(sweep(argv)):
        if override_value(combination, "resume") is None:
            given = override_value(combination, "output_dir")
            if given is None and root is None:
                root = claim_new_folder(Path("multirun") / time.strftime("%Y-%m-%d/%H-%M-%S"))
            combination = [*[o for o in combination if key_of(o) != "output_dir"],
                           f"output_dir={Path(given or root) / str(n)}"]
        jobs.append(combination)
    return jobs


def refuse_taken_jobs(jobs: list[list[str]]) -> None:
    """Before any job starts: none of the training jobs may land on an earlier run's folder."""
    folders = [override_value(job, "output_dir") for job in jobs
               if (override_value(job, "mode") or "train") == "train" and override_value(job, "resume") is None]
    taken = [why for folder in folders if folder and (why := refusal(folder)) is not None]
    if taken:
        raise RunFolderTaken(f"multirun: {len(taken)} of its {len(jobs)} jobs would write into an earlier run's "
                             f"folder (job n writes into <output_dir>/<n>); nothing was started. " + taken[0])


def multirun(argv: list[str]) -> None:
    """`-m`: the runs of `sweep(argv)` one after another, each in a folder of its own
    (`multirun_jobs`); one that fails is reported and the others still run."""
    log_to_console()
    jobs = multirun_jobs(argv)
    refuse_taken_jobs(jobs)
    failed = []
    for n, combination in enumerate(jobs):
        log.info("multirun %d: %s", n, " ".join(combination))
        try:
            run_command(combination)
        except USER_ERRORS as err:
            log.error("multirun %d failed: %s", n, err)
            failed.append(n)
    if failed:
        raise RunFailed(f"multirun: runs {failed} failed (see the log above)")


def sweep(argv: list[str]) -> list[list[str]]:
    """`-m`: every combination of the comma-separated values (Hydra's sweep syntax), in order."""
    from app.config import parse_overrides

    parsed = parse_overrides(argv)  # a syntax error: which override, and how to quote it
    choices = [[f"{o.get_key_element()}={v}" for v in o.sweep_string_iterator()] if o.is_sweep_override()
               else [o.input_line] for o in parsed]
    return [list(c) for c in itertools.product(*choices)]
