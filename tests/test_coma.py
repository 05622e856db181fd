"""COMA's pieces: the counterfactual critic's inputs and the baseline / +DMAC relationship."""

import torch

from dmac_lightning.algorithms import Coma, ComaDmac
from dmac_lightning.envs import EnvInfo
from dmac_lightning.networks import CounterfactualCritic
from dmac_lightning.policy import gather_actions, masked_log_softmax

INFO = EnvInfo(n_agents=3, n_actions=4, obs_dim=5, state_dim=6, episode_limit=7)


def test_counterfactual_critic_row_i_ignores_agent_is_own_action():
    torch.manual_seed(0)
    critic = CounterfactualCritic(6, 5, 3, 4, [16])
    state, obs, last = torch.randn(2, 6), torch.randn(2, 3, 5), torch.randn(2, 3, 4)
    actions = torch.tensor([[0, 1, 2], [3, 3, 0]])
    q = critic(state, obs, actions, last)
    assert q.shape == (2, 3, 4)
    changed = actions.clone()
    changed[:, 1] = (changed[:, 1] + 1) % 4  # agent 1 acts differently
    q_changed = critic(state, obs, changed, last)
    torch.testing.assert_close(q_changed[:, 1], q[:, 1])  # its own row is counterfactual over its action
    assert not torch.allclose(q_changed[:, 0], q[:, 0])  # the others see the change


def test_dmac_advantage_reduces_to_coma_with_omega_zero_and_rho_equal_pi():
    torch.manual_seed(1)
    coma, dmac = Coma(), ComaDmac(omega=0.0)
    q_alternatives = torch.randn(2, 5, 3, 4)
    log_pi = masked_log_softmax(torch.randn(2, 5, 3, 4), torch.ones(2, 5, 3, 4, dtype=torch.bool))
    actions = torch.randint(4, (2, 5, 3))
    expected = coma.advantage(q_alternatives, actions, log_pi, None)
    torch.testing.assert_close(dmac.advantage(q_alternatives, actions, log_pi, log_pi), expected)
    # and with omega > 0 but rho = pi, the divergence term log(pi/rho) - KL vanishes too
    torch.testing.assert_close(ComaDmac(omega=0.7).advantage(q_alternatives, actions, log_pi, log_pi), expected)
    # while rho != pi with omega > 0 changes it
    log_rho = masked_log_softmax(torch.randn(2, 5, 3, 4), torch.ones(2, 5, 3, 4, dtype=torch.bool))
    assert not torch.allclose(ComaDmac(omega=0.7).advantage(q_alternatives, actions, log_pi, log_rho), expected)
    torch.testing.assert_close(
        expected, gather_actions(q_alternatives, actions) - (log_pi.exp() * q_alternatives).sum(-1)
    )


def test_rho_starts_as_a_frozen_copy_of_pi():
    module = ComaDmac()
    module.configure_env(INFO)
    for p, q in zip(module.actor.parameters(), module.target_actor.parameters()):
        assert torch.equal(p, q) and not q.requires_grad
    optimised = {id(p) for group in module.configure_optimizers() for g in group.param_groups for p in g["params"]}
    assert not optimised & {id(p) for p in module.target_actor.parameters()}
    assert not optimised & {id(p) for p in module.target_critic.parameters()}


def test_rho_is_mixed_with_the_same_exploration_epsilon_as_pi():
    from datamodules import EpisodeDataModule

    module = ComaDmac(epsilon_start=0.4, epsilon_finish=0.4)
    data = EpisodeDataModule(env="stochastic_game", env_kwargs={"n_states": 3, "n_agents": 3, "n_actions": 4, "episode_limit": 4},
                             n_envs=2, episodes_per_collect=2, batch_size=2, buffer_size=4, seed=0)
    data.connect(module)
    data.setup("fit")
    module.configure_env(data.env_info)
    episodes = module.episode_batch(data.collect())
    log_pi, log_rho = module.log_policy(module.actor, episodes).detach(), module.log_rho(episodes)
    assert module.epsilon == 0.4 and log_pi.exp().min() > 0.4 / 4 - 1e-6  # pi is the epsilon-mixed policy
    torch.testing.assert_close(log_rho, log_pi)  # rho = pi at the start, so the divergence must be zero


def test_dmac_targets_bootstrap_through_a_time_limit_but_not_through_a_termination():
    """The whole path from collector output to critic targets: ``EpisodeAssembler`` -> ``EpisodeBatch`` ->
    ``ComaDmac.critic_targets``, on two 2-step episodes (limit 4) that differ only in how they end."""
    from tensordict import TensorDict

    from datamodules import EpisodeAssembler

    torch.manual_seed(0)
    info = EnvInfo(n_agents=2, n_actions=3, obs_dim=4, state_dim=5, episode_limit=4)
    gamma, omega, lam = 0.9, 0.5, 0.8
    module = ComaDmac(omega=omega, td_lambda=lam, gamma=gamma)
    module.configure_env(info)
    with torch.no_grad():  # move rho away from pi so that the divergence terms are not zero
        for parameter in module.target_actor.parameters():
            parameter.add_(0.5 * torch.randn_like(parameter))
    k, steps = 2, 2
    observation = torch.randn(1, steps, 2, 4).expand(k, -1, -1, -1)
    state = torch.randn(1, steps, 5).expand(k, -1, -1)
    available = torch.ones(k, steps, 2, 3, dtype=torch.bool)
    collected = TensorDict(
        {
            "agents": {"observation": observation, "action_mask": available, "action": torch.tensor([[0, 1], [2, 2]]).expand(k, -1, -1)},
            "state": state,
            "next": {
                "agents": {"observation": torch.randn(1, steps, 2, 4).expand(k, -1, -1, -1), "action_mask": available},
                "state": torch.randn(1, steps, 5).expand(k, -1, -1),
                "reward": torch.tensor([[[1.0], [2.0]]]).expand(k, -1, -1),
                "terminated": torch.tensor([[[False], [True]], [[False], [False]]]),  # episode 1: a time limit
                "done": torch.tensor([[[False], [True]], [[False], [True]]]),
            },
        },
        batch_size=[k, steps],
    )
    assembler = EpisodeAssembler(info.episode_limit)
    assembler.add(collected)
    episodes = module.episode_batch(assembler.pop(k))
    log_pi, log_rho = module.log_policy(module.actor, episodes).detach(), module.log_rho(episodes)
    torch.manual_seed(5)
    targets = module.critic_targets(episodes, log_pi, log_rho)  # [k, T, n_agents]

    torch.manual_seed(5)  # the same next actions: stored where the episode went on, sampled at its end
    actions = episodes.bootstrap_actions(log_pi)
    assert torch.equal(actions[:, :steps], episodes.actions[:, :steps])
    q_bar = gather_actions(module.q_values(module.target_critic, episodes, actions, slice(None)), actions)  # [k, L, n]
    l = (gather_actions(log_pi, actions) - gather_actions(log_rho, actions)).sum(-1, keepdim=True)  # [k, L, 1]
    assert l[:, 1:3].abs().min() > 1e-3

    g1_terminated = torch.full((2,), 2.0)
    g1_truncated = 2.0 + gamma * (q_bar[1, 2] - omega * l[1, 2])
    g0 = lambda e, g1: 1.0 + gamma * ((1 - lam) * q_bar[e, 1] + lam * g1 - omega * l[e, 1])  # noqa: E731
    torch.testing.assert_close(targets[0, 1], g1_terminated)
    torch.testing.assert_close(targets[1, 1], g1_truncated)
    torch.testing.assert_close(targets[0, 0], g0(0, g1_terminated))
    torch.testing.assert_close(targets[1, 0], g0(1, g1_truncated))


def test_coma_critic_takes_one_step_per_timestep_last_to_first_towards_targets_computed_once():
    import pytorch_lightning as pl

    from datamodules import EpisodeDataModule

    class Recording(Coma):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.critic_calls, self.target_calls = [], 0

        def q_values(self, critic, episodes, actions, steps):
            if critic is self.critic:
                self.critic_calls.append(steps.start)
            return super().q_values(critic, episodes, actions, steps)

        def critic_targets(self, episodes, log_pi, log_rho):
            self.target_calls += 1
            return super().critic_targets(episodes, log_pi, log_rho)

    module = Recording(target_update_interval=7)
    limit = 5
    data = EpisodeDataModule(env_kwargs={"n_states": 3, "n_agents": 2, "n_actions": 3, "episode_limit": limit}, n_envs=4,
                             episodes_per_collect=4, updates_per_episode=0.25, batch_size=4, max_env_steps=2 * 4 * limit,
                             env_steps_per_epoch=100, seed=0)
    trainer = pl.Trainer(max_epochs=-1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False)
    trainer.fit(module, data)
    # two updates (one per collect of 4 episodes), each: T = 5 critic steps at t = 4, 3, 2, 1, 0, no critic call by the actor
    assert module.critic_calls == [4, 3, 2, 1, 0] * 2
    assert module.target_calls == 2 and module.critic_steps == 10
    # the target is copied once 7 critic steps have passed, checked after each update: at 10, not at 5
    (target_rule,) = [c for c in trainer.callbacks if getattr(c, "target", None) == "target_critic"]
    assert (target_rule.counter, target_rule.updates, target_rule.copied_at) == ("critic_steps", 2, 10)
    assert all(torch.equal(a, b) for a, b in zip(module.critic.parameters(), module.target_critic.parameters()))  # copied last
