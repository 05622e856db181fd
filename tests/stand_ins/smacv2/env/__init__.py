"""``smacv2.env`` stand-in: smacv2's public API over the toy battle of the ``smac.env`` stand-in.

As in smacv2: ``StarCraft2Env`` takes ``capability_config`` and ``reset(episode_config={})``; on the
procedurally generated ``10gen_*`` maps a reset without the episode's units (``team_gen``) fails
with ``CannotResetException``. ``StarCraftCapabilityEnvWrapper(**kwargs)`` needs ``capability_config``,
draws an ``episode_config`` from it at every ``reset()`` and forwards everything else to the game.
"""

from smac import env as _smac_v1

_smac_v1.MAPS.setdefault("10gen_terran", (5, 5, 200))


class CannotResetException(Exception):
    pass


class StarCraft2Env(_smac_v1.StarCraft2Env):
    def __init__(self, map_name="8m", capability_config={}, **kwargs):  # noqa: B006 - smacv2's signature
        super().__init__(map_name=map_name, **kwargs)
        self.capability_config = capability_config
        self.episode_config = {}

    def reset(self, episode_config={}):  # noqa: B006 - smacv2's signature
        if self.map_name.startswith("10gen") and "team_gen" not in episode_config:
            raise CannotResetException("no units to place: the 10gen maps need an episode_config")
        self.episode_config = episode_config
        return super().reset()


class StarCraftCapabilityEnvWrapper:
    def __init__(self, **kwargs):
        self.distribution_config = kwargs["capability_config"]
        self.env = StarCraft2Env(**kwargs)

    def reset(self):
        n_units, n_enemies = self.distribution_config["n_units"], self.distribution_config["n_enemies"]
        units = self.distribution_config["team_gen"]["unit_types"]
        team = [units[i % len(units)] for i in range(n_units)]
        return self.env.reset({"team_gen": {"ally_team": team, "enemy_team": team[:n_enemies]}})

    def __getattr__(self, name):
        if name != "env" and hasattr(self.env, name):
            return getattr(self.env, name)
        raise AttributeError(name)
