"""Strict loading of weights into modules: every tensor present, named and shaped as the module expects.

Modules are built on the meta device and the tensors assigned (no second copy); every missing, unknown or
mis-shaped tensor is named with its file.
"""
from __future__ import annotations

import torch

from .errors import DeepGenLoadError


def assign(model: torch.nn.Module, state: dict, source, optional=()) -> torch.nn.Module:
    """load_state_dict(assign=True) after checking names and shapes; errors name every bad key."""
    check_names_and_shapes(model, state, source, optional)
    model.load_state_dict(state, strict=False, assign=True)
    return model


def check_names_and_shapes(model: torch.nn.Module, state: dict, source, optional=()) -> None:
    """Refuse, naming every bad key and `source`, tensors that are not exactly the module's (a meta module will do)."""
    expected = model.state_dict()
    missing = sorted(k for k in expected if k not in state and k not in optional)
    unexpected = sorted(k for k in state if k not in expected)
    misshaped = sorted(f"{k} {tuple(state[k].shape)} (expected {tuple(expected[k].shape)})"
                       for k in state if k in expected and tuple(state[k].shape) != tuple(expected[k].shape))
    not_float = sorted(f"{k} ({str(state[k].dtype).removeprefix('torch.')})" for k in state if k in expected
                       and expected[k].is_floating_point() and not state[k].is_floating_point())
    problems = [f"{what} ({len(keys)}): {preview(keys)}"
                for what, keys in (("missing tensors", missing), ("unexpected tensors", unexpected),
                                   ("mis-shaped tensors", misshaped),
                                   ("integer tensors where weights are floating point", not_float)) if keys]
    if problems:
        raise DeepGenLoadError(f"{source}: " + "; ".join(problems) + "; the weights are damaged or from another "
                               "model: download them again from the release")


def check_materialised(model: torch.nn.Module, source) -> None:
    left = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if left:
        raise DeepGenLoadError(f"{source}: tensors left unloaded: {preview(left)}")


def preview(names, n: int = 8) -> str:
    names = list(names)
    return ", ".join(names[:n]) + (f" ... (+{len(names) - n} more)" if len(names) > n else "")


def finish(model, dtype, device):
    if dtype is not None:
        model = model.to(dtype)
    return model.to(torch.device(device)).eval()
