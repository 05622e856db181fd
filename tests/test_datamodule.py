"""The data pipeline: collector -> padded episodes -> replay buffer -> batches."""

import pytest
import torch
from tensordict import TensorDict

from datamodules import EpisodeDataModule, pad_episodes
from dmac_lightning.algorithms import Coma, ComaDmac


def connected(module, **data_kwargs):
    kwargs = dict(env="stochastic_game", env_kwargs={"n_states": 4, "n_agents": 2, "n_actions": 3, "episode_limit": 6},
                  n_envs=4, episodes_per_collect=4, batch_size=3, buffer_size=10, seed=0)
    kwargs.update(data_kwargs)
    data = EpisodeDataModule(**kwargs)
    data.connect(module)
    data.setup("fit")
    module.configure_env(data.env_info)
    return data


def test_collected_episodes_have_the_padded_layout_and_masks():
    data = connected(ComaDmac())
    episodes = data.collect()
    k, L = 4, 6 + 1
    assert episodes.batch_size == (k, L)
    assert episodes["agents", "observation"].shape == (k, L, 2, 4 + 6)
    assert episodes["agents", "action_mask"].shape == (k, L, 2, 3)
    assert episodes["agents", "action"].shape == (k, L, 2)
    assert episodes["reward"].shape == (k, L, 1) and episodes["terminated"].shape == (k, L, 1)
    assert episodes["state"].shape == (k, L, 10)
    # every decision step is filled, the bootstrap slot is not; the observation there is the final one
    assert episodes["filled"][:, :6].all() and not episodes["filled"][:, 6].any()
    timestep = episodes["agents", "observation"][:, :, 0, 4:]
    assert torch.equal(timestep[:, :6].argmax(-1), torch.arange(6).expand(k, 6))
    assert timestep[:, 6].sum() == k  # the final observation (clamped time one-hot) is stored
    assert episodes["terminated"][:, 5].all() and not episodes["terminated"][:, :5].any()
    assert data.env_steps == 4 * 6 and data.episodes == 4
    assert data.last_collect["train/episode_return"] == pytest.approx(episodes["reward"].sum((1, 2)).mean().item())
    assert 0 < data.last_collect["train/cover_rate"] <= 1


def test_pad_episodes_handles_episodes_of_different_lengths():
    # two episodes of lengths 3 and 1 as the collector yields them: [k, T_max] with a mask
    k, steps = 2, 3
    valid = torch.tensor([[True, True, True], [True, False, False]])
    obs = torch.arange(k * steps, dtype=torch.float32).view(k, steps, 1, 1)
    data = TensorDict(
        {
            "agents": {"observation": obs, "action_mask": torch.ones(k, steps, 1, 2, dtype=torch.bool),
                       "action": torch.ones(k, steps, 1, dtype=torch.long)},
            "state": obs[:, :, 0],
            "collector": {"mask": valid},
            "next": {
                "agents": {"observation": obs + 100, "action_mask": torch.ones(k, steps, 1, 2, dtype=torch.bool)},
                "state": obs[:, :, 0] + 100,
                "reward": torch.ones(k, steps, 1),
                "terminated": torch.tensor([[[False], [False], [True]], [[True], [False], [False]]]),
                "info": {"battle_won": torch.tensor([[[False], [False], [True]], [[False], [False], [False]]])},
            },
        },
        batch_size=[k, steps],
    )
    episodes = pad_episodes(data, episode_limit=4)
    assert episodes.batch_size == (2, 5)
    assert episodes["filled"].sum(-1).tolist() == [3, 1]
    assert episodes["filled"].tolist() == [[True, True, True, False, False], [True, False, False, False, False]]
    observation = episodes["agents", "observation"][..., 0, 0]
    assert observation[0].tolist() == [0, 1, 2, 102, 0]  # bootstrap slot holds the final next observation
    assert observation[1].tolist() == [3, 103, 0, 0, 0]  # padding is zero, not the masked collector data
    assert episodes["reward"][..., 0].sum(1).tolist() == [3, 1]
    assert episodes["agents", "action"][1].sum() == 1
    assert episodes["agents", "action_mask"].all()  # padding keeps every action available
    assert episodes["battle_won"].any(-1).tolist() == [True, False]
    with pytest.raises(RuntimeError, match="longer than the env's episode_limit"):
        pad_episodes(data, episode_limit=2)


def test_replay_buffer_samples_whole_episodes():
    data = connected(ComaDmac(), batch_size=5, buffer_size=6)
    collected = torch.cat([data.collect()["agents", "observation"] for _ in range(3)])
    assert len(data.replay) == 6 and data.can_sample()
    batch = data.sample()
    assert batch.batch_size == (5, 7) and batch["filled"].shape == (5, 7)
    for episode in batch["agents", "observation"]:
        assert any(torch.equal(episode, stored) for stored in collected[-6:])  # whole episodes, newest 6 kept


def test_on_policy_buffer_holds_only_the_fresh_episodes():
    data = connected(Coma(), batch_size=4)
    assert data.replay is None and data.fresh is not None
    first = data.collect()
    second = data.collect()
    stored = data.fresh.storage.get(torch.arange(len(data.fresh)))
    assert len(data.fresh) == 4
    for episode in stored["agents", "action"]:
        assert any(torch.equal(episode, fresh) for fresh in second["agents", "action"])
    assert not any(torch.equal(old, new) for old in first["agents", "action"] for new in stored["agents", "action"])
    batch = data.sample()
    assert batch.batch_size == (4, 7)


def test_on_policy_batch_cannot_exceed_the_fresh_episodes():
    data = EpisodeDataModule(episodes_per_collect=4, batch_size=8)
    data.connect(Coma())
    with pytest.raises(ValueError, match=r"batch_size \(8\) is larger than the on-policy buffer"):
        data.setup("fit")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"batch_size": 64, "buffer_size": 32}, r"batch_size \(64\) is larger than the replay buffer"),
        ({"n_envs": 0}, r"data.n_envs must be an integer >= 1"),
        ({"max_env_steps": -5}, r"data.max_env_steps must be an integer >= 1"),
        ({"env": "starcraft"}, r"unknown env 'starcraft'; allowed values"),
        ({"env_kwargs": {"n_agents": 0}}, r"n_agents must be an integer >= 1"),
    ],
)
def test_bad_data_settings_fail_at_construction(kwargs, message):
    with pytest.raises(ValueError, match=message):
        EpisodeDataModule(**kwargs)


def test_collection_uses_the_current_policy_weights():
    module = ComaDmac()
    data = connected(module, n_envs=8, episodes_per_collect=8)
    with torch.no_grad():  # a policy that always picks action 2
        module.actor.head.weight.zero_()
        module.actor.head.bias.copy_(torch.tensor([-1e4, -1e4, 1e4]))
    episodes = data.collect()
    filled = episodes["filled"]
    assert (episodes["agents", "action"][filled] == 2).all()


class RecordingComaDmac(ComaDmac):
    """Writes the logits it acted on into the tensordict, so collection can be compared with training."""

    def choose_actions(self, outputs, available, mode):
        self.last_outputs = outputs
        return super().choose_actions(outputs, available, mode)

    def act(self, td, mode):
        td = super().act(td, mode)
        td.set(("agents", "acted_logits"), self.last_outputs)
        return td


def test_stepping_in_collection_equals_unrolling_stored_episodes():
    """The GRU state carried step by step (reset at each new episode) gives the same outputs as one
    unroll over the stored, padded episode from a zero state, with the same last-action inputs."""
    torch.manual_seed(0)
    module = RecordingComaDmac()
    data = connected(module, n_envs=3)
    limit = data.env_info.episode_limit  # every stochastic-game episode lasts exactly this long
    env = data.wrap_env(data.make_env(3, seed=1))
    rollout = env.rollout(2 * limit, module.policy("sample"), break_when_any_done=False)  # two episodes per env
    assert rollout["next", "done"][:, limit - 1].all() and not rollout["next", "done"][:, : limit - 1].any()
    raw = rollout.reshape(3, 2, limit).reshape(6, limit)
    raw.set(("collector", "mask"), torch.ones(6, limit, dtype=torch.bool))
    episodes = module.episode_batch(pad_episodes(raw, limit))
    with torch.no_grad():
        unrolled = module.unroll(module.actor, episodes)[:, :limit]
    torch.testing.assert_close(unrolled, raw["agents", "acted_logits"], atol=1e-5, rtol=1e-4)
    # the second episode of each env really started from a fresh state: one unroll over both episodes
    # as if they were one (hidden state and last action carried over) does not reproduce it
    rollout.set(("collector", "mask"), torch.ones(3, 2 * limit, dtype=torch.bool))
    with torch.no_grad():
        carried_on = module.unroll(module.actor, module.episode_batch(pad_episodes(rollout, 2 * limit)))[:, limit : 2 * limit]
    assert not torch.allclose(carried_on, rollout["agents", "acted_logits"][:, limit:], atol=1e-3)
