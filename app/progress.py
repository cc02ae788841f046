"""The live line while a round runs: clients done, images/s, and the round's and the run's time left.

Shown only on a terminal (`progress=auto`) or when asked (`progress=true`); tests and piped output
keep just the per-round lines. The strategy tells `Progress` when a round starts and when each
client's update arrives (ServerHooks.progress); the report clears the line before it prints the
round's own line (app/report.py), so the log keeps today's form.

Estimates, in order of what is known: the clients done in this round (their time per client,
times the clients still due, in waves of the clients that run in parallel); else the rounds
already done; else `calibrate`'s measured rate of a few real training steps before the run, so a
paper-scale run on a CPU says within its first minute how long it will take.
"""

from __future__ import annotations

import math
import sys
import threading
import time

from app.schema import clients_per_round


def clock(seconds: float) -> str:
    if 0 < seconds < 0.5:
        return "<0:01"  # not "0:00": a round of a tiny run still takes time
    seconds = max(0, int(round(seconds)))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


def enabled(setting, stream) -> bool:
    if setting == "auto":
        return bool(getattr(stream, "isatty", lambda: False)())
    return bool(setting)


class Progress:
    """Round and run timing, and the live line (when `show`)."""

    def __init__(self, num_rounds: int, parallel: int, show: bool, stream=None, refresh: float = 1.0,
                 first_round_estimate: float | None = None, done_rounds: int = 0):
        self.num_rounds, self.parallel, self.show = num_rounds, max(1, parallel), show
        self.stream, self.refresh = stream or sys.stderr, refresh
        self.first_round_estimate = first_round_estimate
        self.done_rounds = done_rounds
        self.round_times: list[float] = []
        self.round = self.clients = self.done = self.images = 0
        self.started = self.run_started = self.last_done_at = time.perf_counter()
        self._lock, self._stop, self._thread, self._width = threading.Lock(), threading.Event(), None, 0

    # ------------------------------------------------------------------ events
    def round_started(self, server_round: int, clients: int) -> None:
        with self._lock:
            self.round, self.clients, self.done, self.images = server_round, clients, 0, 0
            self.started = self.last_done_at = time.perf_counter()
        if self.show and self._thread is None:  # first drawn after `refresh`, below Flower's round-start lines
            self._thread = threading.Thread(target=self._loop, name="fedssl-progress", daemon=True)
            self._thread.start()

    def client_done(self, num_examples: int) -> None:
        with self._lock:
            self.done += 1
            self.images += int(num_examples)
            self.last_done_at = time.perf_counter()
            last = self.done >= self.clients
        if last:  # Flower logs the aggregation next: leave it a clean line
            self.clear()
        else:
            self.render()

    def round_finished(self, wall_seconds: float | None = None) -> None:
        """The round's record is about to be printed: remember its time, clear the line."""
        with self._lock:
            if self.round:
                self.round_times.append(wall_seconds if wall_seconds else time.perf_counter() - self.started)
                self.done_rounds = max(self.done_rounds, self.round)
            self.round = 0
        self.clear()

    def close(self) -> None:
        self._stop.set()
        self.clear()

    # ------------------------------------------------------------------ estimates
    def round_left(self, now: float | None = None) -> float | None:
        """Seconds this round still needs (None: nothing to estimate from yet)."""
        elapsed = (now or time.perf_counter()) - self.started
        if self.done:  # the pace of the clients done so far (up to the last answer: it only counts down)
            waves_total = math.ceil(self.clients / self.parallel)
            per_wave = (self.last_done_at - self.started) / (self.done / self.parallel)
            return max(0.0, per_wave * waves_total - elapsed)
        typical = self.typical_round()
        return None if typical is None else max(0.0, typical - elapsed)

    def typical_round(self) -> float | None:
        if self.round_times:
            return sum(self.round_times) / len(self.round_times)
        return self.first_round_estimate

    def run_left(self, now: float | None = None) -> float | None:
        left = self.round_left(now)
        typical = self.typical_round()
        if left is None:
            return None
        if typical is None:  # only this round's clients so far: assume rounds like this one
            typical = (now or time.perf_counter()) - self.started + left
        return left + typical * max(0, self.num_rounds - max(self.round, self.done_rounds))

    def line(self, now: float | None = None) -> str:
        now = now or time.perf_counter()
        elapsed = now - self.started
        rate = self.images / elapsed if self.done and elapsed > 0 else None
        parts = [f"round {self.round}/{self.num_rounds}: {self.done}/{self.clients} clients",
                 f"{rate:.0f} img/s" if rate else "training"]
        left, run = self.round_left(now), self.run_left(now)
        parts.append(f"round ~{clock(left)} left" if left is not None else f"{clock(elapsed)} elapsed")
        if run is not None:
            parts.append(f"run ~{clock(run)} left")
        return ", ".join(parts)

    # ------------------------------------------------------------------ drawing
    def render(self) -> None:
        if not self.show or not self.round or self.done >= self.clients:
            return
        text = self.line()
        with self._lock:
            pad = max(0, self._width - len(text))
            self._width = len(text)
            self.stream.write("\r" + text + " " * pad)
            self.stream.flush()

    def clear(self) -> None:
        if not self.show or not self._width:
            return
        with self._lock:
            self.stream.write("\r" + " " * self._width + "\r")
            self.stream.flush()
            self._width = 0

    def _loop(self) -> None:
        while not self._stop.wait(self.refresh):
            self.render()


def for_run(cfg: dict, parallel: int, first_round_estimate: float | None = None, done_rounds: int = 0,
            stream=None) -> Progress:
    stream = stream or sys.stderr
    return Progress(int(cfg["num_rounds"]), parallel, enabled(cfg.get("progress", "auto"), stream), stream,
                    first_round_estimate=first_round_estimate, done_rounds=done_rounds)


def round_estimate(seconds_per_image: float, images_per_client: float, cfg: dict, parallel: int) -> float:
    """A round's fit time from a measured per-image time: waves of `parallel` clients."""
    waves = math.ceil(clients_per_round(cfg) / max(1, parallel))
    return waves * images_per_client * int(cfg["local_epochs"]) * seconds_per_image
