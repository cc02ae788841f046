"""A run stopped by a signal ends as Ctrl-C does: recorded as failed, with the signal and its saved state.

SIGTERM (a scheduler's or `kill`'s stop) and SIGHUP (a closed terminal) would otherwise end the
process at once, leaving summary.json at `status: running` as if the run were still going. Inside
`signals_stop_run()` they raise `Stopped`, a KeyboardInterrupt, in the main thread: the run unwinds
like Ctrl-C, the report records `status: failed` with the signal's name and the rounds done, and
`resume=<run dir>` continues from the last saved round.
"""

from __future__ import annotations

import signal
from contextlib import contextmanager

CAUGHT = ("SIGTERM", "SIGHUP")


class Stopped(KeyboardInterrupt):
    """The run was stopped by signal `name` (SIGINT is Ctrl-C)."""

    def __init__(self, name: str):
        super().__init__(name)
        self.name = name
        self.signum = int(getattr(signal, name))


def stop_of(err: BaseException) -> Stopped | None:
    """The stop that `err` is, if it is one: Ctrl-C, `Stopped`, or the `sys.exit(signum)` that Ray's
    own SIGTERM handler raises once ray.init has replaced ours (Flower's simulation starts Ray)."""
    if isinstance(err, Stopped):
        return err
    if isinstance(err, KeyboardInterrupt):
        return Stopped("SIGINT")
    if isinstance(err, SystemExit) and err.code == int(signal.SIGTERM):  # not SIGHUP's 1: every error's exit
        return Stopped("SIGTERM")
    return None


def stopped_text(stop: Stopped, summary: dict) -> str:
    """Why a stopped run ended, in words: the signal, and the rounds it finished of those asked."""
    how = "Ctrl-C (SIGINT)" if stop.name == "SIGINT" else stop.name
    return f"stopped by {how} after {len(summary['rounds'])} of {summary['num_rounds']} rounds"


@contextmanager
def signals_stop_run():
    """SIGTERM and SIGHUP raise `Stopped` in the main thread while the block runs (elsewhere, or
    outside the main thread, they keep their handlers)."""
    def stop(signum, frame):
        raise Stopped(signal.Signals(signum).name)

    previous = {}
    for name in CAUGHT:
        sig = getattr(signal, name, None)
        if sig is None:
            continue  # not on this platform (SIGHUP on Windows)
        try:
            previous[sig] = signal.signal(sig, stop)
        except ValueError:  # not the main thread: signals cannot be caught here
            pass
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
