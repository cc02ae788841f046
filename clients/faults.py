"""Fault injection on the client side (`faults.*` in the config), to test what a run survives."""

from __future__ import annotations

import time

import numpy as np


class InjectedFault(RuntimeError):
    """Raised on purpose by `faults.client_raise`, to test what a run survives."""


def _hit(pairs, pid: int, rnd: int) -> bool:
    return any(int(p) == pid and int(r) == rnd for p, r in (pairs or []))


def before_training(faults: dict, pid: int, rnd: int) -> None:
    """`client_hang`: sleep hang_seconds; `client_raise`: raise InjectedFault."""
    if _hit(faults.get("client_hang"), pid, rnd):
        time.sleep(float(faults.get("hang_seconds", 60)))
    if _hit(faults.get("client_raise"), pid, rnd):
        raise InjectedFault(f"injected fault: client {pid} raises in round {rnd}")


def corrupt(faults: dict, arrays: list[np.ndarray], pid: int, rnd: int) -> list[np.ndarray]:
    """`nan_update`: the first array becomes NaN; `wrong_shape_update`: it loses an element."""
    if _hit(faults.get("nan_update"), pid, rnd):
        arrays[0] = np.full_like(arrays[0], np.nan)
    if _hit(faults.get("wrong_shape_update"), pid, rnd):
        arrays[0] = arrays[0].reshape(-1)[:-1].copy()
    return arrays
