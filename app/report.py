"""What a run leaves behind as it goes: summary.json after every round, a console line, W&B,
and at the end the run's plots (app/plots.py).

One `RunReport` per experiment lives on the server side (convention 8, docs/architecture.md#conventions-and-where-they-come-from). The strategy hands
it one record per round; the report keeps the history (in the shape app/summary.py owns),
rewrites summary.json atomically after every round (so a crash still leaves every finished round
on disk) and logs the same numbers to W&B, per-client values under `client/<partition-id>/...`.
Nothing is written until `start()`: a run refused before training leaves no output.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

from app.outputs import refuse_taken
from app.plots import write_plots
from app.progress import Progress
from app.summary import SummarySchema, fail
from tasks.common import atomic
from tasks.common.memory import release_memory

log = logging.getLogger("fedssl")
LOG_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"  # Hydra's job-logging format


class RunLog(logging.FileHandler):
    """The run's main.log; when it cannot be written (a full disk) it says so once, in one line on
    stderr, and the run goes on logging to the console only (no traceback per log line)."""

    broken = False

    def emit(self, record: logging.LogRecord) -> None:
        if not self.broken:
            super().emit(record)

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - logging's name
        if not self.broken:
            self.broken = True
            err = sys.exc_info()[1]
            print(f"warning: cannot write {self.baseFilename} ({getattr(err, 'strerror', None) or err}); "
                  f"the run's log goes on on the console only", file=sys.stderr, flush=True)


class RunReport:
    def __init__(self, cfg: dict, out_dir: Path, schema: SummarySchema, task: str, resume_state: dict | None = None):
        self.cfg, self.out_dir, self.schema = cfg, Path(out_dir), schema
        self.path = self.out_dir / "summary.json"
        self.resume_state, self.wandb, self.log_file = resume_state, None, None
        self.unsaved: str | None = None  # why summary.json could not be written at the end, if it could not
        if resume_state is not None:
            k = int(resume_state["round"])
            self.summary = schema.resumed(resume_state["summary"], cfg, str(self.out_dir), k)
            log.info("resuming %s from round %d of %d", self.out_dir, k, cfg["num_rounds"])
        else:
            self.summary = schema.new(cfg, task, str(self.out_dir))
        self.t0 = time.perf_counter() - self.summary["wall_seconds"]
        done = int(resume_state["round"]) if resume_state is not None else 0
        self.progress = Progress(int(cfg["num_rounds"]), 1, show=False, done_rounds=done)  # the run replaces it

    def start(self) -> None:
        """Create the output directory, write summary.json, log to its main.log, start (or resume) W&B."""
        if self.resume_state is None:
            refuse_taken(self.out_dir)  # checked before the run was built; again now that it starts
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.log_file = RunLog(self.out_dir / "main.log")
        self.log_file.setFormatter(logging.Formatter(LOG_FORMAT))
        logging.getLogger().addHandler(self.log_file)
        resume_id = self.resume_state.get("wandb_run_id") if self.resume_state else None
        self.wandb = self._start_wandb(resume_id)
        self._save()

    # ------------------------------------------------------------------ W&B
    def _start_wandb(self, resume_id: str | None = None):
        wb = self.cfg["wandb"]
        if wb["mode"] == "disabled":
            return None
        os.environ.setdefault("WANDB_DIR", str(self.out_dir))
        os.environ.setdefault("WANDB_SILENT", "true")
        import wandb

        run = wandb.init(
            mode=wb["mode"], project=wb["project"], entity=wb.get("entity"), name=wb.get("name"),
            group=wb.get("group"), tags=list(wb.get("tags") or []), config=self.cfg, dir=str(self.out_dir),
            reinit="finish_previous", id=resume_id, resume="allow" if resume_id else None,
        )
        self.summary["wandb"].update({"run_id": run.id, "dir": str(getattr(run, "dir", self.out_dir))})
        return run

    # ------------------------------------------------------------------ rounds
    def report(self, record: dict) -> None:
        """Hook for the strategy: store one round's record, print a line, save, log."""
        self.schema.add(self.summary, record, self.cfg["num_rounds"])
        self.summary["wall_seconds"] = time.perf_counter() - self.t0
        if int(record["round"]) > 0:
            self.progress.round_finished(record.get("wall_seconds"))
        log.info(self.schema.progress_line(record, self.cfg["num_rounds"]))
        self._save()
        if self.wandb is not None:
            self.wandb.log(self.schema.wandb_values(record), step=int(record["round"]))
        release_memory()  # the round's updates and evaluation models are gone

    # ------------------------------------------------------------------ end of run
    def fail(self, error: str) -> None:
        """Mark the run failed with `error`; never raises (a full disk is noted in `unsaved`)."""
        fail(self.summary, error)
        self._save_at_end()

    def finish(self) -> dict:
        self.progress.close()
        if self.summary["status"] == "running":
            fail(self.summary, self.summary["error"] or (
                f"the federation stopped after {len(self.summary['rounds'])} of "
                f"{self.cfg['num_rounds']} rounds; see the log above"))
        self.summary["wall_seconds"] = time.perf_counter() - self.t0
        if not self._save_at_end() and self.summary["status"] == "completed":
            fail(self.summary, self.unsaved)  # the run's result is not on disk: not a completed run
        plots = self._plots() if self.unsaved is None else []
        if self.wandb is not None:
            if plots:
                import wandb

                self.wandb.log({f"plots/{p.stem}": wandb.Image(str(p)) for p in plots})
            for key, value in self.schema.wandb_final(self.summary).items():
                self.wandb.summary[key] = value
            self.wandb.summary["status"] = self.summary["status"]
            self.wandb.finish(exit_code=0 if self.summary["status"] == "completed" else 1)
            self.wandb = None
        self._closing_line()
        if self.log_file is not None:
            logging.getLogger().removeHandler(self.log_file)
            self.log_file.close()
            self.log_file = None
        return self.summary

    def _plots(self) -> list[Path]:
        """The run's PNG plots next to summary.json; a plotting error is reported, never fatal."""
        try:
            return write_plots(self.summary, self.out_dir)
        except Exception as e:  # noqa: BLE001 - the results are saved already; a plot must not fail the run
            log.warning("could not draw the run's plots (%s: %s); redraw with `python -m app.plots %s`",
                        type(e).__name__, e, self.out_dir)
            return []

    def closing_line(self) -> str:
        return self.schema.closing_line(self.summary)

    def _closing_line(self) -> None:
        """The run's last line: `done: ...` on the console and in main.log; a failed run's reason in
        main.log only (main.py prints it on the console as the command's error)."""
        if self.summary["status"] == "completed":
            log.info(self.closing_line())
        elif self.log_file is not None:
            self.log_file.handle(log.makeRecord(log.name, logging.ERROR, __file__, 0,
                                                f"failed: {self.summary['error']}", None, None))

    def _save(self) -> None:  # after start(), which made out_dir
        atomic.write_json_atomic(self.path, self.summary)

    def _save_at_end(self) -> bool:
        """Save summary.json as a run ends; an OSError (a full disk) is kept in `unsaved`, not raised,
        so that the error that ended the run is the one reported (summary.json keeps its last version)."""
        try:
            self._save()
        except OSError as err:
            self.unsaved = f"{self.path} could not be written ({err.strerror or err}), it still shows the run " \
                           f"as of its last saved round"
            return False
        self.unsaved = None
        return True

    def failure_line(self) -> str:
        """One line for a failed run: why, where its results are, how to continue it."""
        state = self.out_dir / "state" / "server.pt"
        again = (f"; once the cause is fixed, continue it from its last saved round with resume={self.out_dir}"
                 if state.is_file() else "")
        where = self.unsaved or f"results so far: {self.path}"
        where = "" if where == self.summary["error"] else f" ({where})"
        return f"run failed: {self.summary['error']}{where}{again}"
