"""What a simulated run shows on the console: the project's lines; Flower's and Ray's go to main.log.

During `run_simulation` Flower logs its banners (the deprecation of `run_simulation`, the round
headers, "Evaluation returned no results", a history block whose "loss, centralized" is always
0.0 because our evaluation reports metrics only), and Ray warns about its own future defaults.
None of it is the run's result, so while the simulation runs:
- Flower's console handler shows errors only; everything it logs (INFO and up) goes to main.log;
- Python warnings raised in this process (Ray's FutureWarning, deprecations) go to main.log;
- Flower inside Ray's workers logs errors only (FLWR_LOG_LEVEL=ERROR, unless the user set it):
  its "Manually terminating ClientAppActor" warning on every successful run stays out of sight;
- colour codes only where the console is a terminal.
Errors still reach the console; the project's own lines (app/report.py) are unchanged.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings


def _terminal(stream) -> bool:
    return bool(getattr(stream, "isatty", lambda: False)())


@contextlib.contextmanager
def libraries_to_log(log_file: logging.Handler | None):
    """Within the block, Flower's and the warnings' lines go to `log_file` (the run's main.log)."""
    from flwr.common.logger import ConsoleHandler

    flower = logging.getLogger("flwr")
    consoles = [h for h in flower.handlers if isinstance(h, ConsoleHandler)]
    saved = [(h, h.level, h.colored) for h in consoles]
    for h in consoles:
        h.setLevel(logging.ERROR)
        h.colored = _terminal(h.stream)
    py_warnings = logging.getLogger("py.warnings")
    saved_propagate, saved_show = py_warnings.propagate, warnings.showwarning
    file_level = log_file.level if log_file is not None else None
    if log_file is not None:
        log_file.setLevel(logging.INFO)  # Flower's logger passes DEBUG records on
        flower.addHandler(log_file)
        py_warnings.addHandler(log_file)
    py_warnings.propagate = False  # not to the console (the root logger's handlers)
    logging.captureWarnings(True)
    set_level = "FLWR_LOG_LEVEL" not in os.environ
    if set_level:
        os.environ["FLWR_LOG_LEVEL"] = "ERROR"  # Ray's workers, started inside the block, inherit it
    try:
        yield
    finally:
        if set_level:
            os.environ.pop("FLWR_LOG_LEVEL", None)
        logging.captureWarnings(False)
        warnings.showwarning = saved_show
        py_warnings.propagate = saved_propagate
        if log_file is not None:
            flower.removeHandler(log_file)
            py_warnings.removeHandler(log_file)
            log_file.setLevel(file_level)
        for h, level, colored in saved:
            h.setLevel(level)
            h.colored = colored
