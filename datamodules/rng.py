"""The random streams of a run (torch, numpy, Python, CUDA), saved with the data module's state so that
a resumed single-process run continues them exactly."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def rng_state() -> dict[str, Any]:
    """Every stream's state, as tensors and plain numbers (checkpoints load with ``weights_only=True``)."""
    state = {"torch": torch.get_rng_state(), "numpy": _numpy_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    _set_numpy_rng_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _numpy_rng_state() -> dict[str, Any]:
    # As tensors and ints: checkpoints must load with torch.load(weights_only=True).
    name, keys, position, has_gauss, cached = np.random.get_state()
    return {"keys": torch.from_numpy(keys.astype(np.int64)), "position": int(position), "has_gauss": int(has_gauss), "cached": float(cached)}


def _set_numpy_rng_state(state: dict[str, Any]) -> None:
    keys = state["keys"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, state["position"], state["has_gauss"], state["cached"]))
