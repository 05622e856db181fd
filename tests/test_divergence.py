"""The DMAC math on tiny tensors: hand-computed values and autograd cross-checks."""

import itertools

import pytest
import torch

from dmac_lightning import divergence
from dmac_lightning.policy import UNAVAILABLE_LOGIT, masked_log_softmax
from dmac_lightning.returns import lambda_returns, masked_mean

# A 4-step episode, padded to 6 steps with garbage after the end.
REWARDS = torch.tensor([[1.0, 2.0, 3.0, 4.0, 99.0, 99.0]])
NEXT_Q = torch.tensor([[10.0, 20.0, 30.0, 40.0, 77.0, 77.0]])  # Qbar(s_{t+1}, a_{t+1})
NEXT_LOG_RATIO = torch.tensor([[0.2, 0.4, 0.6, 0.8, 5.0, 5.0]])  # l_{t+1}
FILLED = torch.tensor([[True, True, True, True, False, False]])
GAMMA, LAMBDA, OMEGA = 0.5, 0.5, 0.1


def targets(terminated_last: bool, td_lambda: float = LAMBDA, omega: float = OMEGA) -> torch.Tensor:
    terminated = torch.zeros(1, 6)
    terminated[0, 3] = float(terminated_last)
    out = divergence.critic_targets(REWARDS, terminated, FILLED, NEXT_Q, NEXT_LOG_RATIO, GAMMA, omega, td_lambda)
    return out[0, :4]


def test_td_lambda_targets_terminated_episode_by_hand():
    # r_hat = r - gamma * omega * l_{t+1} (no shaping at the terminal step):
    #   0.99, 1.98, 2.97, 4
    # G_3 = 4
    # G_2 = 2.97 + 0.5 * (0.5 * 30 + 0.5 * 4)       = 11.47
    # G_1 = 1.98 + 0.5 * (0.5 * 20 + 0.5 * 11.47)    = 9.8475
    # G_0 = 0.99 + 0.5 * (0.5 * 10 + 0.5 * 9.8475)   = 5.951875
    expected = torch.tensor([5.951875, 9.8475, 11.47, 4.0])
    torch.testing.assert_close(targets(terminated_last=True), expected)


def test_td_lambda_targets_truncated_episode_bootstrap_by_hand():
    # Time limit, not termination: the last step bootstraps through Qbar and the divergence term.
    # G_3 = (4 - 0.5 * 0.1 * 0.8) + 0.5 * 40          = 23.96
    # G_2 = 2.97 + 0.5 * (0.5 * 30 + 0.5 * 23.96)      = 16.46
    # G_1 = 1.98 + 0.5 * (0.5 * 20 + 0.5 * 16.46)      = 11.095
    # G_0 = 0.99 + 0.5 * (0.5 * 10 + 0.5 * 11.095)     = 6.26375
    expected = torch.tensor([6.26375, 11.095, 16.46, 23.96])
    torch.testing.assert_close(targets(terminated_last=False), expected)


def test_one_step_target_is_proposition_4():
    # lambda = 0: y_t = r_t + gamma (1 - term_t) (Qbar_{t+1} - omega l_{t+1})
    expected = torch.tensor(
        [1 + 0.5 * (10 - 0.1 * 0.2), 2 + 0.5 * (20 - 0.1 * 0.4), 3 + 0.5 * (30 - 0.1 * 0.6), 4.0]
    )
    torch.testing.assert_close(targets(terminated_last=True, td_lambda=0.0), expected)


def test_lambda_one_is_the_regularised_monte_carlo_return():
    # lambda = 1 on a terminated episode: sum_k gamma^k r_hat_{t+k}, no bootstrap at all.
    shaped = torch.tensor([0.99, 1.98, 2.97, 4.0])
    expected = torch.tensor([sum(GAMMA**k * shaped[t + k] for k in range(4 - t)) for t in range(4)])
    torch.testing.assert_close(targets(terminated_last=True, td_lambda=1.0), expected)


def test_omega_zero_gives_plain_td_lambda_and_targets_broadcast_over_agents():
    terminated = torch.zeros(1, 6, 1)
    terminated[0, 3] = 1.0
    next_q = torch.stack([NEXT_Q, 2 * NEXT_Q], dim=-1)  # one target critic per agent
    regularised = divergence.critic_targets(
        REWARDS[..., None], terminated, FILLED[..., None], next_q, NEXT_LOG_RATIO[..., None], GAMMA, 0.0, LAMBDA
    )
    plain = lambda_returns(REWARDS[..., None], terminated, FILLED[..., None], next_q, GAMMA, LAMBDA)
    assert regularised.shape == (1, 6, 2)
    torch.testing.assert_close(regularised, plain)
    torch.testing.assert_close(plain[0, :4, 0], torch.tensor([5.96875, 9.875, 11.5, 4.0]))


def test_masked_mean_ignores_padding():
    values = torch.tensor([[1.0, 3.0, 100.0]])
    assert masked_mean(values, torch.tensor([[True, True, False]])).item() == pytest.approx(2.0)


def test_masked_softmax_gives_exact_zeros_and_finite_kl():
    logits = torch.tensor([[0.3, 1.0, -2.0]])
    available = torch.tensor([[True, False, True]])
    log_pi = masked_log_softmax(logits, available)
    assert log_pi.exp()[0, 1].item() == 0.0
    torch.testing.assert_close(log_pi.exp().sum(-1), torch.ones(1))
    log_rho = masked_log_softmax(torch.zeros(1, 3), available)
    kl = divergence.kl_divergence(log_pi, log_rho)
    p = torch.softmax(torch.tensor([0.3, -2.0]), 0)
    expected = (p * (p.log() - torch.log(torch.tensor(0.5)))).sum()
    torch.testing.assert_close(kl, expected[None])
    assert UNAVAILABLE_LOGIT < -1e9


def test_joint_log_ratio_sums_agents():
    log_pi = torch.log(torch.tensor([[0.5, 0.25]]))
    log_rho = torch.log(torch.tensor([[0.25, 0.5]]))
    torch.testing.assert_close(divergence.joint_log_ratio(log_pi, log_rho), torch.log(torch.tensor([2 * 0.5])))


# -- the actor ---------------------------------------------------------------------------------------
def two_agent_game(seed: int = 0, n_actions: int = 3):
    generator = torch.Generator().manual_seed(seed)
    pi_logits = [torch.randn(n_actions, generator=generator, requires_grad=True) for _ in range(2)]
    rho_logits = [torch.randn(n_actions, generator=generator) for _ in range(2)]
    q = torch.randn(n_actions, n_actions, generator=generator)  # Q(s, a_1, a_2) of the single state
    return pi_logits, rho_logits, q


def test_counterfactual_advantage_is_the_papers_formula():
    pi_logits, rho_logits, q = two_agent_game()
    omega = 0.3
    log_pi = torch.stack([torch.log_softmax(x, 0) for x in pi_logits]).detach()  # [n, A]
    log_rho = torch.stack([torch.log_softmax(x, 0) for x in rho_logits])
    pi, rho = log_pi.exp(), log_rho.exp()
    a1, a2 = 2, 0
    q_alternatives = torch.stack([q[:, a2], q[a1, :]])  # row i varies agent i's action
    advantage = divergence.counterfactual_advantage(
        q[a1, a2].expand(2),
        q_alternatives,
        pi,
        log_pi[[0, 1], [a1, a2]],
        log_rho[[0, 1], [a1, a2]],
        divergence.kl_divergence(log_pi, log_rho),
        omega,
    )
    for i, (a_i, alternatives) in enumerate([(a1, q[:, a2]), (a2, q[a1, :])]):
        kl_i = sum(pi[i, b] * torch.log(pi[i, b] / rho[i, b]) for b in range(3))
        paper = q[a1, a2] - (pi[i] * alternatives).sum() - omega * (torch.log(pi[i, a_i] / rho[i, a_i]) - kl_i)
        torch.testing.assert_close(advantage[i], paper)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("omega", [0.0, 0.2, 1.5])
def test_policy_gradient_matches_autograd_of_the_regularised_objective(seed, omega):
    """E_{a~pi}[A_i grad log pi_i(a_i)] == grad of L_pi = sum_a pi(a) (Q(a) - omega log pi(a)/rho(a)) (App. A.9)."""
    pi_logits, rho_logits, q = two_agent_game(seed)
    n_actions = q.shape[0]
    log_pi = [torch.log_softmax(x, 0) for x in pi_logits]
    log_rho = [torch.log_softmax(x, 0) for x in rho_logits]

    joint_log_pi = log_pi[0][:, None] + log_pi[1][None, :]
    joint_log_rho = log_rho[0][:, None] + log_rho[1][None, :]
    objective = (joint_log_pi.exp() * (q - omega * (joint_log_pi - joint_log_rho))).sum()
    autograd = torch.autograd.grad(objective, pi_logits)

    # Our estimator in exact expectation: every joint action, weighted by pi(a) through the mask.
    actions = torch.tensor(list(itertools.product(range(n_actions), repeat=2)))  # [A^2, 2]
    lp = torch.stack([torch.log_softmax(x, 0) for x in pi_logits])  # [2, A], a fresh graph
    lr = torch.stack(log_rho)
    agents = torch.arange(2)
    log_pi_taken = lp[agents, actions]  # [A^2, 2], with gradient
    q_taken = q[actions[:, 0], actions[:, 1]][:, None].expand(-1, 2)
    q_alternatives = torch.stack([q[:, actions[:, 1]].T, q[actions[:, 0], :]], dim=1)  # [A^2, 2, A]
    detached = lp.detach()
    advantage = divergence.counterfactual_advantage(
        q_taken,
        q_alternatives,
        detached.exp().expand(len(actions), -1, -1),
        log_pi_taken.detach(),
        lr[agents, actions],
        divergence.kl_divergence(detached, lr).expand(len(actions), -1),
        omega,
    )
    weights = log_pi_taken.detach().sum(-1).exp()[:, None].expand(-1, 2)  # pi(a) for each agent's term
    loss = divergence.policy_gradient_loss(advantage, log_pi_taken, weights)
    ours = torch.autograd.grad(-2 * loss, pi_logits)  # the loss is a mean over the 2 agents
    for ours_i, autograd_i in zip(ours, autograd):
        torch.testing.assert_close(ours_i, autograd_i, atol=1e-5, rtol=1e-5)


def test_lvd_advantage_equals_counterfactual_advantage_under_linear_decomposition():
    """With Q = sum_i k_i Q_i(a_i) + b, COMA's counterfactual baseline is exactly DOP's LVD form."""
    generator = torch.Generator().manual_seed(3)
    n_agents, n_actions = 3, 4
    k = torch.rand(n_agents, generator=generator)
    q_individual = torch.randn(n_agents, n_actions, generator=generator)
    b = 0.7
    pi = torch.softmax(torch.randn(n_agents, n_actions, generator=generator), -1)
    rho = torch.softmax(torch.randn(n_agents, n_actions, generator=generator), -1)
    actions = torch.tensor([1, 3, 0])
    agents = torch.arange(n_agents)
    q_joint = (k * q_individual[agents, actions]).sum() + b
    # Q(s, (a'_i, a_-i)) for every alternative a'_i of agent i
    q_alternatives = q_joint - (k * q_individual[agents, actions])[:, None] + k[:, None] * q_individual
    kl = divergence.kl_divergence(pi.log(), rho.log())
    common = (pi.log()[agents, actions], rho.log()[agents, actions], kl, 0.2)
    lvd = divergence.lvd_advantage(k, q_individual[agents, actions], q_individual, pi, *common)
    counterfactual = divergence.counterfactual_advantage(q_joint.expand(n_agents), q_alternatives, pi, *common)
    torch.testing.assert_close(lvd, counterfactual)
    # and by hand for agent 0
    by_hand = k[0] * (q_individual[0, 1] - (pi[0] * q_individual[0]).sum()) - 0.2 * (
        torch.log(pi[0, 1] / rho[0, 1]) - kl[0]
    )
    torch.testing.assert_close(lvd[0], by_hand)


def test_policy_gradient_loss_masks_padding_and_stops_advantage_gradient():
    log_pi_taken = torch.tensor([[-1.0, -2.0], [-3.0, -4.0]], requires_grad=True)
    advantage = torch.tensor([[1.0, 2.0], [3.0, 4.0]], requires_grad=True)
    mask = torch.tensor([[True], [False]])
    loss = divergence.policy_gradient_loss(advantage, log_pi_taken, mask)
    assert loss.item() == pytest.approx(-(1 * -1 + 2 * -2) / 2)
    loss.backward()
    assert advantage.grad is None
    torch.testing.assert_close(log_pi_taken.grad, torch.tensor([[-0.5, -1.0], [0.0, 0.0]]))
