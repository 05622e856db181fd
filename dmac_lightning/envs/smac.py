"""Real SMAC (StarCraft II) in the shared key layout: oxwhirl's ``StarCraft2Env`` (v1) or smacv2's.

One SC2 process per env; ``n_envs`` of them run in parallel worker processes (``ParallelEnv``),
started by each rank for itself. The time limit (``info["episode_limit"]``) is a truncation, not a
termination; ``info["battle_won"]`` goes to ``("info", "battle_won")``. If SC2 crashes or its
protocol fails mid-episode, that env restarts its game and marks the step
``("info", "episode_broken")``: the data module drops that episode and nothing else.
"""

from __future__ import annotations

import glob
import importlib
import importlib.metadata
import importlib.util
import logging
import os
import re
from functools import partial
from typing import Any

import numpy as np
import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.envs import EnvBase, ParallelEnv, SerialEnv

from dmac_lightning.envs.common import ACTION, EnvInfo, multi_agent_specs

log = logging.getLogger(__name__)

INSTALL = """Real SMAC needs StarCraft II and oxwhirl's SMAC package (not PyPI's `smac`, which is SMAC3):
  pip install pysc2 'protobuf>=4' git+https://github.com/oxwhirl/smac.git     (smacv2: git+https://github.com/oxwhirl/smacv2.git)
  export PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION=python
  StarCraft II for Linux (4.10): https://github.com/Blizzard/s2client-proto#downloads, unzipped into ~/StarCraftII
    or anywhere with SC2PATH pointing at it
  SMAC maps: https://github.com/oxwhirl/smac/releases/download/v0.1-beta1/SMAC_Maps.zip, unzipped into $SC2PATH/Maps/
No StarCraft II? Train on SMAX instead: data.env: smax (pip install -e '.[smax]')."""

PAPER_MAPS = ("3m", "8m", "2s3z", "3s5z", "1c3s5z", "3s_vs_3z", "2c_vs_64zg", "MMM2")
MAX_CONSECUTIVE_RESTARTS = 5


def is_smac3() -> bool:
    """Whether the installed distribution called ``smac`` is SMAC3 (hyperparameter optimisation)."""
    try:
        metadata = importlib.metadata.metadata("smac")
    except importlib.metadata.PackageNotFoundError:
        return False
    text = f"{metadata.get('Summary', '')} {metadata.get('Home-page', '')} {metadata.get('Project-URL', '')}"
    return bool(re.search(r"SMAC3|automl|[Aa]lgorithm [Cc]onfiguration|[Hh]yperparameter", text))


def starcraft2_env_class(package: str = "smac") -> type:
    """``<package>.env.StarCraft2Env``, or an ImportError that says exactly what to install."""
    if importlib.util.find_spec(package) is None:
        raise ImportError(f"data.env: {package} needs the {package!r} package, which is not installed.\n{INSTALL}")
    try:
        return importlib.import_module(f"{package}.env").StarCraft2Env
    except (ImportError, AttributeError) as error:
        if package == "smac" and is_smac3():
            raise ImportError(
                "the installed `smac` is PyPI's SMAC3 (hyperparameter optimisation), an unrelated project with the "
                f"same name. Remove it (pip uninstall smac), then install oxwhirl's.\n{INSTALL}"
            ) from error
        raise ImportError(f"{package}.env.StarCraft2Env could not be imported ({error}).\n{INSTALL}") from error


def starcraft_path() -> str:
    return os.environ.get("SC2PATH") or os.path.expanduser("~/StarCraftII")


def sc2_version(path: str | None = None) -> str | None:
    """The newest installed SC2 build, e.g. ``Base75689`` (what pysc2 launches by default)."""
    builds = glob.glob(os.path.join(path or starcraft_path(), "Versions", "Base*"))
    return max((os.path.basename(b) for b in builds), key=lambda b: int(re.sub(r"\D", "", b) or 0), default=None)


def check_config(config: dict[str, Any], package: str = "smac") -> None:
    """Config-time checks, before anything starts: the package, StarCraft II on disk, sizes."""
    starcraft2_env_class(package)
    path = starcraft_path()
    if not os.path.isdir(path):
        source = "SC2PATH" if os.environ.get("SC2PATH") else "SC2PATH is not set, and the default"
        raise FileNotFoundError(f"StarCraft II not found: {source} {path!r} is not a directory.\n{INSTALL}")
    if not isinstance(config.get("map_name", "3m"), str):
        raise ValueError(f"{package}: map_name must be a SMAC map name such as {', '.join(PAPER_MAPS)}")


class StarCraftEnv(EnvBase):
    """One StarCraft II game (batch ``[]``). Use :func:`make_starcraft_envs` for several."""

    def __init__(
        self,
        map_name: str = "3m",
        seed: int | None = None,
        device: torch.device | str | None = None,
        package: str = "smac",
        **smac_kwargs: Any,
    ) -> None:
        game_class = starcraft2_env_class(package)
        super().__init__(device=torch.device(device or "cpu"), batch_size=torch.Size([]))
        self._make_game = partial(game_class, map_name=map_name, seed=seed, **smac_kwargs)
        self._game = self._make_game()
        self.restarts = 0
        self._consecutive_restarts = 0
        sizes = self._game.get_env_info()
        self.info = EnvInfo(
            n_agents=int(sizes["n_agents"]),
            n_actions=int(sizes["n_actions"]),
            obs_dim=int(sizes["obs_shape"]),
            state_dim=int(sizes["state_shape"]),
            episode_limit=int(sizes["episode_limit"]),
            reports_wins=True,
        )
        for key, spec in multi_agent_specs(self.info, (), self.device, reports_broken=True).items():
            setattr(self, key, spec)

    def _observe(self) -> TensorDict:
        mask = torch.as_tensor(np.asarray(self._game.get_avail_actions())).bool()
        self.full_action_spec[ACTION].update_mask(mask)  # so that rand_action() only picks available actions
        agents = TensorDict(
            {"observation": torch.as_tensor(np.asarray(self._game.get_obs()), dtype=torch.float32), "action_mask": mask},
            batch_size=(self.info.n_agents,),
        )
        state = torch.as_tensor(np.asarray(self._game.get_state()), dtype=torch.float32)
        return TensorDict({"agents": agents, "state": state}, batch_size=(), device=self.device)

    @staticmethod
    def _flags(done: bool = False, terminated: bool = False, truncated: bool = False, won: bool = False, broken: bool = False) -> dict:
        flag = lambda value: torch.tensor([value], dtype=torch.bool)  # noqa: E731
        return {
            "done": flag(done), "terminated": flag(terminated), "truncated": flag(truncated),
            "info": {"battle_won": flag(won), "episode_broken": flag(broken)},
        }

    def _reset(self, tensordict: TensorDictBase | None = None, **kwargs: Any) -> TensorDictBase:
        self._game.reset()
        out = self._observe()
        out.update(self._flags())
        return out

    def _step(self, tensordict: TensorDictBase) -> TensorDictBase:
        actions = tensordict.get(ACTION).tolist()
        try:
            reward, terminated, info = self._game.step(actions)
        except AssertionError:
            raise  # an unavailable action: a bug in the caller, not a crash
        except Exception as error:  # SC2 died or its protocol broke: restart, drop this episode
            return self._restart_after(error)
        self._consecutive_restarts = 0
        truncated = bool(info.get("episode_limit", False))
        terminated = bool(terminated) and not truncated
        out = self._observe()
        out.set("reward", torch.tensor([float(reward)]))
        out.update(self._flags(terminated or truncated, terminated, truncated, bool(info.get("battle_won", False))))
        return out

    def _restart_after(self, error: Exception) -> TensorDictBase:
        self.restarts += 1
        self._consecutive_restarts += 1
        if self._consecutive_restarts > MAX_CONSECUTIVE_RESTARTS:
            raise RuntimeError(f"StarCraft II failed {MAX_CONSECUTIVE_RESTARTS} times in a row") from error
        log.warning("StarCraft II failed (%s: %s); restarting it and dropping this episode", type(error).__name__, error)
        try:
            self._game.close()
        except Exception:  # the old process may already be gone
            pass
        self._game = self._make_game()
        self._game.reset()
        out = self._observe()
        out.set("reward", torch.zeros(1))
        out.update(self._flags(done=True, truncated=True, broken=True))
        return out

    def _set_seed(self, seed: int | None) -> None:
        """SC2 takes its seed at launch (``seed`` of the constructor); nothing to do afterwards."""

    def close(self, *, raise_if_closed: bool = True) -> None:
        self._game.close()
        super().close(raise_if_closed=raise_if_closed)


class _StarCraftEnvs:
    """Gives the batched env the ``info`` the algorithms need (the workers each have their own)."""

    info: EnvInfo


class StarCraftParallelEnv(_StarCraftEnvs, ParallelEnv):
    pass


class StarCraftSerialEnv(_StarCraftEnvs, SerialEnv):
    pass


def make_starcraft_envs(
    n_envs: int = 1,
    seed: int | None = None,
    device: torch.device | str | None = None,
    map_name: str = "3m",
    parallel: bool = True,
    package: str = "smac",
    **smac_kwargs: Any,
) -> EnvBase:
    """``n_envs`` StarCraft II games, each in its own worker process (``parallel=False``: in this one)."""
    creators = [
        partial(StarCraftEnv, map_name=map_name, seed=None if seed is None else seed + i, package=package, **smac_kwargs)
        for i in range(n_envs)
    ]
    batched = (StarCraftParallelEnv if parallel else StarCraftSerialEnv)(n_envs, creators, device=device)
    probe = creators[0]()
    batched.info = probe.info
    probe.close()
    return batched


def make_smacv2_envs(n_envs: int = 1, seed: int | None = None, device: torch.device | str | None = None, **kwargs: Any) -> EnvBase:
    """smacv2 maps (``map_name`` plus smacv2's ``capability_config``) with the same wrapper."""
    return make_starcraft_envs(n_envs, seed, device, package="smacv2", **kwargs)


def metadata() -> dict[str, Any]:
    """What a run on real SMAC records among its hyperparameters."""
    return {"sc2_version": sc2_version() or "unknown", "sc2_path": starcraft_path()}
