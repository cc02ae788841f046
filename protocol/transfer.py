"""Weights on the wire in half precision (`transfer_dtype`, issue 13): encode before sending,
decode on arrival, in both directions. NumPy only.

- float16: IEEE half (NumPy's own dtype); values beyond +-65504 become inf, which the server's
  update check then rejects with the key named.
- bfloat16: NumPy has no bfloat16, so it travels as uint16 holding the upper half of the float32
  bits, rounded to nearest even (the rounding torch and the hardware use); same range as float32,
  8 bits of mantissa.
- Only float32 arrays are encoded. Integer arrays (BatchNorm's num_batches_tracked) and anything
  else travel exactly as they are.
Decoding needs the layout: the receiver knows which positions are float32 (Layout.dtypes).
Whoever decodes computes in float32 again: the server keeps fp32 global weights and aggregates in
fp32 (float64 accumulation, protocol/weights.py); a client trains in its own precision.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from protocol.weights import NDArrays

TRANSFER_DTYPES = ("float32", "float16", "bfloat16")


def bf16_bits(a: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 as uint16 bits, round to nearest even (NaN stays NaN)."""
    bits = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)
    rounded = bits + (np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1)))
    out = (rounded >> np.uint32(16)).astype(np.uint16)
    nan = np.isnan(a)
    if nan.any():
        out[nan] = np.uint16(0x7FC0)
    return out


def from_bf16_bits(bits: np.ndarray) -> np.ndarray:
    """uint16 bfloat16 bits -> float32 (exact)."""
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << np.uint32(16)).view(np.float32)


def encode(arrays: NDArrays, dtype: str) -> NDArrays:
    """The arrays as they travel: float32 ones in `dtype`, the others unchanged."""
    if dtype not in TRANSFER_DTYPES:
        raise ValueError(f"transfer_dtype must be one of {', '.join(TRANSFER_DTYPES)}, got {dtype!r}")
    if dtype == "float32":
        return list(arrays)
    out = []
    for a in arrays:
        if a.dtype != np.float32:
            out.append(a)
        elif dtype == "float16":
            with np.errstate(over="ignore"):
                out.append(a.astype(np.float16))
        else:
            out.append(bf16_bits(a))
    return out


def decode(arrays: NDArrays, dtypes: Sequence[str] | None, dtype: str) -> NDArrays:
    """Back to each position's own dtype (`dtypes`, from the layout) after travelling in `dtype`.

    Arrays that arrive already in their own dtype pass unchanged (a float32 sender, integer
    buffers); a float32 position that arrives in another dtype than `dtype` is refused.
    dtypes=None (a client, before it has built its model): every float16 array (transfer
    float16) or uint16 array (transfer bfloat16) was float32; the models here have no others."""
    if dtype == "float32":
        return list(arrays)
    if dtypes is None:
        dtypes = ["float32" if str(a.dtype) in ("float16", "uint16") else str(a.dtype) for a in arrays]
    if len(arrays) != len(dtypes):
        return list(arrays)  # the update check names the count mismatch
    out = []
    for a, own in zip(arrays, dtypes):
        if str(a.dtype) == own or own != "float32":
            out.append(a)
        elif dtype == "float16" and a.dtype == np.float16:
            out.append(a.astype(np.float32))
        elif dtype == "bfloat16" and a.dtype == np.uint16:
            out.append(from_bf16_bits(a))
        else:
            raise ValueError(f"a float32 array arrived as {a.dtype}, but transfer_dtype is {dtype}")
    return out

