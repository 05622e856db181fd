"""Real SMAC (StarCraft II) in the shared key layout: oxwhirl's ``StarCraft2Env`` (v1) or smacv2's.

One SC2 process per env; ``n_envs`` of them run in parallel worker processes (``ParallelEnv``),
started by each rank for itself. The time limit (``info["episode_limit"]``, which SMAC reports only
with ``continuing_episode=True``, so the wrapper always sets it) is a truncation, not a termination;
``info["battle_won"]`` goes to ``("info", "battle_won")``.

If SC2 crashes or its protocol fails mid-episode, the episode is dropped and nothing else. SMAC
catches those errors itself, relaunches SC2 and ends the episode with ``(0, True, {})`` (an info
without ``battle_won``); errors it does not catch reach the wrapper, which starts a fresh game. Either
way the step is marked ``("info", "episode_broken")`` and the data module drops that episode.

smacv2 (``package="smacv2"``): with ``capability_config`` the game is smacv2's
``StarCraftCapabilityEnvWrapper``, which draws the units of every episode (the ``10gen_*`` maps need it).
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


def starcraft2_env_class(package: str = "smac", name: str = "StarCraft2Env") -> type:
    """``<package>.env.<name>``, or an ImportError that says exactly what to install."""
    if importlib.util.find_spec(package) is None:
        raise ImportError(f"data.env: {package} needs the {package!r} package, which is not installed.\n{INSTALL}")
    try:
        return getattr(importlib.import_module(f"{package}.env"), name)
    except TypeError as error:
        # protobuf >= 4 refuses pysc2's generated code unless the pure-Python implementation is chosen.
        if "Descriptors cannot be created directly" in str(error):
            raise ImportError(
                "pysc2 cannot load its protocol buffers with this protobuf: "
                f"export PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION=python\n{INSTALL}"
            ) from error
        raise
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
    """Config-time checks, before anything starts: the package, StarCraft II and its maps on disk, settings."""
    starcraft2_env_class(package)
    path = starcraft_path()
    if not os.path.isdir(path):
        source = "SC2PATH" if os.environ.get("SC2PATH") else "SC2PATH is not set, and the default"
        raise FileNotFoundError(f"StarCraft II not found: {source} {path!r} is not a directory.\n{INSTALL}")
    if not os.path.isdir(os.path.join(path, "Maps", "SMAC_Maps")):
        raise FileNotFoundError(f"the SMAC maps are not installed: {os.path.join(path, 'Maps', 'SMAC_Maps')!r} is missing.\n{INSTALL}")
    map_name = config.get("map_name", "3m")
    if not isinstance(map_name, str):
        raise ValueError(f"{package}: map_name must be a SMAC map name such as {', '.join(PAPER_MAPS)}")
    if config.get("continuing_episode", True) is not True:
        raise ValueError(
            "data.env_kwargs.continuing_episode must be true (the default here): without it SMAC does not report "
            "time-outs, and a time limit would be stored as a termination instead of a truncation"
        )
    if package == "smacv2" and map_name.startswith("10gen") and not config.get("capability_config"):
        raise ValueError(
            f"smacv2: map {map_name!r} draws its units every episode and needs data.env_kwargs.capability_config "
            "(smacv2's distribution settings, e.g. from its configs/sc2_gen_*.yaml)"
        )


class StarCraftEnv(EnvBase):
    """One StarCraft II game (batch ``[]``). Use :func:`make_starcraft_envs` for several."""

    def __init__(
        self,
        map_name: str = "3m",
        seed: int | None = None,
        device: torch.device | str | None = None,
        package: str = "smac",
        capability_config: dict[str, Any] | None = None,
        **smac_kwargs: Any,
    ) -> None:
        if capability_config:
            game_class = starcraft2_env_class(package, "StarCraftCapabilityEnvWrapper")
            smac_kwargs["capability_config"] = capability_config
        else:
            game_class = starcraft2_env_class(package)
        super().__init__(device=torch.device(device or "cpu"), batch_size=torch.Size([]))
        smac_kwargs["continuing_episode"] = True  # so that SMAC reports a time-out as info["episode_limit"]
        self._make_game = partial(game_class, map_name=map_name, seed=seed, **smac_kwargs)
        self._seed = seed
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
        except Exception as error:  # SC2 died in a way SMAC does not catch: a fresh game, drop this episode
            return self._drop_episode(f"{type(error).__name__}: {error}", relaunch=True, cause=error)
        if "battle_won" not in info:  # SMAC caught an SC2 failure, relaunched SC2 and returned (0, True, {})
            return self._drop_episode("SMAC relaunched StarCraft II after a protocol or connection error", relaunch=False)
        self._consecutive_restarts = 0
        truncated = bool(info.get("episode_limit", False))
        terminated = bool(terminated) and not truncated
        out = self._observe()
        out.set("reward", torch.tensor([float(reward)]))
        out.update(self._flags(terminated or truncated, terminated, truncated, bool(info.get("battle_won", False))))
        return out

    def _drop_episode(self, reason: str, relaunch: bool, cause: Exception | None = None) -> TensorDictBase:
        """End the current episode as broken and start the next one (in a new game if ``relaunch``)."""
        self.restarts += 1
        self._consecutive_restarts += 1
        if self._consecutive_restarts > MAX_CONSECUTIVE_RESTARTS:
            raise RuntimeError(f"StarCraft II failed {MAX_CONSECUTIVE_RESTARTS} times in a row ({reason})") from cause
        log.warning("StarCraft II failed (%s); restarting it and dropping this episode", reason)
        if relaunch:
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

    def save_game_replay(self, directory: str, prefix: str) -> None:
        """StarCraft II's replay of the games this env played since it (re)started, into ``directory``
        as ``<prefix>_seed<seed>_<time>.SC2Replay`` (SMAC's ``save_replay``; one file per env)."""
        self._game.replay_dir = os.path.abspath(directory)
        self._game.replay_prefix = f"{prefix}_seed{self._seed}"
        self._game.save_replay()

    def close(self, *, raise_if_closed: bool = True) -> None:
        self._game.close()
        super().close(raise_if_closed=raise_if_closed)


class _StarCraftEnvs:
    """Gives the batched env the ``info`` the algorithms need (the workers each have their own)."""

    info: EnvInfo

    def save_replay(self, directory: str, prefix: str) -> None:
        """Every worker's game writes its replay (``StarCraftEnv.save_game_replay``)."""
        self.__getattr__("save_game_replay")(directory, prefix)  # the batched env's dispatch to its workers


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
    """``n_envs`` StarCraft II games, each in its own worker process (``parallel=False``: in this one).

    Game ``i`` of a batch seeded ``s`` is seeded ``s * n_envs + i``: batches with neighbouring seeds
    (the ranks of a DDP run are seeded ``seed + rank``) never share a game seed.
    """
    creators = [
        partial(StarCraftEnv, map_name=map_name, seed=None if seed is None else seed * n_envs + i, package=package, **smac_kwargs)
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
