"""SMAX (JaxMARL): the batched env, its masks, map handling, and a short fit through the CLI."""

import glob
import os

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torchrl.envs.utils import check_env_specs

pytest.importorskip("jaxmarl", reason="SMAX needs the [smax] extra (make test installs it)")

from conftest import CONFIGS  # noqa: E402
from dmac_lightning.cli import main  # noqa: E402
from dmac_lightning.envs import check_env_config  # noqa: E402
from dmac_lightning.envs.smax import PAPER_MAPS, SmaxEnv, smac_state  # noqa: E402


def test_check_env_specs_and_layout():
    env = SmaxEnv(n_envs=4, map_name="3m", seed=0)
    check_env_specs(env)
    assert env.info.n_agents == 3 and env.info.n_actions == 8 and env.info.reports_wins
    td = env.reset()
    assert td["agents", "observation"].shape == (4, 3, env.info.obs_dim)
    assert td["state"].shape == (4, env.info.state_dim)
    assert td["agents", "action_mask"].dtype == torch.bool


def test_random_policy_respects_masks_for_500_steps():
    env = SmaxEnv(n_envs=8, map_name="3m", max_steps=12, seed=1)
    import jax

    game = env._game
    availability = jax.jit(jax.vmap(game.get_avail_actions))
    td = env.reset()
    wins = truncations = 0
    length = torch.zeros(8, dtype=torch.long)
    for _ in range(500):
        mask = td["agents", "action_mask"]
        # the mask we expose is SMAX's own availability for the current state
        own = availability(env._states)
        expected = torch.stack([torch.as_tensor(own[a].tolist()) for a in game.agents], dim=1).bool()
        assert torch.equal(mask, expected)
        assert mask.any(-1).all()  # stop is always available, also to the dead
        td = env.rand_action(td)  # the spec's mask makes the random policy pick available actions only
        chosen = mask.gather(-1, td["agents", "action"].unsqueeze(-1))
        assert chosen.all()
        td, td_next = env.step_and_maybe_reset(td)
        step = td["next"]
        won, terminated, truncated = step["info", "battle_won"], step["terminated"], step["truncated"]
        assert not (won & ~terminated).any()  # a win ends the episode as a termination
        assert not (terminated & truncated).any()
        assert torch.equal(step["done"], terminated | truncated)
        wins += int(won.sum())
        truncations += int(truncated.sum())
        length += 1
        assert (length <= 12).all()  # episodes never outlast max_steps
        assert torch.equal(truncated[:, 0], (length == 12) & ~terminated[:, 0])
        length[step["done"][:, 0]] = 0
        td = td_next
    assert truncations > 0  # max_steps 12 is often reached by random play: a truncation, not a termination


def test_maps_sc2_only_maps_and_registered_3s_vs_3z():
    env = SmaxEnv(n_envs=2, map_name="3s_vs_3z", seed=0)
    assert env.info.n_agents == 3
    for map_name in ("1c3s5z", "MMM2", "2c_vs_64zg"):
        with pytest.raises(ValueError, match=r"needs StarCraft II: use data.env: smac"):
            check_env_config("smax", {"map_name": map_name})
    with pytest.raises(ValueError, match=r"unknown map 'nowhere'; allowed values: .*3m"):
        check_env_config("smax", {"map_name": "nowhere"})


def test_seeded_rollouts_are_reproducible():
    a, b = SmaxEnv(n_envs=3, seed=7), SmaxEnv(n_envs=3, seed=7)
    torch.manual_seed(0)
    ra = a.rollout(20, break_when_any_done=False)
    torch.manual_seed(0)
    rb = b.rollout(20, break_when_any_done=False)
    assert torch.equal(ra["state"], rb["state"])


def test_an_evaluations_battles_do_not_depend_on_the_policies_of_earlier_ones():
    """docs/results/as_published/scripted_reference.py replays a run's evaluation battles with scripts: that
    needs the k-th evaluation's battles to be a function of the seed and k only (one round of the full
    episode limit each, SMAX's keys drawn per step whatever the actions)."""
    from dmac_lightning.envs.common import ACTION, ACTION_MASK
    from dmac_lightning.evaluation import evaluate_episodes

    def preferring(order):
        def policy(td):
            mask = td.get(ACTION_MASK)
            priority = torch.tensor(order, dtype=torch.float).expand_as(mask)
            td.set(ACTION, priority.masked_fill(~mask, -1.0).argmax(-1))
            return td
        return policy

    advance_then_attack = preferring([0, 1, 0, 0, 0, 10, 9, 8])
    earlier = {"stop": preferring([0, 0, 0, 0, 1, 0, 0, 0]), "attack": preferring([0, 0, 0, 1, 0, 8, 9, 10])}
    results = {}
    for name, policy in earlier.items():
        env = SmaxEnv(n_envs=8, map_name="3m", max_steps=30, seed=5)
        first = evaluate_episodes(env, policy, 8, 30)
        results[name] = (first, evaluate_episodes(env, advance_then_attack, 8, 30))
    # the earlier evaluations played differently...
    assert results["stop"][0] != results["attack"][0]
    # ...and the next evaluation met the same battles all the same
    assert results["stop"][1] == results["attack"][1]


def test_short_qmix_dmac_fit_on_smax_3m_writes_win_rate(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    main(
        [
            "fit", "--config", os.path.join(CONFIGS, "smax", "3m.yaml"),
            "--config", os.path.join(CONFIGS, "algorithms", "qmix_dmac.yaml"),
            "--data.n_envs", "4", "--data.episodes_per_collect", "4", "--data.batch_size", "4", "--data.warmup_episodes", "0",
            "--data.max_env_steps", "300", "--data.env_steps_per_epoch", "300",
            "--evaluation.interval", "150", "--evaluation.episodes", "4", "--evaluation.render_episodes", "2",
            "--trainer.enable_progress_bar", "false",
        ]
    )
    (run_dir,) = glob.glob(str(tmp_path / "lightning_logs" / "smax_3m" / "QmixDmac" / "version_0"))
    events = EventAccumulator(run_dir)
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"eval/win_rate", "train/win_rate", "eval/return", "eval/episode_length", "loss/critic"} <= tags, tags
    assert all(0.0 <= e.value <= 1.0 for e in events.Scalars("eval/win_rate"))

    # every evaluation also drew two episodes: GIFs in the run's replays/ and in TensorBoard's images
    evaluated_at = [e.step for e in events.Scalars("eval/win_rate")]
    gifs = sorted(os.listdir(os.path.join(run_dir, "replays")))
    assert gifs == sorted(f"eval_{steps}_{k}.gif" for steps in evaluated_at for k in range(2)), gifs
    from PIL import Image

    for name in gifs:
        with Image.open(os.path.join(run_dir, "replays", name)) as gif:
            assert gif.format == "GIF" and gif.n_frames >= 2  # the start and at least one step
    assert {"eval/replay_0", "eval/replay_1"} <= set(events.Tags()["images"])
    assert [e.step for e in events.Images("eval/replay_0")] == evaluated_at


def test_one_jitted_call_per_step_restarts_ended_battles_inside_it():
    import jax

    env = SmaxEnv(n_envs=6, map_name="3m", max_steps=5, seed=3)
    calls = {"step": 0, "reset": 0}

    def counted(name, fn):
        def call(*args):
            calls[name] += 1
            return fn(*args)

        return call

    env._step_and_restart = counted("step", env._step_and_restart)
    env._reset_where = counted("reset", env._reset_where)
    game = env._game
    observe = jax.jit(jax.vmap(lambda s: (smac_state(game, s.state), game.get_avail_actions(s), s.state.step)))
    td = env.reset()
    ended_total = 0
    for _ in range(12):
        td, td_next = env.step_and_maybe_reset(env.rand_action(td))
        ended = td["next", "done"][:, 0]
        ended_total += int(ended.sum())
        state, available, step = observe(env._states)
        # what the envs see now is the env's internal battles: restarted ones at step 0, the others continuing
        assert torch.equal(td_next["state"], torch.as_tensor(jax.device_get(state)))
        expected_mask = torch.stack([torch.as_tensor(jax.device_get(available[a])) for a in game.agents], 1).bool()
        assert torch.equal(td_next["agents", "action_mask"], expected_mask)
        step = torch.as_tensor(jax.device_get(step))
        assert torch.equal(step == 0, ended)
        # an ended battle's last observation is its own, not its restart's
        if ended.any():
            assert not torch.equal(td["next", "state"][ended], td_next["state"][ended])
        td = td_next
    assert ended_total >= 6  # max_steps 5: every battle ended at least once
    assert calls == {"step": 12, "reset": 0}  # TorchRL's resets of the ended envs cost no further JAX call


def random_play(env: SmaxEnv, steps: int) -> dict[str, torch.Tensor]:
    """Every state and observation ``env`` hands out over ``steps`` steps of random play."""
    td = env.reset()
    seen = {"state": [td["state"]], "observation": [td["agents", "observation"]]}
    for _ in range(steps):
        td, td = env.step_and_maybe_reset(env.rand_action(td))
        seen["state"].append(td["state"])
        seen["observation"].append(td["agents", "observation"])
    return {name: torch.cat(values).flatten(0, -2) for name, values in seen.items()}


def assert_on_smac_scales(name: str, values: torch.Tensor, bound: float = 1.05) -> None:
    """Every feature (column) within about [-1, 1], SMAC's scale."""
    largest = values.abs().max(0).values
    assert (largest <= bound).all(), f"{name}: features {torch.nonzero(largest > bound).flatten().tolist()} reach {largest.max():.2f}"


@pytest.mark.parametrize("map_name", PAPER_MAPS)
def test_state_and_observations_are_on_smac_scales_over_random_play(map_name):
    env = SmaxEnv(n_envs=8, map_name=map_name, seed=0)
    seen = random_play(env, 60)
    assert seen["state"].shape[1] == env.info.state_dim and seen["observation"].shape[1] == env.info.obs_dim
    assert_on_smac_scales(f"{map_name} state", seen["state"])
    assert_on_smac_scales(f"{map_name} observation", seen["observation"])
    assert seen["state"].abs().amax(0).gt(0.2).any()  # on that scale, not squashed to nothing


def test_jaxmarls_own_world_state_fails_the_scale_check():
    """The check above catches what the env handed out before: JaxMARL's ``get_world_state``
    (raw map coordinates up to 32, cooldowns in seconds, integer unit types)."""
    import jax

    env = SmaxEnv(n_envs=8, map_name="2s3z", seed=0)
    world_state = jax.jit(jax.vmap(env._game.get_world_state))
    td = env.reset()
    states = []
    for _ in range(20):
        states.append(torch.as_tensor(jax.device_get(world_state(env._states))))
        td, td = env.step_and_maybe_reset(env.rand_action(td))
    with pytest.raises(AssertionError, match="reach"):
        assert_on_smac_scales("JaxMARL's world state", torch.cat(states))


def test_state_features_are_smacs():
    """2s3z: 5 allies (2 stalkers, 3 zealots) of health, cooldown, x, y and 2 type bits, then 5 enemies
    without the cooldown; positions relative to the map centre over the map size; the dead all zero."""
    import jax.numpy as jnp

    env = SmaxEnv(n_envs=1, map_name="2s3z", seed=0)
    game = env._game
    env.reset()
    units = jax_first(env._states.state)
    size = 32.0
    units = units.replace(
        unit_positions=units.unit_positions.at[0].set(jnp.array([0.0, 32.0])).at[5].set(jnp.array([24.0, 8.0])),
        unit_health=units.unit_health.at[1].set(40.0),  # a stalker at a quarter of its 160
        unit_weapon_cooldowns=units.unit_weapon_cooldowns.at[2].set(0.43),  # a zealot at half of its 0.86 s
        unit_alive=units.unit_alive.at[4].set(False).at[9].set(False),
    )
    state = torch.as_tensor(smac_state(game, units).tolist())
    allies, enemies = state[:30].view(5, 6), state[30:].view(5, 5)
    assert allies[0].tolist() == pytest.approx([1.0, 0.0, (0 - 16) / size, (32 - 16) / size, 1.0, 0.0])  # stalker
    assert allies[1, 0].item() == pytest.approx(0.25)
    assert allies[2, :2].tolist() == pytest.approx([1.0, 0.5]) and allies[2, 4:].tolist() == [0.0, 1.0]  # zealot
    assert enemies[0].tolist() == pytest.approx([1.0, (24 - 16) / size, (8 - 16) / size, 1.0, 0.0])
    assert allies[4].abs().sum() == 0 and enemies[4].abs().sum() == 0
    assert env.info.state_dim == 55
    assert SmaxEnv(n_envs=1, map_name="3m", seed=0).info.state_dim == 3 * 4 + 3 * 3  # one unit type: no type bits


def jax_first(tree):
    import jax

    return jax.tree_util.tree_map(lambda x: x[0], tree)
