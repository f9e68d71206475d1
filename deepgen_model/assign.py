"""Strict loading of weights into modules: every tensor present, named and shaped as the module expects.

Modules are built on the meta device and the tensors assigned (no second copy); from_pretrained's
loading info, which only warns, is turned into an error naming every bad key and the file.
"""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError

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


# what from_pretrained raises for unreadable/truncated files (SafetensorError is no OSError) and for
# tensors left on the meta device (NotImplementedError when moved)
READ_ERRORS = (OSError, ValueError, RuntimeError, NotImplementedError, SafetensorError)


def file_names(files) -> str:
    return ", ".join(Path(f).name for f in files)


def _mismatch(m) -> str:
    """A mismatched_keys entry: (key, file shape, model shape) or just the key, by library version."""
    if isinstance(m, str):
        return m
    m = list(m)
    return f"{m[0]} {tuple(m[1])} (expected {tuple(m[2])})" if len(m) >= 3 else str(m)


def check_loading_info(info: dict, folder: Path, weights, optional=()) -> None:
    """from_pretrained only warns about missing tensors (and re-initialises them at random): refuse."""
    missing = sorted(k for k in info.get("missing_keys", []) if k not in optional)
    mismatched = sorted(_mismatch(m) for m in info.get("mismatched_keys", []))
    problems = [f"{what} ({len(keys)}): {preview(keys)}"
                for what, keys in (("missing tensors", missing), ("mis-shaped tensors", mismatched)) if keys]
    if problems:
        raise DeepGenLoadError(f"{folder} ({file_names(weights)}): " + "; ".join(problems)
                               + "; the files are incomplete or from another model: download them again")
