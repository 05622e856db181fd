"""Environment registry: a key in the config names the env, ``env_kwargs`` configure it.

Every registered env is a TorchRL ``EnvBase`` batched over ``n_envs`` with the key layout of
``dmac_lightning.envs.common`` and an ``info: EnvInfo`` attribute. Optional extras an env may offer:
``optimal_return`` (float), ``train_metrics() -> dict`` and ``checkpoint_state()``/
``load_checkpoint_state()`` (saved with the data module's state); read them with ``env_extra``.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable

import torch
from torchrl.envs import EnvBase, TransformedEnv

from dmac_lightning.envs.common import EnvInfo
from dmac_lightning.envs import smac, smax
from dmac_lightning.envs.stochastic_game import StochasticGameEnv


@dataclass(frozen=True)
class EnvEntry:
    factory: Callable[..., EnvBase]
    # Checks env_kwargs at config time, before anything heavy is built; raises ValueError.
    check: Callable[[dict[str, Any]], None] | None = None
    # Facts about the installation a run records among its hyperparameters (e.g. the SC2 version).
    metadata: Callable[[], dict[str, Any]] | None = None


# Keyword arguments the data module passes itself; users configure everything else.
_MANAGED = ("n_envs", "seed", "device")

ENVS: dict[str, EnvEntry] = {
    "stochastic_game": EnvEntry(StochasticGameEnv, StochasticGameEnv.check_config),
    "smax": EnvEntry(smax.SmaxEnv, smax.check_config),
    "smac": EnvEntry(smac.make_starcraft_envs, smac.check_config, smac.metadata),
    "smacv2": EnvEntry(smac.make_smacv2_envs, partial(smac.check_config, package="smacv2"), smac.metadata),
}


def env_extra(env: EnvBase, name: str) -> Any:
    """One of an env's optional extras (see above), or ``None`` where it has none.

    Looked up on the env's class, under any ``TransformedEnv``: a batched TorchRL env (SMAC's
    ``ParallelEnv``) answers every attribute name with a dispatcher to its workers, so ``getattr`` and
    ``hasattr`` on it would find extras that are not there.
    """
    while isinstance(env, TransformedEnv):
        env = env.base_env
    return getattr(env, name) if hasattr(type(env), name) else None


def register_env(name: str, entry: EnvEntry) -> None:
    ENVS[name] = entry


def _entry(name: str) -> EnvEntry:
    if name not in ENVS:
        raise ValueError(f"data.env: unknown env {name!r}; allowed values: {', '.join(sorted(ENVS))}")
    return ENVS[name]


def check_env_config(name: str, env_kwargs: dict[str, Any]) -> None:
    """Raise a ``ValueError`` naming the field if ``env_kwargs`` cannot configure env ``name``."""
    entry = _entry(name)
    function = entry.factory.__init__ if isinstance(entry.factory, type) else entry.factory
    parameters = inspect.signature(function).parameters
    variadic = (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)
    allowed = [p for p in parameters if p not in (*_MANAGED, "self", "package") and parameters[p].kind not in variadic]
    # Envs that forward extra keyword arguments to the underlying game accept any other name.
    forwards_extras = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    for key in env_kwargs:
        if key in _MANAGED:
            raise ValueError(f"data.env_kwargs.{key} is set by the data module (data.{key}); remove it from env_kwargs")
        if key not in allowed and not forwards_extras:
            raise ValueError(
                f"data.env_kwargs.{key}: not a setting of env {name!r}; allowed fields: {', '.join(allowed)}"
            )
    if entry.check is not None:
        entry.check(env_kwargs)


def env_metadata(name: str) -> dict[str, Any]:
    metadata = _entry(name).metadata
    return metadata() if metadata is not None else {}


def make_env(
    name: str, env_kwargs: dict[str, Any], n_envs: int, seed: int, device: torch.device | str | None = None
) -> EnvBase:
    return _entry(name).factory(n_envs=n_envs, seed=seed, device=device, **env_kwargs)


__all__ = [
    "ENVS", "EnvEntry", "EnvInfo", "StochasticGameEnv", "check_env_config", "env_metadata", "make_env", "register_env",
]
