"""``smacv2.env`` stand-in: smacv2's public API over the toy battle of the ``smac.env`` stand-in.

As in smacv2: ``StarCraft2Env`` takes smacv2's extra keyword arguments (``capability_config``,
``conic_fov``, ``use_unit_ranges``, ...) and ``reset(episode_config={})``; with ``team_gen`` in the
capability config the team sizes are its ``n_units`` / ``n_enemies``, not the map's; on the
procedurally generated ``10gen_*`` maps a reset without the episode's units (``team_gen``) fails with
``CannotResetException``. ``StarCraftCapabilityEnvWrapper(**kwargs)`` needs ``capability_config``,
copies its ``n_units`` / ``n_enemies`` into every distribution's settings, draws an ``episode_config``
from them at every ``reset()`` and forwards everything else to the game.
"""

from smac import env as _smac_v1

# smacv2's smac_maps.py: the procedurally generated maps, 10 vs 10 unless team_gen says otherwise
MAPS = {"10gen_terran": (10, 10, 200), "10gen_protoss": (10, 10, 200), "10gen_zerg": (10, 10, 200)}
_smac_v1.MAPS.update(MAPS)


class CannotResetException(Exception):
    pass


class StarCraft2Env(_smac_v1.StarCraft2Env):
    def __init__(self, map_name="8m", obs_own_pos=False, obs_starcraft=True, conic_fov=False, num_fov_actions=12,
                 use_unit_ranges=False, min_attack_range=2, kill_unit_step_mul=2, fully_observable=False,
                 capability_config={}, prob_obs_enemy=1.0, action_mask=True, **kwargs):  # noqa: B006 - smacv2's signature
        super().__init__(map_name=map_name, **kwargs)
        self.capability_config = capability_config
        self.conic_fov, self.use_unit_ranges, self.obs_own_pos = conic_fov, use_unit_ranges, obs_own_pos
        team_gen = capability_config.get("team_gen")
        if team_gen is not None:  # the drawn teams replace the map's
            self.n_agents, self.n_enemies = team_gen["n_units"], team_gen["n_enemies"]
            self.n_actions = 6 + self.n_enemies
        self.episode_config = {}

    def reset(self, episode_config={}):  # noqa: B006 - smacv2's signature
        if self.map_name.startswith("10gen") and "team_gen" not in episode_config:
            raise CannotResetException("no units to place: the 10gen maps need an episode_config")
        self.episode_config = episode_config
        return super().reset()


class StarCraftCapabilityEnvWrapper:
    def __init__(self, **kwargs):
        self.distribution_config = kwargs["capability_config"]
        for key, settings in self.distribution_config.items():
            if key not in ("n_units", "n_enemies"):
                settings["n_units"] = self.distribution_config["n_units"]
                settings["n_enemies"] = self.distribution_config["n_enemies"]
        self.env = StarCraft2Env(**kwargs)

    def reset(self):
        team_gen = self.distribution_config["team_gen"]
        units = team_gen["unit_types"]
        team = [units[i % len(units)] for i in range(team_gen["n_units"])]
        return self.env.reset({"team_gen": {"ally_team": team, "enemy_team": team[: team_gen["n_enemies"]]}})

    def __getattr__(self, name):
        if name != "env" and hasattr(self.env, name):
            return getattr(self.env, name)
        raise AttributeError(name)
