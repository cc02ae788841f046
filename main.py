"""Entry point: `python main.py strategy=fedu dataset=cifar100 num_clients=5 [key=value ...]`.

Composes the Hydra config (conf/), refuses bad input before any training, runs the
federation in Flower's simulation engine and prints where summary.json and the checkpoint are.
`python main.py mode=route checkpoint=<sdr run>/checkpoint_final.pt dataset=<downstream>` ranks
the sub-networks of an SDR checkpoint on a downstream data set instead (tasks/sdr_route.py).
`python main.py mode=evaluate checkpoint=<run>/checkpoint_final.pt|init` evaluates a checkpoint,
or the initial (random) model, without training (app/offline_eval.py).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from app.config import ConfigError, compose, to_plain

log = logging.getLogger("fedssl")


def _user_errors() -> tuple[type[BaseException], ...]:
    from app.simulation import RunFailed
    from strategies import RunStopped
    from tasks.checkpoint import CheckpointError
    from tasks.data import DataError
    from tasks.partition import PartitionError

    return (ConfigError, DataError, PartitionError, CheckpointError, RunFailed, RunStopped)


@hydra.main(config_path="conf", config_name="config", version_base=None)
def main(cfg: DictConfig) -> None:
    from app.simulation import run

    logging.getLogger("flwr").propagate = False  # flwr prints its own lines; no duplicates
    logging.getLogger("alembic").setLevel(logging.WARNING)
    plain = to_plain(cfg)
    overrides = [o for o in HydraConfig.get().overrides.task if o.split("=", 1)[0] not in ("resume", "output_dir")]
    plain["command_line"] = overrides
    if plain["mode"] == "route":
        return route_command(plain)
    if plain["mode"] == "evaluate":
        return evaluate_command(plain)
    try:
        resume_state = None
        if plain["resume"]:
            from app.resume import load_state, resumed_config

            resume_state = load_state(plain["resume"])
            plain = resumed_config(resume_state, overrides)
            out_dir = plain["resume"] = plain["output_dir"] = str(Path(cfg.resume))
        else:
            out_dir = plain.get("output_dir") or HydraConfig.get().runtime.output_dir
        plain["output_dir"] = str(out_dir)
        summary = run(plain, out_dir, resume_state)
    except _user_errors() as err:
        sys.exit(f"error: {err}")
    final = summary["final"]
    if "rank1" in final:  # re-identification
        scores = f"rank-1 {100 * final['rank1']:.2f}% | mAP {100 * final['mAP']:.2f}%"
    else:
        scores = (f"kNN {100 * final.get('knn_accuracy', float('nan')):.2f}% | "
                  f"linear {100 * final.get('linear_accuracy', float('nan')):.2f}%")
    log.info("done: %s on %s, %d clients, %d rounds | %s | %.0fs | %s", plain["strategy"]["name"],
             plain["dataset"]["name"], plain["num_clients"], plain["num_rounds"], scores,
             summary["wall_seconds"], f"{out_dir}/summary.json")


def offline_command(plain: dict, run, describe, written: str) -> None:
    """A mode that runs no federation: `run(config, out_dir)` -> report, printed by `describe`."""
    out_dir = plain.get("output_dir") or HydraConfig.get().runtime.output_dir
    try:
        report = run(plain, out_dir)
    except _user_errors() as err:
        sys.exit(f"error: {err}")
    print(describe(report))
    log.info("%s: %s/%s", plain["mode"], out_dir, written)


def route_command(plain: dict) -> None:
    """mode=route: rank the paths of an SDR checkpoint on a downstream data set, export the best."""
    from tasks.sdr_route import route, table

    offline_command(plain, route, table, "route.json (and the exported backbone)")


def evaluate_command(plain: dict) -> None:
    """mode=evaluate: a checkpoint (or checkpoint=init, the initial model) evaluated once, no training."""
    from app.offline_eval import evaluate_offline, summary_line

    offline_command(plain, evaluate_offline, summary_line, "evaluation.json")


def check_command_line(argv: list[str]) -> None:
    """Fail fast, with the valid keys/choices listed, on a typo in the overrides."""
    if any(a.startswith("-") for a in argv):  # --help, --cfg, -m ...: Hydra's own handling
        return
    try:
        compose(argv)
    except ConfigError as err:
        sys.exit(f"config error: {err}")


if __name__ == "__main__":
    check_command_line(sys.argv[1:])
    main()
