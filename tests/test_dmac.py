"""The +DMAC home (``DivergenceRegularized``): Algorithm 1's order, rho's update, the target critic rule."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch

from datamodules import EpisodeDataModule
from dmac_lightning.algorithms import REGISTRY, ComaDmac, DivergenceRegularized, QmixDmac
from dmac_lightning.targets import TargetNetworkUpdate

GAME = {"n_states": 3, "n_agents": 2, "n_actions": 3, "episode_limit": 4}


def snapshot(network: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in network.parameters()]


def fit(module: pl.LightningModule, env_steps: int) -> None:
    data = EpisodeDataModule(env_kwargs=GAME, n_envs=4, episodes_per_collect=4, updates_per_episode=0.25, batch_size=4,
                             buffer_size=16, max_env_steps=env_steps, env_steps_per_epoch=env_steps, seed=0)
    trainer = pl.Trainer(max_epochs=-1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False)
    trainer.fit(module, data)


@pytest.mark.parametrize("variant", [ComaDmac, QmixDmac])
def test_each_update_steps_the_actor_then_rho_then_the_critic_with_the_updated_pi_and_rho(variant):
    class Recording(variant):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.log_of_steps = []

        def actor_step(self, episodes):
            self.log_of_steps.append(("actor", snapshot(self.actor), snapshot(self.target_actor)))
            super().actor_step(episodes)

        def critic_step(self, episodes):
            self.log_of_steps.append(("critic", snapshot(self.actor), snapshot(self.target_actor)))
            super().critic_step(episodes)

    tau = 0.3
    module = Recording(tau=tau, lr_actor=1e-2)
    fit(module, env_steps=3 * 16)  # 3 collects of 4 episodes, one update each
    assert [step for step, _, _ in module.log_of_steps] == ["actor", "critic"] * 3
    for (_, pi_before, rho_before), (_, pi_at_critic, rho_at_critic) in zip(module.log_of_steps[::2], module.log_of_steps[1::2]):
        assert any(not torch.equal(a, b) for a, b in zip(pi_before, pi_at_critic))  # the actor stepped first
        for rho0, pi, rho in zip(rho_before, pi_at_critic, rho_at_critic):  # then rho moved tau towards the new pi
            torch.testing.assert_close(rho, (1 - tau) * rho0 + tau * pi)


def test_every_variant_runs_its_actor_first_and_no_baseline_changes_order():
    for entry in REGISTRY:
        expected = ("actor", "critic") if entry.regularized or entry.family == "fop" else ("critic", "actor")
        assert entry.module.update_order == expected, entry.name
        assert issubclass(entry.module, DivergenceRegularized) == entry.regularized


def test_the_target_critic_is_soft_by_default_and_a_hard_copy_on_request():
    (soft,) = ComaDmac(tau=0.05).configure_callbacks()
    assert (soft.source, soft.target, soft.tau, soft.counter) == ("critic", "target_critic", 0.05, None)
    (soft,) = ComaDmac(tau=0.05, target_critic_tau=0.2).configure_callbacks()
    assert soft.tau == 0.2
    hard = QmixDmac(target_critic_copy_every=200).configure_callbacks()
    assert [(c.source, c.tau, c.counter, c.every) for c in hard] == [("agent_q", None, "critic_steps", 200), ("mixer", None, "critic_steps", 200)]
    assert all(isinstance(c, TargetNetworkUpdate) for c in hard)
    with pytest.raises(ValueError, match="target_critic_tau and model.target_critic_copy_every: give at most one"):
        ComaDmac(target_critic_tau=0.1, target_critic_copy_every=200)
    with pytest.raises(ValueError, match=r"model.target_critic_copy_every must be an integer >= 1, got 0"):
        ComaDmac(target_critic_copy_every=0)
