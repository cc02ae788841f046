"""Fault injection on the client side (`faults.*` in the config), to test what a run survives.

Faults by round (`client_raise`, `client_hang`, `nan_update`, `wrong_shape_update`: lists of
[partition_id, round]) and hostile clients (`faults.hostile`: a list of [partition_id, attack];
that partition's client behaves so in every round). The attacks (names are the API):
- sign_flip_x10: upload = received - 10 * (trained - received) on floating arrays (the update
  sign-flipped and scaled by ten); huge_count: num_examples = 10**12; noise: each floating array
  replaced by Gaussian noise of its own mean and std, seeded by (partition, round);
- text_metric: metric loss = "x"; claim_partition: metric partition_id = (pid + 1) % num_clients;
- wrong_dtype / float64_huge / complex: floating arrays sent as uint8 (values clipped to 0-255) /
  float64 full of 1e300 / complex64, whatever the transfer dtype;
- steal_identity / negative_identity: get_properties answers partition (pid + 1) % num_clients / -1;
- fatal_error: fit answers [], 0, {"partition_id": pid, "fatal_error": "injected fatal error"}
  without training; stall: sleeps hang_seconds before training (with round_timeout).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from protocol.checks import Spec
from protocol.transfer import encode

ATTACKS = ("sign_flip_x10", "huge_count", "noise", "text_metric", "wrong_dtype", "float64_huge", "complex",
           "claim_partition", "steal_identity", "negative_identity", "fatal_error", "stall")
FATAL_ERROR = "injected fatal error"


@dataclass(frozen=True)
class HostilePairs(Spec):
    """`faults.hostile`: a list of [partition_id >= 0, attack] pairs, the attack one of ATTACKS."""

    def describe(self) -> str:
        return f"a list of [partition_id, attack] pairs, attack one of {list(ATTACKS)}"

    def fits(self, v):
        if not isinstance(v, (list, tuple)):
            return "type"
        ok = all(isinstance(p, (list, tuple)) and len(p) == 2 and isinstance(p[0], int)
                 and not isinstance(p[0], bool) and p[0] >= 0
                 and isinstance(p[1], str) and p[1] in ATTACKS for p in v)
        return None if ok else "type"


class InjectedFault(RuntimeError):
    """Raised on purpose by `faults.client_raise`, to test what a run survives."""


def _hit(pairs, pid: int, rnd: int) -> bool:
    return any(int(p) == pid and int(r) == rnd for p, r in (pairs or []))


def hostile(faults: dict, pid: int) -> set[str]:
    """The attacks partition `pid`'s client makes (every round)."""
    return {str(a) for p, a in (faults.get("hostile") or []) if int(p) == pid}


def before_training(faults: dict, pid: int, rnd: int) -> tuple | None:
    """`client_hang` (and the `stall` attack): sleep hang_seconds; `client_raise`: raise InjectedFault.
    Returns fit's whole answer when the client answers without training (`fatal_error`), else None."""
    attacks = hostile(faults, pid)
    if "fatal_error" in attacks:
        return [], 0, {"partition_id": pid, "fatal_error": FATAL_ERROR}
    if _hit(faults.get("client_hang"), pid, rnd) or "stall" in attacks:
        time.sleep(float(faults.get("hang_seconds", 60)))
    if _hit(faults.get("client_raise"), pid, rnd):
        raise InjectedFault(f"injected fault: client {pid} raises in round {rnd}")
    return None


def corrupt(faults: dict, arrays: list[np.ndarray], pid: int, rnd: int) -> list[np.ndarray]:
    """`nan_update`: the first array becomes NaN; `wrong_shape_update`: it loses an element."""
    if _hit(faults.get("nan_update"), pid, rnd):
        arrays[0] = np.full_like(arrays[0], np.nan)
    if _hit(faults.get("wrong_shape_update"), pid, rnd):
        arrays[0] = arrays[0].reshape(-1)[:-1].copy()
    return arrays


def _floating(a) -> bool:
    return isinstance(a, np.ndarray) and np.issubdtype(a.dtype, np.floating)


def sign_flip_x10(trained: list[np.ndarray], received: list[np.ndarray]) -> list[np.ndarray]:
    """received - 10 * (trained - received) on the floating arrays whose received twin has the same
    shape (computed in float64, sent in the array's dtype); other arrays unchanged."""
    out = []
    for i, a in enumerate(trained):
        r = received[i] if i < len(received) else None
        if _floating(a) and r is not None and np.shape(r) == a.shape:
            r64 = np.asarray(r, dtype=np.float64)
            out.append((r64 - 10.0 * (a.astype(np.float64) - r64)).astype(a.dtype))
        else:
            out.append(a)
    return out


def noise(arrays: list[np.ndarray], pid: int, rnd: int) -> list[np.ndarray]:
    """Each floating array replaced by Gaussian noise of its own mean and std, seeded by (pid, rnd)."""
    rng = np.random.default_rng([pid, rnd])
    out = []
    for a in arrays:
        if _floating(a) and a.size:
            a64 = a.astype(np.float64)
            out.append(rng.normal(float(a64.mean()), float(a64.std()), size=a.shape).astype(a.dtype))
        else:
            out.append(a)
    return out


def _wrong_types(attacks: set[str], arrays: list[np.ndarray]) -> list[np.ndarray]:
    """wrong_dtype, float64_huge, complex on the floating arrays (the transfer encoding then leaves
    them as they are: it encodes float32 arrays only, so they travel in these dtypes)."""
    out = []
    for a in arrays:
        if _floating(a) and "wrong_dtype" in attacks:
            a = np.clip(np.nan_to_num(a.astype(np.float64)), 0, 255).astype(np.uint8)
        elif _floating(a) and "float64_huge" in attacks:
            a = np.full(a.shape, 1e300, dtype=np.float64)
        elif _floating(a) and "complex" in attacks:
            a = a.astype(np.complex64)
        out.append(a)
    return out


def hostile_reply(faults: dict, pid: int, rnd: int, num_clients: int, upload: list[np.ndarray],
                  received: list[np.ndarray], num_examples: int, metrics: dict,
                  transfer_dtype: str) -> tuple[list[np.ndarray], int, dict]:
    """fit's answer (wire arrays, example count, metrics) as partition `pid`'s attacks make it:
    value attacks on the trained arrays, then the dtype attacks, then the transfer encoding."""
    attacks = hostile(faults, pid)
    if "sign_flip_x10" in attacks:
        upload = sign_flip_x10(upload, received)
    if "noise" in attacks:
        upload = noise(upload, pid, rnd)
    wire = encode(_wrong_types(attacks, upload), transfer_dtype)
    metrics = dict(metrics)
    if "huge_count" in attacks:
        num_examples = 10**12
    if "text_metric" in attacks:
        metrics["loss"] = "x"
    if "claim_partition" in attacks:
        metrics["partition_id"] = (pid + 1) % int(num_clients)
    return wire, num_examples, metrics


def claimed_partition(faults: dict, pid: int, num_clients: int) -> int:
    """The partition get_properties answers: its own, or another (steal_identity) or -1 (negative_identity)."""
    attacks = hostile(faults, pid)
    if "steal_identity" in attacks:
        return (pid + 1) % int(num_clients)
    if "negative_identity" in attacks:
        return -1
    return pid
