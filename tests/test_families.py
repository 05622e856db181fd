"""The four other families' pieces on tiny tensors: mixers, critics, targets, advantages."""

import itertools

import pytest
import torch

from dmac_lightning import divergence
from dmac_lightning.algorithms import Dop, DopDmac, Fop, FopDmac, Maac, MaacDmac, QmixDmac
from dmac_lightning.networks import AttentionCritic, FOPMixer, LinearDecompositionMixer, MLPMixer, MonotonicMixer, individual_critic_inputs
from dmac_lightning.networks.mixers import counterfactual_q
from dmac_lightning.policy import gather_actions, masked_log_softmax
from dmac_lightning.returns import tree_backup_returns

N_AGENTS, N_ACTIONS, STATE_DIM = 3, 4, 5


def random_policy(*shape: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(*shape, generator=generator)
    return masked_log_softmax(logits, torch.ones_like(logits, dtype=torch.bool))


# -- QMIX ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(3))
def test_qmix_mixer_is_monotonic_in_every_agent_q(seed):
    torch.manual_seed(seed)
    mixer = MonotonicMixer(STATE_DIM, N_AGENTS, embed_dim=8, hypernet_dim=16)
    agent_qs = (3 * torch.randn(64, N_AGENTS)).requires_grad_()
    q_tot = mixer(agent_qs, torch.randn(64, STATE_DIM))
    (gradient,) = torch.autograd.grad(q_tot.sum(), agent_qs)
    assert (gradient >= 0).all()
    assert q_tot.shape == (64,)


def test_qmix_dmac_mlp_mixer_is_not_constrained_to_be_monotonic():
    found_negative = False
    for seed in range(5):
        torch.manual_seed(seed)
        agent_qs = torch.randn(64, N_AGENTS, requires_grad=True)
        (gradient,) = torch.autograd.grad(MLPMixer(STATE_DIM, N_AGENTS)(agent_qs, torch.randn(64, STATE_DIM)).sum(), agent_qs)
        found_negative |= bool((gradient < 0).any())
    assert found_negative


def test_counterfactual_q_through_the_mixer_replaces_one_agent_at_a_time():
    torch.manual_seed(0)
    mixer = MLPMixer(STATE_DIM, N_AGENTS)
    q_values = torch.randn(2, N_AGENTS, N_ACTIONS)
    actions = torch.tensor([[0, 3, 1], [2, 2, 0]])
    state = torch.randn(2, STATE_DIM)
    result = counterfactual_q(mixer, q_values, actions, state)
    assert result.shape == (2, N_AGENTS, N_ACTIONS)
    for b, i, alternative in itertools.product(range(2), range(N_AGENTS), range(N_ACTIONS)):
        joint = actions[b].clone()
        joint[i] = alternative
        chosen = q_values[b, torch.arange(N_AGENTS), joint]
        torch.testing.assert_close(result[b, i, alternative], mixer(chosen, state[b]))
    # at the taken action every row is the same joint Q_tot
    taken = gather_actions(result, actions)
    torch.testing.assert_close(taken, taken[:, :1].expand_as(taken))


# -- DOP -----------------------------------------------------------------------------------------------
def test_dop_decomposition_is_a_convex_combination_of_the_agent_qs():
    # DOP's code (and the authors' DOP+DMAC): k_i(s) >= 0 summing to 1, no state bias.
    torch.manual_seed(0)
    mixer = LinearDecompositionMixer(STATE_DIM, N_AGENTS)
    state = torch.randn(100, STATE_DIM)
    k = mixer.k(state)
    assert (k >= 0).all() and k.shape == (100, N_AGENTS)
    torch.testing.assert_close(k.sum(-1), torch.ones(100))
    agent_qs = torch.randn(100, N_AGENTS)
    torch.testing.assert_close(mixer(agent_qs, state), (k * agent_qs).sum(-1))
    equal = torch.full((100, N_AGENTS), 2.5)
    torch.testing.assert_close(mixer(equal, state), torch.full((100,), 2.5))  # agreeing agents: Q_tot is their Q


def test_dop_lvd_advantage_by_hand():
    k = torch.tensor([0.5, 2.0])
    q_values = torch.tensor([[1.0, 3.0], [0.0, -2.0]])
    log_pi = torch.log(torch.tensor([[0.25, 0.75], [0.5, 0.5]]))
    actions = torch.tensor([0, 1])
    # agent 0: 0.5 * (1 - (0.25 * 1 + 0.75 * 3)) = -0.75 ; agent 1: 2 * (-2 - (-1)) = -2
    advantage = Dop().advantage(k, q_values, actions, log_pi, None)
    torch.testing.assert_close(advantage, torch.tensor([-0.75, -2.0]))


def test_tree_backup_targets_by_hand():
    # 3 steps, terminated at the last; gamma 0.5
    rewards = torch.tensor([[1.0, 2.0, 3.0]])
    terminated = torch.tensor([[0.0, 0.0, 1.0]])
    filled = torch.ones(1, 3, dtype=torch.bool)
    expected = torch.tensor([[10.0, 20.0, 99.0]])  # E_pi Qbar(s_{t+1}, .)
    taken = torch.tensor([[12.0, 16.0, 99.0]])  # Qbar(s_{t+1}, a_{t+1})
    traces = torch.tensor([[0.5, 0.25, 99.0]])  # lambda * pi(a_{t+1})
    # G_2 = 3 ; G_1 = 2 + 0.5 * (20 + 0.25 * (3 - 16)) = 10.375 ; G_0 = 1 + 0.5 * (10 + 0.5 * (10.375 - 12)) = 5.59375
    returns = tree_backup_returns(rewards, terminated, filled, expected, taken, traces, 0.5)
    torch.testing.assert_close(returns, torch.tensor([[5.59375, 10.375, 3.0]]))
    # zero traces: expected SARSA targets r + gamma E_pi Qbar
    expected_sarsa = tree_backup_returns(rewards, terminated, filled, expected, taken, torch.zeros(1, 3), 0.5)
    torch.testing.assert_close(expected_sarsa, torch.tensor([[6.0, 12.0, 3.0]]))
    # cut after 2 terms (DOP's code cuts after 5): G_0 = 1 + 0.5 * (10 + 0.5 * (G_1^(1) - 12)), G_1^(1) = 2 + 0.5 * 20 = 12
    cut = tree_backup_returns(rewards, terminated, filled, expected, taken, traces, 0.5, max_steps=2)
    torch.testing.assert_close(cut, torch.tensor([[6.0, 10.375, 3.0]]))
    one = tree_backup_returns(rewards, terminated, filled, expected, taken, traces, 0.5, max_steps=1)
    torch.testing.assert_close(one, expected_sarsa)


# -- MAAC ----------------------------------------------------------------------------------------------
def test_maac_attention_critic_shapes_and_counterfactual_rows():
    torch.manual_seed(0)
    critic = AttentionCritic(input_dim=7, n_agents=N_AGENTS, n_actions=N_ACTIONS, hidden_dim=16, n_heads=2, attention_dim=8)
    histories = critic.encode(torch.randn(2, 6, N_AGENTS, 7))
    assert histories.shape == (2, 6, N_AGENTS, 16)
    actions = torch.randint(N_ACTIONS, (2, 6, N_AGENTS))
    q_values, logits = critic(histories, actions)
    assert q_values.shape == (2, 6, N_AGENTS, N_ACTIONS)
    assert logits.numel() == 2 * 6 * 2 * N_AGENTS * (N_AGENTS - 1)  # heads x ordered pairs of distinct agents
    changed = actions.clone()
    changed[..., 0] = (changed[..., 0] + 1) % N_ACTIONS
    q_changed, _ = critic(histories, changed)
    torch.testing.assert_close(q_changed[..., 0, :], q_values[..., 0, :])  # own action: not an input
    assert not torch.allclose(q_changed[..., 1, :], q_values[..., 1, :])  # others attend to it
    single = AttentionCritic(input_dim=7, n_agents=1, n_actions=N_ACTIONS, hidden_dim=16, n_heads=2, attention_dim=8)
    assert torch.isfinite(single(single.encode(torch.randn(1, 2, 1, 7)), torch.zeros(1, 2, 1, dtype=torch.long))[0]).all()


def test_maac_counterfactual_baseline_and_entropy_term_by_hand():
    q_alternatives = torch.tensor([[1.0, 4.0]])
    log_pi = torch.log(torch.tensor([[0.2, 0.8]]))
    actions = torch.tensor([1])
    maac = Maac(alpha=0.5)
    # baseline = 0.2 * 1 + 0.8 * 4 = 3.4 ; A = 4 - 3.4 = 0.6 ; minus alpha log pi(a) = -0.5 * log 0.8
    expected = 0.6 - 0.5 * torch.log(torch.tensor(0.8))
    torch.testing.assert_close(maac.advantage(q_alternatives, actions, log_pi, log_pi), expected[None])


# -- FOP -----------------------------------------------------------------------------------------------
def test_soft_value_with_alpha_and_with_omega_and_rho_by_hand():
    q = torch.tensor([1.0, 2.0, 0.0])
    # FOP: alpha log sum exp(Q / alpha), alpha = 0.5: 0.5 * log(e^2 + e^4 + 1)
    expected_alpha = 0.5 * torch.log(torch.exp(torch.tensor(2.0)) + torch.exp(torch.tensor(4.0)) + 1)
    torch.testing.assert_close(divergence.soft_value(q, 0.5), expected_alpha)
    # FOP+DMAC: omega log sum rho exp(Q / omega), omega = 2, rho = (0.5, 0.25, 0.25)
    rho = torch.tensor([0.5, 0.25, 0.25])
    expected_rho = 2 * torch.log(0.5 * torch.exp(torch.tensor(0.5)) + 0.25 * torch.exp(torch.tensor(1.0)) + 0.25)
    torch.testing.assert_close(divergence.soft_value(q, 2.0, rho.log()), expected_rho)
    # a uniform rho is the entropy value shifted by omega log |A|
    uniform = torch.full((3,), 1 / 3).log()
    torch.testing.assert_close(divergence.soft_value(q, 2.0, uniform), divergence.soft_value(q, 2.0) - 2 * torch.log(torch.tensor(3.0)))
    # and the soft value is the regularised optimum's value: max_pi sum pi (Q - omega log pi/rho)
    optimum = torch.softmax(q / 2.0 + rho.log(), 0)
    torch.testing.assert_close((optimum * (q - 2.0 * (optimum.log() - rho.log()))).sum(), expected_rho)


def test_fop_mixer_weights_are_positive_and_reduce_to_the_attention_sum_at_zero_advantage():
    torch.manual_seed(0)
    obs_dim = 6
    mixer = FOPMixer(STATE_DIM, obs_dim, N_AGENTS, N_ACTIONS, n_heads=2, embed_dim=8, attention_dim=8)
    state, observation = torch.randn(10, STATE_DIM), torch.randn(10, N_AGENTS, obs_dim)
    actions = torch.randint(N_ACTIONS, (10, N_AGENTS))
    assert (mixer.lambda_weights(state, actions) > 0).all()
    weights, logits = mixer.attention(state, observation)
    assert (weights > 0).all() and logits.shape == (10, 2, N_AGENTS)
    torch.testing.assert_close(weights.sum(-1), torch.full((10,), 2.0))  # a softmax over agents per head, summed
    agent_qs = torch.randn(10, N_AGENTS)
    # with Q_i = V_i the IGO correction vanishes: Q_tot = sum_i w_i Q_i + V(s)
    q_tot, _ = mixer(agent_qs, agent_qs, state, actions, observation)
    torch.testing.assert_close(q_tot, (weights * agent_qs).sum(-1) + mixer.value(state).squeeze(-1))
    # and in general: sum_i w_i V_i + V(s) + sum_i lambda_i w_i (Q_i - V_i), in value
    values = torch.randn(10, N_AGENTS)
    q_tot, _ = mixer(agent_qs, values, state, actions, observation)
    lam = mixer.lambda_weights(state, actions)
    expected = (weights * values).sum(-1) + mixer.value(state).squeeze(-1) + (lam * weights * (agent_qs - values)).sum(-1)
    torch.testing.assert_close(q_tot, expected)


def test_fop_mixer_heads_each_have_their_own_query_hypernetwork():
    """As the published FOP (one ``selector_extractor`` per head): head h's query is
    ``ReLU(W_h s + b_h) U_h`` from weights of its own, and its logit for agent i is that query times i's key."""
    torch.manual_seed(1)
    obs_dim, heads, hidden, dim = 6, 3, 5, 4
    mixer = FOPMixer(STATE_DIM, obs_dim, N_AGENTS, N_ACTIONS, n_heads=heads, embed_dim=8, attention_dim=dim, hypernet_dim=hidden)
    state, observation = torch.randn(7, STATE_DIM), torch.randn(7, N_AGENTS, obs_dim)
    _, logits = mixer.attention(state, observation)
    for h in range(heads):
        rows = slice(h * hidden, (h + 1) * hidden)
        query = torch.relu(state @ mixer.query_hidden.weight[rows].T + mixer.query_hidden.bias[rows]) @ mixer.query_out[h]
        keys = (observation @ mixer.keys.weight.T).view(7, N_AGENTS, heads, dim)[:, :, h]
        torch.testing.assert_close(logits[:, h], (query[:, None, :] * keys).sum(-1))
    # head 1's hidden block feeds head 1 only
    with torch.no_grad():
        mixer.query_hidden.weight[hidden : 2 * hidden].add_(1.0)
    _, moved = mixer.attention(state, observation)
    assert torch.equal(moved[:, [0, 2]], logits[:, [0, 2]]) and not torch.equal(moved[:, 1], logits[:, 1])


def test_a_fop_checkpoint_from_before_per_head_queries_stops_with_one_line():
    module = Fop()
    with pytest.raises(ValueError, match="share one query layer among their attention heads.*train it again"):
        module.on_load_checkpoint({"state_dict": {"mixers.0.queries.0.weight": torch.zeros(1)}})


def test_fop_acts_and_learns_with_the_plain_softmax():
    # The authors' FOP baseline has no epsilon: the behaviour probabilities are the policy's softmax.
    module = Fop()
    logits = torch.randn(5, N_AGENTS, N_ACTIONS)
    available = torch.rand(5, N_AGENTS, N_ACTIONS) > 0.3
    available[..., 0] = True
    assert module.epsilon == 0.0
    for mode in ("explore", "sample"):
        torch.testing.assert_close(module.policy_log_probs(logits, available, mode).exp(), torch.softmax(logits.masked_fill(~available, -1e10), -1))


def test_fop_actor_objective_by_hand():
    log_pi = torch.log(torch.tensor([[[[0.25, 0.75]]]]))  # [B, T, n, A]
    q = torch.tensor([[[[1.0, 2.0]]]])
    mask = torch.ones(1, 1, 1, dtype=torch.bool)
    fop = Fop(alpha_start=0.5, alpha_finish=0.5)
    expected = 0.25 * (0.5 * torch.log(torch.tensor(0.25)) - 1) + 0.75 * (0.5 * torch.log(torch.tensor(0.75)) - 2)
    torch.testing.assert_close(fop.actor_objective(log_pi, q, None, mask), expected)
    rho = torch.log(torch.tensor([[[[0.5, 0.5]]]]))
    dmac = FopDmac(omega=0.5)
    expected_dmac = 0.25 * (0.5 * torch.log(torch.tensor(0.5)) - 1) + 0.75 * (0.5 * torch.log(torch.tensor(1.5)) - 2)
    torch.testing.assert_close(dmac.actor_objective(log_pi, q, rho, mask), expected_dmac)


# -- every +DMAC variant reduces to its family's unregularised update when rho = pi or omega = 0 -----
@pytest.mark.parametrize("seed", range(4))
def test_dmac_advantages_reduce_to_the_unregularised_family_advantage(seed):
    torch.manual_seed(seed)
    batch = (2, 5)
    log_pi = random_policy(*batch, N_AGENTS, N_ACTIONS, seed=seed)
    log_rho = random_policy(*batch, N_AGENTS, N_ACTIONS, seed=seed + 100)
    q_alternatives = torch.randn(*batch, N_AGENTS, N_ACTIONS)
    actions = torch.randint(N_ACTIONS, (*batch, N_AGENTS))
    counterfactual = gather_actions(q_alternatives, actions) - (log_pi.exp() * q_alternatives).sum(-1)

    # QMIX group (through the mixer) and MAAC group (MAAC with alpha = 0 is unregularised)
    for dmac in (QmixDmac(omega=0.3), MaacDmac(omega=0.3)):
        torch.testing.assert_close(dmac.advantage(q_alternatives, actions, log_pi, log_pi), counterfactual)
        dmac.omega = 0.0
        torch.testing.assert_close(dmac.advantage(q_alternatives, actions, log_pi, log_rho), counterfactual)
    torch.testing.assert_close(Maac(alpha=0.0).advantage(q_alternatives, actions, log_pi, log_rho), counterfactual)

    # DOP group
    k = torch.rand(*batch, N_AGENTS)
    unregularised = Dop().advantage(k, q_alternatives, actions, log_pi, None)
    torch.testing.assert_close(DopDmac(omega=0.3).advantage(k, q_alternatives, actions, log_pi, log_pi), unregularised)
    torch.testing.assert_close(DopDmac(omega=0.0).advantage(k, q_alternatives, actions, log_pi, log_rho), unregularised)
    assert not torch.allclose(DopDmac(omega=0.3).advantage(k, q_alternatives, actions, log_pi, log_rho), unregularised)

    # FOP group: the expected actor objective with rho = pi is FOP's with alpha = 0
    mask = torch.ones(*batch, 1, dtype=torch.bool)
    fop = Fop(alpha_start=1e-12, alpha_finish=1e-12)
    torch.testing.assert_close(
        FopDmac(omega=0.3).actor_objective(log_pi, q_alternatives, log_pi, mask),
        fop.actor_objective(log_pi, q_alternatives, None, mask),
    )


def test_dop_critic_steps_once_per_timestep_on_fresh_and_replayed_errors_in_one_mean():
    import copy

    import pytorch_lightning as pl

    from datamodules import EpisodeDataModule

    class Recording(Dop):
        def train_critic_per_timestep(self, parts):
            self.before = (copy.deepcopy(self.critic), copy.deepcopy(self.mixer), parts)
            self.losses = []
            return super().train_critic_per_timestep(parts)

        def critic_optimizer_step(self, loss):
            self.losses.append(loss.detach())
            super().critic_optimizer_step(loss)

    limit = 4
    module = Recording()
    data = EpisodeDataModule(env_kwargs={"n_states": 3, "n_agents": 2, "n_actions": 3, "episode_limit": limit}, n_envs=4,
                             episodes_per_collect=4, updates_per_episode=0.25, batch_size=3, recent_episodes=2, recent_window=4,
                             buffer_size=8, max_env_steps=4 * limit, env_steps_per_epoch=100, seed=0)
    pl.Trainer(max_epochs=-1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
               enable_model_summary=False).fit(module, data)
    assert module.critic_steps == limit and len(module.losses) == limit  # one update: a step per timestep
    critic, mixer, parts = module.before
    (fresh, on_policy), (replay, tree_backup) = parts
    assert fresh.observation.shape[0] == 2 and replay.observation.shape[0] == 3
    with torch.no_grad():  # the first step (t = 0), from the critic before the update: 5 episodes, one mean
        errors = []
        for episodes, targets in parts:
            q = critic(individual_critic_inputs(episodes.observation[:, :1], episodes.state[:, :1]))
            errors.append(mixer(gather_actions(q, episodes.actions[:, :1]), episodes.state[:, :1]) - targets[:, :1])
        torch.testing.assert_close(module.losses[0], (torch.cat(errors) ** 2).mean())


def test_maac_target_subtracts_the_entropy_term_outside_the_discount_and_the_termination():
    from dmac_lightning.algorithms.episodes import EpisodeBatch
    from dmac_lightning.envs import EnvInfo
    from tensordict import TensorDict

    maac = Maac(alpha=0.5, gamma=0.9)
    maac.configure_env(EnvInfo(n_agents=2, n_actions=2, obs_dim=3, state_dim=4, episode_limit=3))
    maac.target_values = lambda episodes, actions: torch.full(actions.shape, 3.0)  # Qbar(s', a') = 3 everywhere
    batch = TensorDict(
        {
            "agents": {"observation": torch.zeros(1, 3, 2, 3), "action_mask": torch.ones(1, 3, 2, 2, dtype=torch.bool),
                       "action": torch.zeros(1, 3, 2, dtype=torch.long)},
            "state": torch.zeros(1, 3, 4), "reward": torch.tensor([[[1.0], [2.0], [0.0]]]),
            "terminated": torch.tensor([[[False], [True], [False]]]), "filled": torch.tensor([[True, True, False]]),
        },
        batch_size=[1, 3],
    )
    episodes = EpisodeBatch(batch, n_actions=2)
    uniform = torch.full((1, 3, 2, 2), 0.5).log()  # mu: log mu(a') = log 0.5 whatever a' is drawn
    targets = maac.critic_targets(episodes, uniform, uniform)
    entropy = -0.5 * torch.log(torch.tensor(0.5))  # -alpha log mu(a')
    # step 0: 1 + 0.9 * 3 - alpha log mu ; step 1 (terminated): 2 - alpha log mu (MAAC: outside gamma and the done mask)
    torch.testing.assert_close(targets, torch.stack([1 + 0.9 * 3 + entropy, 2 + entropy]).expand(2, 2).T[None])


def test_maac_clips_and_weight_decay_as_published():
    from dmac_lightning.envs import EnvInfo

    maac = Maac()
    maac.configure_env(EnvInfo(n_agents=3, n_actions=2, obs_dim=3, state_dim=4, episode_limit=3))
    critic, actor = maac.configure_optimizers()
    assert maac.critic_grad_clip_norm == 30.0 and maac.grad_clip_norm == 0.5  # 10 x n_agents; the policy's 0.5
    assert {g["weight_decay"] for g in critic.param_groups} == {1e-3} and {g["weight_decay"] for g in actor.param_groups} == {0}
    assert isinstance(critic, torch.optim.RMSprop) and isinstance(actor, torch.optim.RMSprop)  # the paper's optimiser
