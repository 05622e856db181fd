"""The PyMARL adapter (benchmarks/peers/pymarl_env.py) hands a peer exactly what our collector hands our
algorithms: the same observations, state, masks, rewards and ends of episodes, step for step, on one seed."""

import numpy as np
import pytest
import torch
from tensordict import TensorDict
from torchrl.collectors import Collector

from benchmarks.peers.pymarl_env import PymarlEnv
from dmac_lightning.envs import make_env
from dmac_lightning.envs.common import ACTION, ACTION_MASK, BATTLE_WON, OBSERVATION, STATE

STEPS = 300


class MaskedRandomPolicy:
    """Uniform over each agent's available actions, from its own generator (the same draws every run)."""

    def __init__(self, seed: int) -> None:
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, td: TensorDict) -> TensorDict:
        weights = td.get(ACTION_MASK).float()
        flat = weights.reshape(-1, weights.shape[-1])
        actions = torch.multinomial(flat, 1, generator=self.generator).reshape(weights.shape[:-1])
        return td.set(ACTION, actions)


def collector_steps(env_name: str, env_kwargs: dict, seed: int) -> TensorDict:
    """``STEPS`` transitions of one env as our training collector records them."""
    env = make_env(env_name, env_kwargs, n_envs=1, seed=seed)
    collector = Collector(env, MaskedRandomPolicy(seed + 100), frames_per_batch=STEPS, total_frames=STEPS, trust_policy=True)
    batch = next(iter(collector)).reshape(-1)
    collector.shutdown()
    return batch


@pytest.mark.parametrize(
    "env_name, env_kwargs",
    [
        ("stochastic_game", {"n_states": 4, "n_agents": 3, "n_actions": 3, "episode_limit": 7, "game_seed": 3}),
        pytest.param("smax", {"map_name": "3m", "max_steps": 20}, id="smax-3m"),
    ],
)
def test_adapter_equals_our_collector_step_for_step(env_name, env_kwargs):
    if env_name == "smax":
        pytest.importorskip("jaxmarl", reason="SMAX needs the [smax] extra (make test installs it)")
    seed = 5
    steps = collector_steps(env_name, env_kwargs, seed)
    adapter = PymarlEnv(env=env_name, env_kwargs=env_kwargs, seed=seed)
    info = adapter.get_env_info()
    assert (info["n_agents"], info["n_actions"]) == tuple(steps.get(ACTION_MASK).shape[-2:])
    assert (info["obs_shape"], info["state_shape"]) == (steps.get(OBSERVATION).shape[-1], steps.get(STATE).shape[-1])

    adapter.reset()
    ends = {"terminated": 0, "limit": 0, "won": 0}
    for t in range(STEPS):
        step = steps[t]
        np.testing.assert_array_equal(np.stack(adapter.get_obs()), step.get(OBSERVATION).numpy())
        np.testing.assert_array_equal(adapter.get_state(), step.get(STATE).numpy())
        np.testing.assert_array_equal(np.array(adapter.get_avail_actions()), step.get(ACTION_MASK).long().numpy())
        reward, ended, step_info = adapter.step(step.get(ACTION).numpy())
        led_to = step.get("next")
        assert reward == pytest.approx(float(led_to.get("reward")), abs=0)
        terminated, truncated = bool(led_to.get("terminated")), bool(led_to.get("truncated"))
        assert ended == (terminated or truncated)
        assert step_info.get("episode_limit", False) == (truncated and not terminated)
        if ended:
            # What the last step led to stays visible until reset (PyMARL stores it as the final entry).
            np.testing.assert_array_equal(np.stack(adapter.get_obs()), led_to.get(OBSERVATION).numpy())
            np.testing.assert_array_equal(adapter.get_state(), led_to.get(STATE).numpy())
            if env_name == "smax":
                assert step_info["battle_won"] == bool(led_to.get(BATTLE_WON))
                ends["won"] += step_info["battle_won"]
            else:
                assert "battle_won" not in step_info
            ends["terminated"] += terminated
            ends["limit"] += truncated and not terminated
            adapter.reset()
    # The comparison covered every kind of end each env has.
    if env_name == "stochastic_game":
        assert ends["terminated"] == STEPS // env_kwargs["episode_limit"] and ends["limit"] == 0
    else:
        assert ends["terminated"] >= 1 and ends["limit"] >= 1


def test_adapter_rejects_unavailable_actions_and_steps_before_reset():
    adapter = PymarlEnv(env="stochastic_game", env_kwargs={"n_states": 3, "n_agents": 2, "n_actions": 3, "episode_limit": 2})
    with pytest.raises(RuntimeError, match="reset"):
        adapter.step([0, 0])
    adapter.reset()
    with pytest.raises(ValueError, match="unavailable"):
        adapter.step([0, 3])
    adapter.step([0, 1])
    _, ended, _ = adapter.step([2, 2])
    assert ended
    with pytest.raises(RuntimeError, match="reset"):
        adapter.step([0, 0])
    assert adapter.optimal_return > 0


@pytest.mark.parametrize("map_name, n_allies, n_enemies, width", [("3m", 3, 3, 4), ("2s3z", 5, 5, 6)])
def test_agent_features_name_the_ally_blocks_at_the_front_of_the_smax_state(map_name, n_allies, n_enemies, width):
    """What PyMARL-based FOP reads as ``unit_dim``: each ally's block (health, cooldown, x, y, type bits),
    then each enemy's (the same without the cooldown), as ``smac_state`` lays them out."""
    pytest.importorskip("jaxmarl", reason="SMAX needs the [smax] extra (make test installs it)")
    adapter = PymarlEnv(env="smax", env_kwargs={"map_name": map_name}, seed=0)
    info = adapter.get_env_info()
    assert len(info["agent_features"]) == width
    assert info["state_shape"] == n_allies * width + n_enemies * (width - 1)
    adapter.reset()
    allies = adapter.get_state()[: n_allies * width].reshape(n_allies, width)
    np.testing.assert_array_equal(allies[:, 0], 1.0)  # every ally starts at full health
    assert np.all(np.abs(allies[:, 2:4]) <= 0.5)  # positions relative to the map centre over its size
    if width > 4:
        np.testing.assert_array_equal(allies[:, 4:].sum(1), 1.0)  # one unit type each
    assert "agent_features" not in PymarlEnv(env="stochastic_game").get_env_info()
