"""The paper's stochastic game: specs, the exact optimum, the cover rate, bad settings."""

import itertools

import pytest
import torch
from tensordict import TensorDict
from torchrl.envs.utils import check_env_specs

from dmac_lightning.envs import check_env_config, make_env
from dmac_lightning.envs.stochastic_game import StochasticGameEnv, generate_game, optimal_values


def brute_force_optimum(rewards: torch.Tensor, transitions: torch.Tensor, horizon: int) -> float:
    """Best expected return over every deterministic (time, state) -> joint action policy."""
    n_states, n_joint = rewards.shape
    states = torch.arange(n_states)
    best = float("-inf")
    for choice in itertools.product(range(n_joint), repeat=horizon * n_states):
        plan = torch.tensor(choice).view(horizon, n_states)
        distribution = torch.full((n_states,), 1.0 / n_states, dtype=rewards.dtype)
        total = 0.0
        for t in range(horizon):
            total += float((distribution * rewards[states, plan[t]]).sum())
            distribution = distribution @ transitions[states, plan[t]]
        best = max(best, total)
    return best


def test_check_env_specs_passes():
    check_env_specs(StochasticGameEnv(n_envs=3, n_states=4, n_agents=2, n_actions=3, episode_limit=5, seed=0))


def test_shapes_and_keys_follow_the_shared_layout():
    env = StochasticGameEnv(n_envs=4, n_states=6, n_agents=3, n_actions=2, episode_limit=7, seed=0)
    td = env.reset()
    assert td["agents", "observation"].shape == (4, 3, 6 + 7)
    assert td["agents", "action_mask"].dtype == torch.bool and td["agents", "action_mask"].all()
    assert td["state"].shape == (4, 13)
    rollout = env.rollout(7)
    assert rollout["next", "reward"].shape == (4, 7, 1)
    # the horizon is part of the game: the last step terminates, nothing is truncated
    assert rollout["next", "terminated"][:, -1].all() and not rollout["next", "terminated"][:, :-1].any()
    assert not rollout["next", "truncated"].any()
    # the observation carries the timestep
    assert torch.equal(rollout["agents", "observation"][0, :, 0, 6:].argmax(-1), torch.arange(7))


@pytest.mark.parametrize("game_seed", [0, 1, 2])
def test_dynamic_programming_optimum_equals_brute_force(game_seed):
    rewards, transitions = generate_game(n_states=2, n_agents=2, n_actions=2, game_seed=game_seed)
    dp = optimal_values(rewards, transitions, horizon=3)[0].mean().item()
    assert dp == pytest.approx(brute_force_optimum(rewards, transitions, horizon=3), abs=1e-12)
    env = StochasticGameEnv(n_states=2, n_agents=2, n_actions=2, episode_limit=3, game_seed=game_seed)
    assert env.optimal_return == pytest.approx(dp)


def test_optimum_is_an_upper_bound_and_beats_random_play():
    env = StochasticGameEnv(n_envs=256, n_states=5, n_agents=2, n_actions=3, episode_limit=6, game_seed=4, seed=1)
    random_return = env.rollout(6)["next", "reward"].sum((1, 2)).mean().item()
    assert random_return < env.optimal_return
    # the greedy DP policy achieves the optimum in expectation (Monte Carlo, 256 x 20 episodes)
    rewards, transitions = env.rewards.double(), env.transitions.double()
    values = optimal_values(rewards, transitions, 6)
    total = 0.0
    for _ in range(20):
        td = env.reset()
        for t in range(6):
            q = rewards[env._state] + transitions[env._state] @ values[t + 1]
            joint = q.argmax(-1)
            digits = torch.stack([joint // 3, joint % 3], -1)
            td["agents", "action"] = digits
            td = env.step(td)
            total += td["next", "reward"].sum().item()
            td = td["next"].clone()
            td["agents"] = td["agents"].clone()
    assert total / (20 * 256) == pytest.approx(env.optimal_return, rel=0.03)


def test_cover_rate_counts_visited_state_joint_action_pairs():
    env = StochasticGameEnv(n_envs=5, n_states=4, n_agents=2, n_actions=3, episode_limit=6, seed=3)
    assert env.cover_rate == 0.0
    rollout = env.rollout(6)
    states = rollout["state"][..., :4].argmax(-1)  # [5, 6]
    actions = rollout["agents", "action"]  # [5, 6, 2]
    joint = actions[..., 0] * 3 + actions[..., 1]
    visited = {(s, a) for s, a in zip(states.flatten().tolist(), joint.flatten().tolist())}
    assert env.cover_rate == pytest.approx(len(visited) / (4 * 9))
    assert env.train_metrics() == {"cover_rate": env.cover_rate}
    env.reset_cover()
    assert env.cover_rate == 0.0


def test_partial_reset_only_resets_the_flagged_envs():
    env = StochasticGameEnv(n_envs=3, n_states=4, n_agents=2, n_actions=2, episode_limit=5, seed=0)
    td = env.reset()
    td["agents", "action"] = torch.zeros(3, 2, dtype=torch.long)
    env.step(td)
    time_before = env._time.clone()
    env.reset(TensorDict({"_reset": torch.tensor([[True], [False], [False]])}, batch_size=[3]))
    assert env._time.tolist() == [0, time_before[1].item(), time_before[2].item()]


def test_seeded_rollouts_are_reproducible_and_the_game_is_fixed_by_game_seed():
    a = make_env("stochastic_game", {"n_states": 5, "game_seed": 3}, n_envs=2, seed=11)
    b = make_env("stochastic_game", {"n_states": 5, "game_seed": 3}, n_envs=2, seed=11)
    assert torch.equal(a.rewards, b.rewards)
    torch.manual_seed(0)
    ra = a.rollout(10)
    torch.manual_seed(0)
    rb = b.rollout(10)
    assert torch.equal(ra["state"], rb["state"])
    c = make_env("stochastic_game", {"n_states": 5, "game_seed": 4}, n_envs=2, seed=11)
    assert not torch.equal(a.rewards, c.rewards)


@pytest.mark.parametrize(
    "field, value",
    [("n_agents", 0), ("n_actions", 0), ("n_states", 0), ("episode_limit", 0), ("n_states", -3), ("n_agents", 1.5)],
)
def test_bad_sizes_are_rejected_naming_the_field(field, value):
    with pytest.raises(ValueError, match=rf"{field} must be an integer >= 1"):
        check_env_config("stochastic_game", {field: value})
    with pytest.raises(ValueError, match=field):
        StochasticGameEnv(**{field: value})


def test_unknown_env_and_unknown_field_are_rejected_with_the_allowed_values():
    with pytest.raises(ValueError, match=r"unknown env 'nope'; allowed values: .*stochastic_game"):
        check_env_config("nope", {})
    with pytest.raises(ValueError, match=r"env_kwargs.n_statez: not a setting .* allowed fields: .*n_states"):
        check_env_config("stochastic_game", {"n_statez": 3})
    with pytest.raises(ValueError, match="set by the data module"):
        check_env_config("stochastic_game", {"n_envs": 3})
