"""Our envs behind PyMARL's ``MultiAgentEnv`` API, so that PyMARL-based code (the DMAC authors' own,
PKU-RL/FOP-DMAC-MACPF) trains on exactly the observations, state, masks and rewards ours does.

One env (``n_envs=1``) of ``dmac_lightning.envs.make_env``, stepped as our collector steps it
(``step_and_maybe_reset``): the same seed gives the same episodes, draw for draw. What PyMARL reads:

* ``reset()``; ``step(actions) -> (reward, terminated, info)``; ``get_obs()``, ``get_state()``,
  ``get_avail_actions()`` (and their per-agent forms); ``get_env_info()`` with ``episode_limit``.
* Ends of episodes keep our env's convention. Where ours *truncates* (SMAX's time limit) the step says
  ``terminated=True`` (the episode is over) and ``info["episode_limit"] = True``: PyMARL's runners then
  store "not terminated" and bootstrap through it, as ours do. Where ours *terminates* (a battle decided;
  the stochastic game's last step, whose timestep the agents observe) the step says only terminated.
* ``info["battle_won"]`` on the envs that report wins (SMAX, SMAC), on the last step of an episode.
* After the last step, ``get_obs``/``get_state``/``get_avail_actions`` still show what that step led to
  (PyMARL's runners store it as the episode's final entry); ``reset()`` hands out the next episode, which
  our env had already drawn inside that step (SMAX restarts battles as it steps).

Used only to run a peer beside us (docs/results/as_published/authors_peer); the project never imports it.
Register it in the peer's env registry with ``env_args`` such as
``{env: smax, env_kwargs: {map_name: 3m, max_steps: 100}}``; PyMARL adds ``seed``.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from tensordict import TensorDictBase

from dmac_lightning.envs import check_env_config, env_extra, make_env
from dmac_lightning.envs.common import ACTION, ACTION_MASK, BATTLE_WON, OBSERVATION, STATE


class PymarlEnv:
    """PyMARL's ``MultiAgentEnv`` over one of our envs: ``PymarlEnv(env="smax", env_kwargs={...}, seed=0)``."""

    def __init__(self, env: str, env_kwargs: dict[str, Any] | None = None, seed: int = 0, **ignored: Any) -> None:
        # PyMARL's configs pass a few keys of their own (e.g. SMAC's ``debug``); they mean nothing here.
        self.env_name, self.env_kwargs = env, dict(env_kwargs or {})
        check_env_config(env, self.env_kwargs)
        self._env = make_env(env, self.env_kwargs, n_envs=1, seed=int(seed))
        self.info = self._env.info
        self.n_agents, self.n_actions = self.info.n_agents, self.info.n_actions
        self.episode_limit = self.info.episode_limit
        self._current: TensorDictBase | None = None  # what the agents see now
        self._next_episode: TensorDictBase | None = None  # what the next reset hands out
        self._won = 0
        self._episodes = 0

    # -- the episode -----------------------------------------------------------------------------------
    def reset(self) -> tuple[list[np.ndarray], np.ndarray]:
        if self._next_episode is None:
            self._current = self._env.reset()
        else:
            self._current, self._next_episode = self._next_episode, None
        return self.get_obs(), self.get_state()

    def step(self, actions: Sequence[int] | np.ndarray | torch.Tensor) -> tuple[float, bool, dict[str, Any]]:
        if self._current is None or self._next_episode is not None:
            raise RuntimeError("PymarlEnv.step: call reset() first (the last episode has ended)")
        actions = torch.as_tensor(np.asarray(actions, dtype=np.int64).reshape(1, self.n_agents), device=self._env.device)
        in_range = bool(((actions >= 0) & (actions < self.n_actions)).all())
        if not in_range or not bool(self._current.get(ACTION_MASK)[0].gather(-1, actions[0].unsqueeze(-1)).all()):
            raise ValueError(f"PymarlEnv.step: unavailable actions {actions[0].tolist()} (mask {self.get_avail_actions()})")
        self._current.set(ACTION, actions)
        stepped, restarted = self._env.step_and_maybe_reset(self._current)
        led_to = stepped.get("next")
        terminated = bool(led_to.get("terminated").any())
        truncated = bool(led_to.get("truncated").any())
        info: dict[str, Any] = {}
        if terminated or truncated:
            self._episodes += 1
            if self.info.reports_wins:
                won = bool(led_to.get(BATTLE_WON).any())
                self._won += won
                info["battle_won"] = won
            if truncated and not terminated:
                info["episode_limit"] = True
            self._next_episode = restarted.clone()
        # Mid-episode the next step starts from what the collector would hand the policy (``restarted``,
        # the same values as ``led_to``); after the last step the agents keep seeing where it led.
        self._current = led_to.clone() if terminated or truncated else restarted.clone()
        return float(led_to.get("reward").sum()), terminated or truncated, info

    # -- what the agents and the critic see ------------------------------------------------------------
    def get_obs(self) -> list[np.ndarray]:
        return [self.get_obs_agent(i) for i in range(self.n_agents)]

    def get_obs_agent(self, agent_id: int) -> np.ndarray:
        return self._current.get(OBSERVATION)[0, agent_id].detach().cpu().numpy().astype(np.float32)

    def get_obs_size(self) -> int:
        return self.info.obs_dim

    def get_state(self) -> np.ndarray:
        return self._current.get(STATE)[0].detach().cpu().numpy().astype(np.float32)

    def get_state_size(self) -> int:
        return self.info.state_dim

    def get_avail_actions(self) -> list[list[int]]:
        return [self.get_avail_agent_actions(i) for i in range(self.n_agents)]

    def get_avail_agent_actions(self, agent_id: int) -> list[int]:
        return self._current.get(ACTION_MASK)[0, agent_id].to(torch.int64).tolist()

    def get_total_actions(self) -> int:
        return self.n_actions

    def get_env_info(self) -> dict[str, Any]:
        info = {
            "state_shape": self.info.state_dim,
            "obs_shape": self.info.obs_dim,
            "n_actions": self.n_actions,
            "n_agents": self.n_agents,
            "episode_limit": self.episode_limit,
        }
        features = self.agent_features()
        if features is not None:
            info["agent_features"] = features
        return info

    def agent_features(self) -> list[str] | None:
        """Names of the features of each ally's block at the front of the state, where the state has such
        blocks (SMAX: ``smac_state``'s layout, SMAC's); ``None`` elsewhere (the stochastic game). PyMARL-based
        code reads their number as ``unit_dim`` (the FOP attention mixer's keys), as from SMAC's env info."""
        if self.env_name != "smax":
            return None
        from dmac_lightning.envs.smax import _unit_kinds

        kinds = _unit_kinds(self._env._game)
        return ["health", "cooldown", "rel_x", "rel_y"] + ([f"type_{kind}" for kind in kinds] if len(kinds) > 1 else [])

    @property
    def optimal_return(self) -> float | None:
        """The stochastic game's exact optimum (None on other envs), to report returns as its fraction."""
        return env_extra(self._env, "optimal_return")

    # -- the rest of the API -------------------------------------------------------------------------
    def get_stats(self) -> dict[str, float]:
        stats: dict[str, float] = {"episodes": self._episodes}
        if self.info.reports_wins:
            stats["win_rate"] = self._won / max(self._episodes, 1)
        return stats

    def render(self) -> None:
        pass

    def close(self) -> None:
        self._env.close()

    def seed(self) -> None:
        pass

    def save_replay(self) -> None:
        pass
