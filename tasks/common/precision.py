"""How a client's or the evaluator's tensors are computed: device, precision, memory format, compile.

`precision=auto|bf16|fp16|fp32` (issue 13):
- auto picks bf16 where the hardware computes it natively (a CPU with AVX512-BF16 or AMX-BF16, a
  CUDA GPU of compute capability >= 8.0), fp16 with gradient scaling on an older CUDA GPU, and
  fp32 otherwise; `Compute.reason` says which rule decided.
- Only the networks' forward passes run under autocast, and their outputs are cast back to fp32
  (`mixed_forward`), so losses, EMA updates, divergences and aggregation stay in fp32; weights,
  optimizer state and BatchNorm's running statistics are fp32 tensors throughout.
`channels_last` stores conv weights and images as NHWC (faster convolutions with oneDNN/cuDNN);
`compile` wraps the networks in torch.compile (an option: see benchmarks/speed.py for whether
it pays on this hardware).
"""

from __future__ import annotations

import contextlib
import weakref
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn

from protocol.checks import Bool, Choice

PRECISIONS = ("auto", "bf16", "fp16", "fp32")
CONFIG = {"precision": Choice(options=PRECISIONS), "channels_last": Bool(), "compile": Bool()}
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (Linux /proc/cpuinfo, read once per process); empty where they
    cannot be read."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def choose_precision(requested: str, device: torch.device, flags: set[str] | None = None) -> tuple[str, str]:
    """(precision, why) for `requested` on `device`; `flags` overrides the CPU's (for tests)."""
    if requested not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {requested!r}")
    if requested != "auto":
        return requested, "requested"
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        if major >= 8:
            return "bf16", f"CUDA compute capability {major}.{minor} computes bf16 natively"
        return "fp16", f"CUDA compute capability {major}.{minor} has no native bf16: fp16 with gradient scaling"
    if device.type == "cpu":
        native = sorted(set(NATIVE_BF16_FLAGS) & (cpu_flags() if flags is None else flags))
        if native:
            return "bf16", f"the CPU computes bf16 natively ({', '.join(native)})"
        return "fp32", "the CPU has no native bf16 (no avx512_bf16/amx_bf16 flag)"
    return "fp32", f"no mixed-precision rule for device type {device.type!r}"


def _to_fp32(value):
    if isinstance(value, torch.Tensor):
        return value.float() if value.is_floating_point() else value
    if isinstance(value, (tuple, list)):
        return type(value)(_to_fp32(v) for v in value)
    if isinstance(value, dict):
        return {k: _to_fp32(v) for k, v in value.items()}
    return value


def mixed_forward(module: nn.Module, autocast) -> nn.Module:
    """In training mode, run the forward of `module` and of each of its direct children under
    `autocast()` and cast their outputs to fp32 (once per module). A method's loss, written outside
    its networks' forwards, then reads fp32 tensors and runs in fp32 (matmuls of similarity
    matrices included). In eval mode the forwards run as they are (e.g. FedPav's cosine distance
    between outputs before and after training stays fp32 on both sides)."""
    for m in (module, *module.children()):
        if getattr(m, "_fedssl_mixed", False):
            continue

        # the module is held weakly and its class's forward unbound: no reference cycle, so the
        # model is freed as soon as its round drops it (not at the next garbage collection)
        def forward(*args, _ref=weakref.ref(m), _fn=type(m).forward, **kwargs):
            owner = _ref()
            if not owner.training:
                return _fn(owner, *args, **kwargs)
            with autocast():
                return _to_fp32(_fn(owner, *args, **kwargs))

        m.forward = forward
        m._fedssl_mixed = True
    return module


@dataclass(frozen=True)
class Compute:
    """Where and how tensors are computed. Build it with `compute_for(cfg, device)`."""

    device: torch.device
    precision: str = "fp32"
    reason: str = "requested"
    channels_last: bool = False
    compile: bool = False
    channels_last_note: str = ""  # why channels_last is off although asked ("" when it is as asked)

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.precision]

    def autocast(self):
        """The forward passes' context: autocast to bf16/fp16, or nothing at fp32."""
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def step(self):
        """One training step's context: autocast stays off (the loss runs in fp32), but the bf16/fp16
        copies of the weights the networks' autocast forwards make are kept until the step ends,
        so a network called on two views casts its weights once, not twice."""
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype, enabled=False)

    def scaler(self) -> torch.amp.GradScaler | None:
        """fp16 needs loss scaling (its gradients underflow); bf16 and fp32 do not."""
        return torch.amp.GradScaler(self.device.type) if self.precision == "fp16" else None

    def prepare(self, module: nn.Module) -> nn.Module:
        """Move `module` to the device (channels_last when asked); its forwards and its children's
        run in this precision with fp32 outputs; compiled when compile=true."""
        module.to(self.device)
        if self.channels_last:
            module.to(memory_format=torch.channels_last)
        if self.compile:
            for m in (module, *module.children()):
                if getattr(m, "_compiled_call_impl", None) is None:
                    m.compile()
        return mixed_forward(module, self.autocast) if self.precision != "fp32" else module

    def images(self, x: torch.Tensor) -> torch.Tensor:
        """A batch of NCHW images in the memory format the networks expect."""
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def describe(self) -> dict:
        return {"device": str(self.device), "precision": self.precision, "precision_reason": self.reason,
                "channels_last": self.channels_last, "compile": self.compile,
                **({"channels_last_note": self.channels_last_note} if self.channels_last_note else {})}


def slow_precision(compute: Compute) -> str | None:
    """One warning line when the precision runs but is slow on its device (fp16 on a CPU), else None."""
    if compute.precision == "fp16" and compute.device.type == "cpu":
        return ("precision=fp16 on a CPU runs about 8x slower than bf16 (CPUs have no fast fp16 arithmetic and fp16 "
                "adds gradient scaling): on a CPU use precision=bf16, or precision=auto (bf16 where the CPU computes "
                "it natively, else fp32)")
    return None


# measured with torch 2.14.1 on an AVX-512 CPU: the fp32 backward of a 1x1 stride-2 convolution with
# 8 input channels on 64x64 NHWC inputs (the detector's first shortcut at width 0.125) corrupts the
# heap inside oneDNN (`jit_avx512_common_1x1_convolution_bwd_weights`) and kills the process; the
# same layer in NCHW, or in bf16, is fine. So on a CPU at fp32 the networks stay NCHW.
CPU_FP32_NCHW = ("off at fp32 on a CPU: oneDNN's fp32 1x1 stride-2 convolution backward in NHWC corrupts memory "
                 "(docs/speed.md)")


def compute_of(requested: str, channels_last: bool, compile: bool, device: torch.device,
               flags: set[str] | None = None) -> Compute:
    """`precision`, `channels_last` and `compile` as they apply on `device` (each client resolves
    `auto` on its own hardware)."""
    precision, reason = choose_precision(requested, device, flags)
    note = ""
    if channels_last and precision == "fp32" and device.type == "cpu":
        channels_last, note = False, CPU_FP32_NCHW
    return Compute(device, precision, reason, channels_last, compile, note)


def compute_for(cfg: dict, device: torch.device, flags: set[str] | None = None) -> Compute:
    """The run's compute settings on `device`, from its config (`compute_of`)."""
    return compute_of(str(cfg.get("precision", "fp32")), bool(cfg.get("channels_last", False)),
                      bool(cfg.get("compile", False)), device, flags)
