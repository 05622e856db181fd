"""Target networks: the soft update's closed form and the hard copy."""

import pytest
import torch
from torch import nn

from callbacks import TargetNetworkUpdate, soft_update, target_policy_update

UPDATED = {"updated": True}  # what a training step that updated the module returns


class Pair(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.actor = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
        self.target_actor = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
        self.actor[1].running_mean.fill_(2.0)


@pytest.mark.parametrize("tau", [0.01, 0.3, 1.0])
def test_soft_update_after_k_steps_matches_the_closed_form(tau):
    pair = Pair()
    source = [p.detach().clone() for p in pair.actor.parameters()]
    start = [p.detach().clone() for p in pair.target_actor.parameters()]
    callback = target_policy_update(tau)
    k = 7
    for _ in range(k):
        callback.on_train_batch_end(None, pair, UPDATED, None, 0)
    decay = (1 - tau) ** k
    for theta_tilde, theta_0, theta in zip(pair.target_actor.parameters(), start, source):
        torch.testing.assert_close(theta_tilde, decay * theta_0 + (1 - decay) * theta)
    torch.testing.assert_close(pair.target_actor[1].running_mean, torch.full((4,), 2.0))


def test_hard_copy_every_n_updates():
    pair = Pair()
    callback = TargetNetworkUpdate("actor", "target_actor", every_n_updates=3)
    for step in range(1, 4):
        callback.on_train_batch_end(None, pair, UPDATED, None, 0)
        same = all(torch.equal(a, b) for a, b in zip(pair.actor.parameters(), pair.target_actor.parameters()))
        assert same == (step == 3)
    assert callback.state_dict()["updates"] == 3


def test_soft_update_function_and_bad_tau():
    a, b = nn.Linear(2, 2), nn.Linear(2, 2)
    before = b.weight.detach().clone()
    soft_update(b, a, 0.5)
    torch.testing.assert_close(b.weight, 0.5 * before + 0.5 * a.weight)
    for tau in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match=r"tau must be in \(0, 1\]"):
            TargetNetworkUpdate("actor", "target_actor", tau=tau)
    with pytest.raises(ValueError, match="exactly one"):
        TargetNetworkUpdate("actor", "target_actor")


def test_hard_copy_every_n_collected_episodes():
    pair = Pair()
    callback = TargetNetworkUpdate("actor", "target_actor", every_n_episodes=200)
    copies = []
    for episodes in (8, 96, 192, 200, 320, 400, 408):  # the episode counter after each update
        pair.episodes = episodes
        pair.target_actor[0].weight.data.zero_()
        callback.on_train_batch_end(None, pair, UPDATED, None, 0)
        copies.append(torch.equal(pair.actor[0].weight, pair.target_actor[0].weight))
    assert copies == [False, False, False, True, False, True, False]
    assert callback.state_dict() == {"updates": 7, "copied_at": 400}
    with pytest.raises(ValueError, match="exactly one"):
        TargetNetworkUpdate("actor", "target_actor", every_n_updates=2, every_n_episodes=2)


def test_hard_copy_every_n_critic_steps_checked_after_each_update():
    # A per-timestep critic takes a batch's length in steps per update: 7, 7, 5, 9, 7 here.
    pair = Pair()
    callback = TargetNetworkUpdate("actor", "target_actor", every_n_critic_steps=20)
    pair.critic_steps, copies = 0, []
    for steps in (7, 7, 5, 9, 7):
        pair.critic_steps += steps
        pair.target_actor[0].weight.data.zero_()
        callback.on_train_batch_end(None, pair, UPDATED, None, 0)
        copies.append(torch.equal(pair.actor[0].weight, pair.target_actor[0].weight))
    assert copies == [False, False, False, True, False]  # counts 7, 14, 19, 28 (copy), 35
    assert callback.state_dict()["copied_at"] == 28


def test_the_batch_end_of_an_epoch_that_trained_nothing_moves_no_target():
    # Lightning's dataloader_iter flavour ends each epoch with a batch whose iterator ran out ({} outputs).
    pair = Pair()
    callback = target_policy_update(0.5)
    before = [p.detach().clone() for p in pair.target_actor.parameters()]
    callback.on_train_batch_end(None, pair, {}, None, 0)
    assert callback.updates == 0 and all(torch.equal(a, b) for a, b in zip(before, pair.target_actor.parameters()))
