"""The paper's theory checked exactly on small random games (property-based over seeds)."""

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from dmac_lightning.theory import (
    TabularGame,
    divergence_policy_iteration,
    evaluate,
    optimal_values,
    regularized_objective,
    regularized_optimum,
    support_off_optimal,
    theorem1_bound,
    theorem1_gap,
)

games = st.builds(
    TabularGame.random,
    n_states=st.integers(2, 5),
    n_actions=st.integers(2, 4),
    gamma=st.sampled_from([0.5, 0.8, 0.9]),
    seed=st.integers(0, 10_000),
)


@settings(max_examples=25, deadline=None)
@given(game=games, omega=st.sampled_from([0.01, 0.1, 0.5, 2.0]), tau=st.sampled_from([None, 0.1, 0.5]))
def test_prop1_monotone_improvement_in_the_original_and_the_regularised_mdp(game, omega, tau):
    trace = divergence_policy_iteration(game, omega, iterations=25, tau=tau)
    assert all(later >= earlier - 1e-8 for earlier, later in zip(trace.objective, trace.objective[1:]))
    assert all(later >= earlier - 1e-8 for earlier, later in zip(trace.regularized, trace.regularized[1:]))
    # J(pi) >= J_rho(pi): the divergence term is non-negative
    assert all(j >= j_rho - 1e-8 for j, j_rho in zip(trace.objective, trace.regularized))


@settings(max_examples=20, deadline=None)
@given(game=games, omega=st.sampled_from([0.01, 0.1, 0.3, 1.0]))
def test_theorem1_bound_holds_from_the_first_iterate_to_the_limit(game, omega):
    """From the uniform start the first iterate is the entropy-regularised optimum, at a real distance
    from V* (see the next test); every later iterate and the converged policy stay inside the bound."""
    trace = divergence_policy_iteration(game, omega, iterations=150)
    bound = theorem1_bound(game, omega)
    assert all(theorem1_gap(game, policy) <= bound + 1e-8 for policy in trace.policies[1:])


def test_theorem1_needs_its_uniform_start_and_is_not_vacuous():
    game = TabularGame.random(n_states=4, n_actions=3, gamma=0.9, seed=0)
    omega = 0.1
    bound = theorem1_bound(game, omega)
    first = divergence_policy_iteration(game, omega, iterations=1).policies[1]
    assert 0.05 * bound < theorem1_gap(game, first) <= bound
    # a start peaked on the worst actions breaks the theorem's assumption, and the bound with it
    q = game.rewards + game.gamma * game.transitions @ optimal_values(game)
    peaked = np.full((4, 3), 1e-3)
    peaked[np.arange(4), q.argmin(1)] = 1.0
    peaked /= peaked.sum(1, keepdims=True)
    first_from_peaked = divergence_policy_iteration(game, omega, iterations=1, initial=peaked).policies[1]
    assert theorem1_gap(game, first_from_peaked) > bound


@settings(max_examples=8, deadline=None)
@given(game=games)
def test_prop2_the_limit_policy_lives_on_the_optimal_actions(game):
    # Prop. 2 is a limit: between actions whose optimal values nearly tie (a gap delta), the mass moves
    # by exp(delta / omega) per iteration, so 300 iterations settle only gaps of about 0.01 and more.
    q = game.rewards + game.gamma * game.transitions @ optimal_values(game)
    gaps = q.max(1, keepdims=True) - q
    assume(gaps[gaps > 1e-9].min() >= 0.01)
    trace = divergence_policy_iteration(game, omega=0.05, iterations=300)
    assert support_off_optimal(game, trace.policies[-1]) < 1e-6
    # and converges to the optimum of the original MDP in value
    np.testing.assert_allclose(evaluate(game, trace.policies[-1]), optimal_values(game), atol=1e-6)


def test_prop2_ties_keep_the_initial_policys_proportions():
    base = TabularGame.random(n_states=3, n_actions=2, gamma=0.8, seed=3)
    # duplicate each state's best action so that two joint actions are exactly tied
    q = base.rewards + base.gamma * base.transitions @ optimal_values(base)
    greedy = q.argmax(1)
    rewards = np.concatenate([base.rewards, base.rewards[np.arange(3), greedy][:, None]], 1)
    transitions = np.concatenate([base.transitions, base.transitions[np.arange(3), greedy][:, None]], 1)
    game = TabularGame(rewards, transitions, base.gamma, base.initial)
    initial = np.tile(np.array([0.5, 0.2, 0.3]), (3, 1))
    trace = divergence_policy_iteration(game, omega=0.05, iterations=400, initial=initial)
    limit = trace.policies[-1]
    for s in range(3):
        tied = [greedy[s], 2]
        expected = initial[s, tied] / initial[s, tied].sum()
        np.testing.assert_allclose(limit[s, tied], expected, atol=1e-6)


@pytest.mark.parametrize("seed", range(3))
def test_regularized_optimum_beats_perturbed_policies(seed):
    game = TabularGame.random(n_states=4, n_actions=3, gamma=0.9, seed=seed)
    rng = np.random.default_rng(seed)
    target = rng.dirichlet(np.ones(3), size=4)
    optimum = regularized_optimum(game, target, omega=0.3)
    best = regularized_objective(game, optimum, target, 0.3)
    for _ in range(20):
        other = rng.dirichlet(np.ones(3), size=4)
        assert regularized_objective(game, other, target, 0.3) <= best + 1e-9
        mixed = 0.9 * optimum + 0.1 * other
        assert regularized_objective(game, mixed, target, 0.3) <= best + 1e-9
