"""The data pipeline: collector -> padded episodes -> replay buffer -> batches."""

import pytest
import torch
from tensordict import TensorDict

from datamodules import EpisodeAssembler, EpisodeDataModule, EpisodeStream
from dmac_lightning.algorithms import Coma, ComaDmac
from dmac_lightning.networks import agent_inputs, previous_actions_one_hot


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


def steps(observation, done, terminated, battle_won=None, broken=None):
    """Collector-style frames ``[n_envs, T]`` of a one-agent env whose observation is a step label."""
    n_envs, length = observation.shape
    obs = observation.float().view(n_envs, length, 1, 1)
    mask = torch.ones(n_envs, length, 1, 2, dtype=torch.bool)
    following = {"agents": {"observation": obs + 100, "action_mask": mask}, "state": obs[:, :, 0] + 100,
                 "reward": torch.ones(n_envs, length, 1), "done": done[..., None], "terminated": terminated[..., None]}
    info = {}
    if battle_won is not None:
        info["battle_won"] = battle_won[..., None]
    if broken is not None:
        info["episode_broken"] = broken[..., None]
    if info:
        following["info"] = info
    return TensorDict(
        {"agents": {"observation": obs, "action_mask": mask, "action": torch.ones(n_envs, length, 1, dtype=torch.long)},
         "state": obs[:, :, 0], "next": following},
        batch_size=[n_envs, length],
    )


def test_the_assembler_cuts_episodes_of_different_lengths_in_the_order_they_end():
    # env 0: an episode of 3 steps (won), then one in progress; env 1: episodes of 1 and 2 steps, then one in progress
    observation = torch.tensor([[0, 1, 2, 3], [10, 11, 12, 13]])
    done = torch.tensor([[False, False, True, False], [True, False, True, False]])
    terminated = torch.tensor([[False, False, True, False], [False, False, True, False]])  # env 1's first: a time limit
    won = torch.tensor([[False, False, True, False], [False, False, False, False]])
    assembler = EpisodeAssembler(episode_limit=4)
    assembler.add(steps(observation[:, :2], done[:, :2], terminated[:, :2], won[:, :2]))  # in two batches, as collected
    assembler.add(steps(observation[:, 2:], done[:, 2:], terminated[:, 2:], won[:, 2:]))
    assert assembler.queued == 3
    episodes = assembler.pop(2)
    assert episodes.batch_size == (2, 5) and assembler.queued == 1
    # the first to end comes first; of the two ending at step 2, the one that started first (env 0, at step 0)
    seen = episodes["agents", "observation"][..., 0, 0]
    assert seen.tolist() == [[10, 110, 0, 0, 0], [0, 1, 2, 102, 0]]  # bootstrap slot holds the final next observation
    assert episodes["filled"].tolist() == [[True, False, False, False, False], [True, True, True, False, False]]
    assert episodes["terminated"][..., 0].tolist() == [[False] * 5, [False, False, True, False, False]]
    assert episodes["reward"][..., 0].sum(1).tolist() == [1, 3]
    assert episodes["battle_won"].any(-1).tolist() == [False, True]
    assert episodes["agents", "action_mask"].all()  # padding keeps every action available
    last = assembler.pop(1)
    assert last["agents", "observation"][0, :3, 0, 0].tolist() == [11, 12, 112]
    # the episodes in progress continue where they are: env 0's started at observation 3
    assembler.add(steps(torch.tensor([[4], [14]]), torch.tensor([[True], [False]]), torch.tensor([[True], [False]])))
    assert assembler.pop(1)["agents", "observation"][0, :3, 0, 0].tolist() == [3, 4, 104]
    with pytest.raises(RuntimeError, match="longer than the env's episode_limit"):
        never_done = torch.zeros(1, 5, dtype=torch.bool)
        EpisodeAssembler(episode_limit=4).add(steps(torch.arange(5)[None], never_done, never_done))


def test_the_assembler_drops_broken_episodes():
    observation = torch.tensor([[0, 1], [10, 11]])
    done = torch.tensor([[False, True], [False, True]])
    broken = torch.tensor([[False, False], [False, True]])  # env 1's game crashed
    assembler = EpisodeAssembler(episode_limit=3)
    assembler.add(steps(observation, done, torch.zeros(2, 2, dtype=torch.bool), broken=broken))
    assert (assembler.queued, assembler.dropped) == (1, 1)
    assert assembler.pop(1)["agents", "observation"][0, :2, 0, 0].tolist() == [0, 1]


def test_replay_buffer_samples_whole_episodes():
    data = connected(ComaDmac(), batch_size=5, buffer_size=6)
    collected = torch.cat([data.collect()["agents", "observation"] for _ in range(3)])
    assert len(data.buffer) == 6 and data.can_sample()
    batch = data.sample()
    assert batch.batch_size == (5, 7) and batch["filled"].shape == (5, 7)
    for episode in batch["agents", "observation"]:
        assert any(torch.equal(episode, stored) for stored in collected[-6:])  # whole episodes, newest 6 kept


def episode_ids(episodes) -> list[int]:
    """Each collected episode of ``connected``'s game is told apart by its action sequence."""
    return [hash(tuple(e.flatten().tolist())) for e in episodes["agents", "action"]]


def test_a_batch_adds_episodes_from_the_newest_window_to_the_replayed_ones_each_part_without_repeats():
    # The authors' DMAC batches: replayed episodes plus some of the newest few (here 3 + 2 of the newest 4).
    data = connected(ComaDmac(), batch_size=3, recent_episodes=2, recent_window=4, buffer_size=12)
    collected = [episode_ids(data.collect()) for _ in range(3)]
    everything, newest = set(sum(collected, [])), set(collected[-1])
    assert len(everything) == 12 and data.newest.numel() == 4
    for _ in range(20):
        ids = episode_ids(data.sample())
        replayed, recent = ids[:3], ids[3:]
        assert len(ids) == 5 and set(replayed) <= everything and set(recent) <= newest
        assert len(set(replayed)) == 3 and len(set(recent)) == 2


def test_updates_wait_for_the_warmup_episodes():
    data = connected(ComaDmac(), batch_size=2, warmup_episodes=10, buffer_size=20)
    ready = []
    for _ in range(3):
        data.collect()
        ready.append(data.can_sample())
    assert ready == [False, False, True]  # 4, 8, 12 episodes stored


def test_the_mixed_regime_serves_fresh_and_replayed_episodes_apart():
    from dmac_lightning.algorithms import Dop

    data = connected(Dop(), batch_size=5, recent_episodes=3, recent_window=4, buffer_size=12)
    collected = [episode_ids(data.collect()) for _ in range(3)]
    batch = data.sample()
    assert set(batch.keys()) == {"fresh", "replay"}
    fresh, replay = episode_ids(batch["fresh"]), episode_ids(batch["replay"])
    assert len(set(fresh)) == 3 and set(fresh) <= set(collected[-1])
    assert len(set(replay)) == 5 and set(replay) <= set(sum(collected, []))


@pytest.mark.parametrize("updates_per_episode, expected", [(0.375, [1, 2, 1, 2, 1, 2]), (0.125, [0, 1, 0, 1, 0, 1]), (2, [8] * 6)])
def test_collected_episodes_earn_updates_per_episode_with_fractions_carried_over(updates_per_episode, expected):
    # 4 episodes of 6 steps per collect, 6 collects; the buffer holds a batch from the first collect on.
    data = connected(ComaDmac(), updates_per_episode=updates_per_episode, max_env_steps=6 * 24, env_steps_per_epoch=6 * 24)
    per_collect, collects = [], 0
    for _ in EpisodeStream(data):
        if data.collects != collects:
            per_collect.append(0)
            collects = data.collects
        per_collect[-1] += 1
    per_collect += [0] * (6 - len(per_collect))  # collects that earned no update yielded nothing
    assert data.collects == 6 and sum(per_collect) == 6 * 4 * updates_per_episode
    assert sorted(per_collect) == sorted(expected)


def test_no_updates_are_earned_before_the_buffer_holds_a_batch():
    data = connected(ComaDmac(), batch_size=10, updates_per_episode=1, max_env_steps=3 * 24, env_steps_per_epoch=3 * 24)
    batches = list(EpisodeStream(data))
    # 4 episodes per collect: the buffer reaches 10 at the third collect, whose 4 episodes earn 4 updates.
    assert data.collects == 3 and len(batches) == 4


def test_on_policy_buffer_holds_only_the_fresh_episodes():
    data = connected(Coma(), batch_size=4)
    assert data.buffer.storage.max_size == 4  # the on-policy buffer holds only the newest collect
    first = data.collect()
    second = data.collect()
    stored = data.buffer.storage.get(torch.arange(len(data.buffer)))
    assert len(data.buffer) == 4
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
    assembler = EpisodeAssembler(limit)
    assembler.add(rollout)
    episodes = module.episode_batch(assembler.pop(6))  # env 0, 1, 2's first episodes, then their second ones
    with torch.no_grad():
        unrolled = module.unroll(module.actor, episodes)[:, :limit]
    acted = rollout["agents", "acted_logits"]
    torch.testing.assert_close(unrolled, torch.cat([acted[:, :limit], acted[:, limit:]]), atol=1e-5, rtol=1e-4)
    # the second episode of each env really started from a fresh state: one unroll over both episodes
    # as if they were one (hidden state and last action carried over) does not reproduce it
    last_actions = previous_actions_one_hot(rollout["agents", "action"], data.env_info.n_actions)
    with torch.no_grad():
        carried_on = module.actor.unroll(agent_inputs(rollout["agents", "observation"], last_actions))[:, limit:]
    assert not torch.allclose(carried_on, acted[:, limit:], atol=1e-3)


def test_the_replay_buffer_goes_into_the_state_and_comes_back_sampling_as_before():
    import io

    data = connected(ComaDmac(), batch_size=3, buffer_size=10, recent_window=4)
    for _ in range(4):  # 16 episodes into a buffer of 10: it wrapped around
        data.collect()
    saved = io.BytesIO()
    torch.save(data.state_dict(), saved)
    saved.seek(0)
    resumed = connected(ComaDmac(), batch_size=3, buffer_size=10, recent_window=4)
    resumed.load_state_dict(torch.load(saved, weights_only=True))
    positions = torch.arange(10)
    assert torch.equal(resumed.buffer.storage.get(positions)["agents", "action"], data.buffer.storage.get(positions)["agents", "action"])
    assert resumed.buffer.writer.state_dict() == data.buffer.writer.state_dict() and torch.equal(resumed.newest, data.newest)
    torch.manual_seed(3)
    expected = data.sample()
    torch.manual_seed(3)
    assert torch.equal(resumed.sample()["agents", "observation"], expected["agents", "observation"])
    assert "buffer" not in connected(ComaDmac(), checkpoint_buffer=False).state_dict()
