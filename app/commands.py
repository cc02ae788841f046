"""The commands main.py offers, each composing its config once:

    python main.py [key=value ...]                      train: simulate the federation (mode=train)
    python main.py resume=<run dir> [key=value ...]     continue an interrupted run
    python main.py mode=evaluate checkpoint=<path>|init evaluate without training (app/offline.py)
    python main.py mode=route checkpoint=<path> dataset=<downstream>   route an SDR checkpoint
    python main.py mode=export checkpoint=<path>        the learned network as safetensors + ONNX (app/export.py)
    python main.py mode=predict checkpoint=<path> images=<folder>      a detector on a folder (app/predict.py)
    python main.py mode=embed checkpoint=<path> images=<folder|.npz>   features of images (app/embed.py)
    python main.py -m key=a,b ...                       one run per combination, one after another
"""

from __future__ import annotations

import itertools
import logging
import sys
import time
from pathlib import Path

from app.config import compose, override_value, to_plain
from app.embed import embed
from app.export import export
from app.offline import evaluate_offline, evaluation_line, evaluation_setup, route_offline
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
    """Where Hydra would have put this run (conf/config.yaml `hydra.run.dir`)."""
    return str(composed.hydra.run.dir)


def fresh_run(argv: list[str]) -> tuple[dict, str]:
    """The config of a new run and its output directory (output_dir, else Hydra's run dir)."""
    composed = compose(argv, with_hydra=True)
    cfg = to_plain(composed)
    return cfg, cfg.get("output_dir") or run_dir(composed)


def train(argv: list[str]) -> None:
    cfg, out_dir, resume_state = run_config(argv, fresh_run)
    log_to_console()
    report = run(cfg, out_dir, resume_state)
    log.info(report.closing_line())


def evaluate(argv: list[str]) -> None:
    cfg, models, layout, composed = evaluation_setup(argv)
    out_dir = cfg.get("output_dir") or run_dir(composed)
    log_to_console()
    print(evaluation_line(cfg, evaluate_offline(cfg, models, layout, out_dir)))
    log.info("evaluate: %s/evaluation.json", out_dir)


def route(argv: list[str]) -> None:
    from tasks.sdr.route import table

    composed = compose(argv, with_hydra=True)
    cfg = dict(to_plain(composed), command_line=list(argv))
    out_dir = cfg.get("output_dir") or run_dir(composed)
    log_to_console()
    print(table(route_offline(cfg, out_dir)))
    log.info("route: %s/route.json (and the exported backbone)", out_dir)


COMMANDS = {"train": train, "evaluate": evaluate, "route": route, "export": export, "predict": predict, "embed": embed}


def run_command(argv: list[str]) -> None:
    mode = override_value(argv, "mode") or "train"
    COMMANDS[RUN["mode"].check(mode, "mode")](argv)


def multirun(argv: list[str]) -> None:
    """`-m`: the runs of `sweep(argv)` one after another, each in multirun/<date>/<time>/<n>
    unless output_dir is given; one that fails is reported and the others still run."""
    log_to_console()
    root = Path("multirun") / time.strftime("%Y-%m-%d/%H-%M-%S")
    failed = []
    for n, combination in enumerate(sweep(argv)):
        if override_value(combination, "output_dir") is None and override_value(combination, "resume") is None:
            combination = [*combination, f"output_dir={root / str(n)}"]
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
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(argv)
    choices = [[f"{o.get_key_element()}={v}" for v in o.sweep_string_iterator()] if o.is_sweep_override()
               else [o.input_line] for o in parsed]
    return [list(c) for c in itertools.product(*choices)]
