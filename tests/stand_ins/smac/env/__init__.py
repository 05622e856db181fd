"""``smac.env.StarCraft2Env`` stand-in: the public API of oxwhirl's StarCraft2Env, a toy battle inside.

Public API mirrored: the constructor's keyword arguments, ``reset() -> (obs, state)``,
``step(actions) -> (reward, terminated, info)`` with ``battle_won``, ``dead_allies`` and
``dead_enemies`` in info and ``episode_limit`` only when ``continuing_episode`` is set (a time-out is
otherwise a plain ``terminated``, as in SMAC), ``get_obs``, ``get_state``, ``get_avail_actions``,
``get_env_info``, ``close``; invalid actions fail the same assertion SMAC's do. SC2 failures behave as
in SMAC: a protocol or connection error inside ``step`` is caught, SC2 is relaunched and ``step``
returns ``(0, True, {})``.

Test controls (environment variables, so that env workers in other processes see them), each on the
N-th ``step`` call of a process, once: ``STAND_IN_SC2_CRASH_ON_STEP=N`` a connection error that SMAC
catches (as above); ``STAND_IN_SC2_RAISE_ON_STEP=N`` an error SMAC does not catch, raised from
``step``. ``STAND_IN_SC2_LOG`` appends one line per launched / closed SC2 process.
"""

import os

import numpy as np

MAPS = {"3m": (3, 3, 60), "8m": (8, 8, 120), "2s3z": (5, 5, 120)}
_STEP_CALLS = {"count": 0}


class StarCraft2Env:
    def __init__(self, map_name="8m", step_mul=8, move_amount=2, difficulty="7", game_version=None, seed=None,
                 continuing_episode=False, obs_all_health=True, obs_own_health=True, obs_last_action=False,
                 obs_pathing_grid=False, obs_terrain_height=False, obs_instead_of_state=False,
                 obs_timestep_number=False, state_last_action=True, state_timestep_number=False,
                 reward_sparse=False, reward_only_positive=True, reward_death_value=10, reward_win=200,
                 reward_defeat=0, reward_negative_scale=0.5, reward_scale=True, reward_scale_rate=20,
                 replay_dir="", replay_prefix="", window_size_x=1920, window_size_y=1200, heuristic_ai=False,
                 heuristic_rest=False, debug=False):
        self.map_name = map_name
        self.continuing_episode = continuing_episode
        self.n_agents, self.n_enemies, self.episode_limit = MAPS[map_name]
        self.n_actions = 6 + self.n_enemies  # no-op, stop, 4 moves, attack each enemy
        self._rng = np.random.default_rng(seed)
        self._closed = False
        self.replay_dir, self.replay_prefix = replay_dir, replay_prefix
        self._episodes_this_session = 0
        self._log("launch")

    def _log(self, event):
        path = os.environ.get("STAND_IN_SC2_LOG")
        if path:
            with open(path, "a") as f:
                f.write(f"{event} {os.getpid()}\n")

    # -- sizes ------------------------------------------------------------------------------------
    def get_obs_size(self):
        return 4 + 5 * (self.n_agents + self.n_enemies)

    def get_state_size(self):
        return 4 * self.n_agents + 3 * self.n_enemies

    def get_env_info(self):
        return {
            "state_shape": self.get_state_size(),
            "obs_shape": self.get_obs_size(),
            "n_actions": self.n_actions,
            "n_agents": self.n_agents,
            "episode_limit": self.episode_limit,
        }

    # -- episode ----------------------------------------------------------------------------------
    def save_replay(self):
        """As SMAC: the replay of this SC2 session, written by pysc2 as
        ``<replay_dir>/<replay_prefix or map_name>_<UTC time>.SC2Replay``."""
        import datetime

        now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0, tzinfo=None)
        path = os.path.join(self.replay_dir or "", f"{self.replay_prefix or self.map_name}_{now.isoformat('-').replace(':', '-')}.SC2Replay")
        with open(path, "w") as f:
            f.write(f"{self.map_name}: {self._episodes_this_session} episodes\n")
        return path

    def reset(self):
        self._episodes_this_session += 1
        self._t = 0
        self._ally_health = np.ones(self.n_agents)
        self._enemy_health = np.ones(self.n_enemies)
        return self.get_obs(), self.get_state()

    def full_restart(self):
        self._log("close")
        self._log("launch")

    def step(self, actions):
        _STEP_CALLS["count"] += 1
        if _STEP_CALLS["count"] == int(os.environ.get("STAND_IN_SC2_RAISE_ON_STEP", 0)):
            raise OSError("Broken pipe")
        if _STEP_CALLS["count"] == int(os.environ.get("STAND_IN_SC2_CRASH_ON_STEP", 0)):
            self.full_restart()  # SMAC: except (ProtocolError, ConnectionError): full_restart(); return 0, True, {}
            return 0, True, {}
        actions = [int(a) for a in actions]
        available = self.get_avail_actions()
        for agent, action in enumerate(actions):
            assert available[agent][action] == 1, f"Agent {agent} cannot perform action {action}"
        damage = np.zeros(self.n_enemies)
        for agent, action in enumerate(actions):
            if action >= 6 and self._ally_health[agent] > 0:
                damage[action - 6] += 0.25
        before = self._enemy_health.sum()
        self._enemy_health = np.clip(self._enemy_health - damage, 0, 1)
        alive_enemies = self._enemy_health > 0
        hits = self._rng.random(self.n_agents) < 0.1 * alive_enemies.sum() / self.n_enemies
        self._ally_health = np.clip(self._ally_health - 0.02 * hits, 0, 1)
        self._t += 1
        won = not alive_enemies.any()
        lost = not (self._ally_health > 0).any()
        reward = float(before - self._enemy_health.sum()) + (10.0 if won else 0.0)
        info = {"battle_won": won, "dead_allies": int((self._ally_health <= 0).sum()), "dead_enemies": int((~alive_enemies).sum())}
        terminated = won or lost
        if self._t >= self.episode_limit and not terminated:
            terminated = True
            if self.continuing_episode:
                info["episode_limit"] = True
        return reward, terminated, info

    def get_obs(self):
        features = np.concatenate([[self._t / self.episode_limit, 0, 0, 0], np.repeat(self._ally_health, 5), np.repeat(self._enemy_health, 5)])
        return [features * (1.0 if self._ally_health[i] > 0 else 0.0) + i * 1e-3 for i in range(self.n_agents)]

    def get_state(self):
        return np.concatenate([np.repeat(self._ally_health, 4), np.repeat(self._enemy_health, 3)]).astype(np.float32)

    def get_avail_actions(self):
        rows = []
        for agent in range(self.n_agents):
            if self._ally_health[agent] <= 0:
                rows.append([1] + [0] * (self.n_actions - 1))  # the dead can only no-op
            else:
                rows.append([0] + [1] * 5 + [int(h > 0) for h in self._enemy_health])
        return rows

    def close(self):
        if not self._closed:
            self._closed = True
            self._log("close")
