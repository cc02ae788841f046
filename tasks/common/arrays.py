"""Moving weights between torch modules and the NumPy arrays that cross the wire, by key.

The order of the arrays exchanged through Flower is always a key list derived on both sides from
the same code (convention 4, docs/architecture.md#conventions-and-where-they-come-from); `module_layout` turns a module and its upload keys into the
protocol's Layout, whose fingerprint the client checks every round.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from protocol.layout import Layout, keys_fingerprint


def part_of(key: str) -> str:
    """The part a state_dict key belongs to: its first component (`online.backbone.conv1.weight` -> `online`)."""
    return key.split(".", 1)[0]


def batchnorm_keys(model: nn.Module) -> set[str]:
    """state_dict keys (weights, biases, running stats) that belong to BatchNorm layers."""
    keys = set()
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            for k in module.state_dict():
                keys.add(f"{name}.{k}")
    return keys


def get_arrays(module: nn.Module, keys: list[str]) -> list[np.ndarray]:
    state = module.state_dict()
    return [state[k].detach().cpu().numpy().copy() for k in keys]


def set_arrays(module: nn.Module, keys: list[str], arrays: list[np.ndarray], skip_parts: tuple[str, ...] = ()) -> set[str]:
    """Load arrays into the named entries (except those of `skip_parts`); returns the parts loaded."""
    if len(keys) != len(arrays):
        raise ValueError(f"got {len(arrays)} arrays for {len(keys)} keys")
    state = {k: torch.from_numpy(np.asarray(a)) for k, a in zip(keys, arrays) if part_of(k) not in skip_parts}
    module.load_state_dict(state, strict=False)
    return {part_of(k) for k in state}


def module_layout(module: nn.Module, keys: list[str], **extras) -> Layout:
    """The protocol Layout of `keys` of `module` (shapes and fingerprint from the module itself)."""
    state = module.state_dict()
    shapes = [tuple(state[k].shape) for k in keys]
    dtypes = [str(state[k].detach().cpu().numpy().dtype) for k in keys]
    return Layout(keys=list(keys), shapes=shapes, fingerprint=keys_fingerprint(keys, shapes), dtypes=dtypes, **extras)


def layout_fingerprint(module: nn.Module, keys: list[str]) -> str:
    return module_layout(module, keys).fingerprint
