"""SMAX (JaxMARL's JAX re-implementation of SMAC combat) as a batched TorchRL env: no StarCraft II.

``n_envs`` copies of ``HeuristicEnemySMAX`` step in one jitted, vmapped call (compiled once); arrays
cross into torch by DLPack. Maps: 3m, 8m, 2s3z, 3s5z, 5m_vs_6m, 3s_vs_3z (registered here), and any
other scenario JaxMARL knows. 1c3s5z, MMM2 and 2c_vs_64zg have units SMAX does not model: they need
StarCraft II (``data.env: smac``).

Every env speaks SMAC's scales (docs/smax.md): the observations are SMAX's own (already in [-1, 1]); the
state is SMAC's (``smac_state``), not JaxMARL's ``get_world_state``, which hands out raw map coordinates
(0-32), raw cooldowns in seconds and integer unit types, and so starts every state-conditioned mixer and
critic out of scale.

Win: every enemy dead and at least one ally alive, into ``("info", "battle_won")``. The step limit
(``max_steps``) is a truncation, not a termination. SMAX pays at most 2 per episode (enemy health
removed, plus 1 for a win); ``reward_scale`` (default 10) gives returns SMAC's scale (at most 20), so
the paper's SMAC hyperparameters (omega 0.01) mean the same thing here.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from dataclasses import dataclass
from typing import Any, Callable

import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.envs import EnvBase

from dmac_lightning.envs.common import ACTION, EnvInfo, multi_agent_specs
from dmac_lightning.validation import check_positive_int

# JAX takes 75% of a GPU's memory at its first call unless told otherwise, which leaves the torch networks
# sharing that GPU too little; set before JAX is imported (a user's own setting wins).
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

INSTALL = "pip install 'jaxmarl==0.2.0'   (or: pip install -e '.[smax]')"
PAPER_MAPS = ("3m", "8m", "2s3z", "3s5z", "5m_vs_6m", "3s_vs_3z")
NEEDS_STARCRAFT = ("1c3s5z", "MMM2", "2c_vs_64zg")
# SMAX unit types: 0 marine, 1 marauder, 2 stalker, 3 zealot, 4 zergling, 5 hydralisk.
EXTRA_SCENARIOS = {"3s_vs_3z": ([2, 2, 2, 3, 3, 3], 3, 3)}


def check_config(config: dict[str, Any]) -> None:
    """Config-time checks: JaxMARL installed, the map expressible in SMAX, sane sizes."""
    map_name = config.get("map_name", "3m")
    if map_name in NEEDS_STARCRAFT:
        raise ValueError(
            f"smax: map {map_name!r} has units SMAX cannot express; it needs StarCraft II: use data.env: smac "
            f"(SMAX maps: {', '.join(PAPER_MAPS)})"
        )
    if importlib.util.find_spec("jaxmarl") is None:
        raise ImportError(f"data.env: smax needs JaxMARL, which is not installed: {INSTALL}")
    scenarios = _scenarios()
    if map_name not in scenarios:
        raise ValueError(f"smax: unknown map {map_name!r}; allowed values: {', '.join(sorted(scenarios))}")
    check_positive_int("data.env_kwargs.max_steps", config.get("max_steps", 100))


def _scenarios() -> dict:
    import jax.numpy as jnp
    from jaxmarl.environments.smax import smax_env

    for name, (unit_types, allies, enemies) in EXTRA_SCENARIOS.items():
        if name not in smax_env.MAP_NAME_TO_SCENARIO:
            smax_env.register_scenario(name, smax_env.Scenario(jnp.array(unit_types, dtype=jnp.uint8), allies, enemies, False, False))
    return smax_env.MAP_NAME_TO_SCENARIO


def smac_state(game: Any, units: Any) -> Any:
    """The global state of one battle (``units``: SMAX's inner ``State``) as SMAC builds it
    (``StarCraft2Env.get_state_dict``), feature for feature on SMAC's scales:

    * each ally: health / its type's maximum, weapon cooldown / its type's cooldown (clipped to [0, 1]),
      x and y relative to the map centre over the map's size (in [-0.5, 0.5]), then the unit type one-hot;
    * each enemy: the same without the cooldown (SMAC shows no enemy cooldowns);
    * a dead unit's features are all zero.

    The one-hot spans the scenario's distinct unit types and is left out where there is only one (SMAC's
    ``unit_type_bits``: 0 on 3m, 2 on 2s3z); SMAX has no shields. Unlike SMAC's default
    (``state_last_action``), the agents' last actions are not appended: the state is a function of the
    battle alone (the agent networks get their own last action as input).
    """
    import jax.numpy as jnp

    env = game._env
    types = units.unit_types
    kinds = _unit_kinds(game)
    health = units.unit_health / env.unit_type_health[types]
    cooldown = jnp.clip(units.unit_weapon_cooldowns / env.unit_type_weapon_cooldowns[types], 0.0, 1.0)
    size = jnp.array([env.map_width, env.map_height], dtype=jnp.float32)
    position = (units.unit_positions - size / 2) / size
    type_bits = [(types[:, None] == jnp.asarray(kinds, dtype=types.dtype)).astype(jnp.float32)] if len(kinds) > 1 else []
    allies = jnp.concatenate([health[:, None], cooldown[:, None], position, *type_bits], axis=1)
    enemies = jnp.concatenate([health[:, None], position, *type_bits], axis=1)
    n_allies = env.num_allies
    alive = units.unit_alive[:, None]
    return jnp.concatenate(
        [jnp.where(alive[:n_allies], allies[:n_allies], 0.0).reshape(-1), jnp.where(alive[n_allies:], enemies[n_allies:], 0.0).reshape(-1)]
    )


def _unit_kinds(game: Any) -> tuple[int, ...]:
    """The unit types a battle of ``game`` can hold: its scenario's, or all SMAX's when it draws them."""
    env = game._env
    if env.scenario is None or env.smacv2_unit_type_generation:
        return tuple(range(env.unit_type_bits))
    return tuple(sorted({int(t) for t in env.scenario.tolist()}))


# What the torch side sees of a battle, in the order the packed arrays hold them.
_SEEN = ("observation", "action_mask", "state")
_FOLLOWED = ("reward", "terminated", "truncated", "battle_won")


@dataclass(frozen=True)
class _Compiled:
    """One configuration's game and its jitted, vmapped functions. Each returns ``(key, states, packed)``:
    ``packed`` is one float32 array ``[n_envs, width]`` holding every output side by side (``widths``
    says how wide each is), so that a step crosses into torch in one zero-copy DLPack hand-over."""

    game: Any
    info: EnvInfo
    widths: dict[str, int]
    reset_all: Callable
    reset_where: Callable
    step: Callable


@functools.lru_cache(maxsize=16)
def _compile(map_name: str, max_steps: int, reward_scale: float, n_envs: int, smax_kwargs: tuple) -> _Compiled:
    """The game and its batched, jitted reset/step for one configuration, built once per process
    (JAX compiles each on first call; every env object of that configuration shares them)."""
    import jax
    import jax.numpy as jnp
    from jaxmarl.environments.smax import HeuristicEnemySMAX

    game = HeuristicEnemySMAX(scenario=_scenarios()[map_name], max_steps=max_steps, **dict(smax_kwargs))
    agents = game.agents
    n_allies = game.num_allies
    info = EnvInfo(
        n_agents=len(agents),
        n_actions=int(game.action_space(agents[0]).n),
        obs_dim=int(game.observation_space(agents[0]).shape[0]),
        state_dim=int(smac_state(game, game.reset(jax.random.PRNGKey(0))[1].state).shape[0]),
        episode_limit=max_steps,
        reports_wins=True,
    )
    seen_widths = {"observation": info.n_agents * info.obs_dim, "action_mask": info.n_agents * info.n_actions, "state": info.state_dim}

    def observe(state: Any) -> dict:
        obs = game._env.get_obs(state.state)  # the underlying SMAX: every unit's observation
        available = game.get_avail_actions(state)
        return {
            "observation": jnp.stack([obs[a] for a in agents]),
            "action_mask": jnp.stack([available[a] for a in agents]),
            "state": smac_state(game, state.state),
        }

    def pack(*parts: tuple[dict, tuple[str, ...]]) -> Any:
        # Named explicitly: JAX hands dicts back with their keys sorted.
        return jnp.concatenate([part[name].reshape(n_envs, -1).astype(jnp.float32) for part, names in parts for name in names], axis=1)

    def step_one(key: Any, state: Any, actions: Any) -> tuple:
        _, state, rewards, _, _ = game.step_env(key, state, {a: actions[i] for i, a in enumerate(agents)})
        alive = state.state.unit_alive
        allies_dead, enemies_dead = ~alive[:n_allies].any(), ~alive[n_allies:].any()
        terminated = allies_dead | enemies_dead
        followed = {
            "reward": reward_scale * rewards[agents[0]],
            "terminated": terminated,
            # SMAX's own limit fires one step late (it tests the step count before incrementing it).
            "truncated": (state.state.step >= max_steps) & ~terminated,
            "battle_won": enemies_dead & ~allies_dead,
        }
        return state, observe(state), followed

    def fresh_battles(key: Any) -> Any:
        return jax.vmap(lambda k: game.reset(k)[1])(jax.random.split(key, n_envs))

    def where_envs(mask: Any, new: Any, old: Any) -> Any:
        return jax.tree_util.tree_map(lambda n, o: jnp.where(mask.reshape((-1,) + (1,) * (n.ndim - 1)), n, o), new, old)

    def reset_where(key: Any, states: Any, mask: Any) -> tuple:
        """Fresh battles where ``mask`` (all of them when ``states`` is None); what every env sees afterwards."""
        key, sub = jax.random.split(key)
        fresh = fresh_battles(sub)
        states = fresh if states is None else where_envs(mask, fresh, states)
        return key, states, pack((jax.vmap(observe)(states), _SEEN))

    def step_and_restart(key: Any, states: Any, actions: Any) -> tuple:
        """One step of every battle, and a fresh battle in place of each that ended: what the step led to
        (the last observation of an ended battle included), then what every env sees after the restarts."""
        key, step_key, reset_key = jax.random.split(key, 3)
        stepped, seen, followed = jax.vmap(step_one)(jax.random.split(step_key, n_envs), states, actions)
        ended = followed["terminated"] | followed["truncated"]
        states = where_envs(ended, fresh_battles(reset_key), stepped)
        return key, states, pack((seen, _SEEN), (followed, _FOLLOWED), (jax.vmap(observe)(states), _SEEN))

    widths = {**seen_widths, **{name: 1 for name in _FOLLOWED}, **{f"restarted_{name}": w for name, w in seen_widths.items()}}
    return _Compiled(
        game, info, widths, jax.jit(lambda key: reset_where(key, None, None)), jax.jit(reset_where), jax.jit(step_and_restart)
    )


class SmaxEnv(EnvBase):
    """``n_envs`` SMAX battles against the heuristic enemy, in the shared key layout.

    One jitted call per env step (``_step``) steps every battle and already restarts those that ended,
    as JaxMARL's own auto-reset does; TorchRL's reset of the ended envs that follows
    (``step_and_maybe_reset``) hands out those restarts without calling JAX again. A battle that ended is
    therefore a fresh one in the env's internal state (``snapshot``) right after the step that ended it.
    """

    def __init__(
        self,
        n_envs: int = 1,
        map_name: str = "3m",
        max_steps: int = 100,
        reward_scale: float = 10.0,
        seed: int | None = None,
        device: torch.device | str | None = None,
        **smax_kwargs: Any,
    ) -> None:
        check_config({"map_name": map_name, "max_steps": max_steps})
        import jax
        import jax.numpy as jnp

        device = torch.device(device or "cpu")
        super().__init__(device=device, batch_size=torch.Size([n_envs]))
        self.map_name = map_name
        compiled = _compile(map_name, max_steps, float(reward_scale), n_envs, tuple(sorted(smax_kwargs.items())))
        self._game, self.info, self._widths = compiled.game, compiled.info, compiled.widths
        self._reset_all, self._reset_where, self._step_and_restart = compiled.reset_all, compiled.reset_where, compiled.step
        self._jnp = jnp
        self._jax_device = jax.devices()[0]
        self._jax_device_type = "cuda" if self._jax_device.platform == "gpu" else "cpu"
        self._key = jax.random.PRNGKey(0 if seed is None else seed)
        self._states = None
        # After a step: which envs ended and what they see after their restart (handed out by the next _reset).
        self._restarts: tuple[torch.Tensor, TensorDict] | None = None
        for key, spec in multi_agent_specs(self.info, n_envs, device).items():
            setattr(self, key, spec)

    def _unpack(self, packed: Any, names: tuple[str, ...] | None = None) -> dict[str, torch.Tensor]:
        """The packed outputs (``names``, default all of a step's) as torch tensors: views of the one array
        JAX returned (zero-copy where torch and JAX share the device; else one transfer)."""
        flat = torch.from_dlpack(packed)
        if flat.device != self.device:
            flat = flat.to(self.device)
        names = names or tuple(self._widths)
        return dict(zip(names, flat.split([self._widths[name] for name in names], dim=1)))

    def _seen(self, parts: dict[str, torch.Tensor], prefix: str = "") -> TensorDict:
        n_envs, info = self.batch_size[0], self.info
        mask = parts[prefix + "action_mask"].view(n_envs, info.n_agents, info.n_actions).bool()
        self.full_action_spec[ACTION].update_mask(mask)  # so that rand_action() only picks available actions
        agents = TensorDict(
            {"observation": parts[prefix + "observation"].unflatten(1, (info.n_agents, info.obs_dim)), "action_mask": mask},
            batch_size=(n_envs, info.n_agents),
        )
        return TensorDict({"agents": agents, "state": parts[prefix + "state"]}, batch_size=self.batch_size, device=self.device)

    def _reset(self, tensordict: TensorDictBase | None = None, **kwargs: Any) -> TensorDictBase:
        reset = None if tensordict is None else tensordict.get("_reset", None)
        restarts, self._restarts = self._restarts, None
        if reset is not None and restarts is not None and torch.equal(reset.reshape(-1), restarts[0]):
            out = restarts[1]  # the ended battles were restarted inside the step
            self.full_action_spec[ACTION].update_mask(out.get(("agents", "action_mask")))
        else:
            if reset is None or self._states is None:
                self._key, self._states, packed = self._reset_all(self._key)
            else:
                self._key, self._states, packed = self._reset_where(self._key, self._states, self._to_jax(reset.reshape(-1)))
            out = self._seen(self._unpack(packed, _SEEN))
        flags = torch.zeros(self.batch_size[0], 1, dtype=torch.bool, device=self.device)
        out.update({"done": flags, "terminated": flags.clone(), "truncated": flags.clone(), "info": {"battle_won": flags.clone()}})
        return out

    def _step(self, tensordict: TensorDictBase) -> TensorDictBase:
        actions = self._to_jax(tensordict.get(ACTION).to(torch.int32))
        self._key, self._states, packed = self._step_and_restart(self._key, self._states, actions)
        parts = self._unpack(packed)
        terminated, truncated = parts["terminated"].bool(), parts["truncated"].bool()
        done = terminated | truncated
        self._restarts = (done.reshape(-1), self._seen(parts, prefix="restarted_"))
        result = self._seen(parts)  # after the restarts' mask: the spec's mask is the one of what the step led to
        result.update(
            {
                "reward": parts["reward"],
                "terminated": terminated,
                "truncated": truncated,
                "done": done,
                "info": {"battle_won": parts["battle_won"].bool()},
            }
        )
        return result

    def _to_jax(self, tensor: torch.Tensor) -> Any:
        """Zero-copy by DLPack when torch and JAX share the device (both CPU, or both GPU); else through the host
        (e.g. a CPU-only JAX under a GPU run)."""
        if tensor.device.type == self._jax_device_type:
            return self._jnp.from_dlpack(tensor.contiguous())
        import jax

        return jax.device_put(tensor.cpu().numpy(), self._jax_device)

    def snapshot(self) -> dict[str, Any]:
        """Where every unit is, for drawing (``dmac_lightning.rendering``): per env ``positions``,
        ``alive``, ``health`` (fraction of the unit type's full health) and ``teams``."""
        import numpy as np

        state = self._states.state
        full = np.asarray(self._game._env.unit_type_health)[np.asarray(state.unit_types)]
        return {
            "positions": np.asarray(state.unit_positions),
            "alive": np.asarray(state.unit_alive).astype(bool),
            "health": np.clip(np.asarray(state.unit_health) / full, 0, 1),
            "teams": np.asarray(state.unit_teams),
            "map_size": (self._game._env.map_width, self._game._env.map_height),
        }

    def _set_seed(self, seed: int | None) -> None:
        import jax

        self._key = jax.random.PRNGKey(0 if seed is None else seed)

    def checkpoint_state(self) -> dict[str, torch.Tensor]:
        return {"key": torch.from_dlpack(self._key).clone()}

    def load_checkpoint_state(self, state: dict[str, torch.Tensor]) -> None:
        self._key = self._jnp.asarray(state["key"].cpu().numpy())
