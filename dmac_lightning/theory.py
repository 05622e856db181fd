"""Exact divergence policy iteration on tabular games: the paper's theory, checked numerically.

On a discounted MDP over states x joint actions with known ``P`` and ``r`` this runs

* iteration (3): ``pi^{t+1} = argmax_pi J_{pi^t}(pi)``, the optimum of the divergence-regularised MDP
  with the previous policy as target (solved exactly by soft value iteration to convergence), and
* its moving-average variant (App. A.10): ``rho^t = (1 - tau) rho^{t-1} + tau pi^{t-1}``,
  ``pi^t = argmax_pi J_{rho^t}(pi)``,

records ``J(pi^t)`` in the ORIGINAL MDP and the regularised ``J_rho(pi^t)``, and checks Prop. 1
(monotone improvement of both), Prop. 2 (the limit policy puts its mass on the optimal actions of
its own Q-function, proportionally to ``pi^0``) and Theorem 1
(``||V^{pi~*} - V*||_inf <= omega / (1 - gamma) log |A|`` for a uniform ``pi^0``).

    python -m dmac_lightning.theory --omega 0.01 0.1 1 --plot docs/results/theory.png
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class TabularGame:
    """A discounted MDP over joint actions: ``rewards [S, A]``, ``transitions [S, A, S]``."""

    rewards: np.ndarray
    transitions: np.ndarray
    gamma: float
    initial: np.ndarray  # [S], the initial state distribution

    @property
    def n_states(self) -> int:
        return self.rewards.shape[0]

    @property
    def n_actions(self) -> int:
        return self.rewards.shape[1]

    @classmethod
    def random(cls, n_states: int = 4, n_actions: int = 3, gamma: float = 0.9, seed: int = 0, concentration: float = 0.5) -> TabularGame:
        rng = np.random.default_rng(seed)
        rewards = rng.random((n_states, n_actions))
        transitions = rng.dirichlet(np.full(n_states, concentration), size=(n_states, n_actions))
        return cls(rewards, transitions, gamma, np.full(n_states, 1.0 / n_states))


def evaluate(game: TabularGame, policy: np.ndarray, penalty: np.ndarray | None = None) -> np.ndarray:
    """``V^pi`` exactly: ``(I - gamma P_pi)^{-1} (r_pi - penalty)``."""
    reward = (policy * game.rewards).sum(1) - (0.0 if penalty is None else penalty)
    transition = np.einsum("sa,sat->st", policy, game.transitions)
    return np.linalg.solve(np.eye(game.n_states) - game.gamma * transition, reward)


def kl_per_state(policy: np.ndarray, target: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(policy > 0, policy * (np.log(policy) - np.log(target)), 0.0)
    return terms.sum(1)


def objective(game: TabularGame, policy: np.ndarray) -> float:
    """``J(pi)`` in the original MDP."""
    return float(game.initial @ evaluate(game, policy))


def regularized_objective(game: TabularGame, policy: np.ndarray, target: np.ndarray, omega: float) -> float:
    """``J_rho(pi) = E[sum_t gamma^t (r - omega log pi/rho)]`` (Sec. 4.1)."""
    return float(game.initial @ evaluate(game, policy, omega * kl_per_state(policy, target)))


def regularized_optimum(game: TabularGame, target: np.ndarray, omega: float, tolerance: float = 1e-12) -> np.ndarray:
    """``argmax_pi J_rho(pi)``: soft value iteration ``V(s) = omega log sum_a rho(a|s) exp(Q(s,a)/omega)`` to
    convergence, then ``pi*(a|s) = rho(a|s) exp((Q(s,a) - V(s)) / omega)`` (App. A.8, eq. 22)."""
    values = np.zeros(game.n_states)
    log_target = np.log(np.maximum(target, 1e-300))
    while True:
        q = game.rewards + game.gamma * game.transitions @ values
        scaled = q / omega + log_target
        top = scaled.max(1, keepdims=True)
        new_values = omega * (top[:, 0] + np.log(np.exp(scaled - top).sum(1)))
        if np.max(np.abs(new_values - values)) < tolerance:
            break
        values = new_values
    logits = scaled - scaled.max(1, keepdims=True)
    policy = np.exp(logits) * (target > 0)
    return policy / policy.sum(1, keepdims=True)


def optimal_values(game: TabularGame, tolerance: float = 1e-12) -> np.ndarray:
    """``V*`` of the original MDP by value iteration."""
    values = np.zeros(game.n_states)
    while True:
        new_values = (game.rewards + game.gamma * game.transitions @ values).max(1)
        if np.max(np.abs(new_values - values)) < tolerance:
            return new_values
        values = new_values


@dataclass
class IterationTrace:
    omega: float
    tau: float | None  # None: iteration (3), rho = the previous policy
    objective: list[float] = field(default_factory=list)  # J(pi^t)
    regularized: list[float] = field(default_factory=list)  # J_{rho^t}(pi^t)
    policies: list[np.ndarray] = field(default_factory=list)


def divergence_policy_iteration(
    game: TabularGame, omega: float, iterations: int = 50, tau: float | None = None, initial: np.ndarray | None = None
) -> IterationTrace:
    """Iteration (3) (``tau=None``) or its moving-average variant (App. A.10) from ``pi^0`` (uniform)."""
    policy = np.full((game.n_states, game.n_actions), 1.0 / game.n_actions) if initial is None else initial
    target = policy.copy()
    trace = IterationTrace(omega, tau)
    trace.policies.append(policy)
    trace.objective.append(objective(game, policy))
    trace.regularized.append(regularized_objective(game, policy, target, omega))
    for _ in range(iterations):
        target = policy if tau is None else (1 - tau) * target + tau * policy
        policy = regularized_optimum(game, target, omega)
        trace.policies.append(policy)
        trace.objective.append(objective(game, policy))
        trace.regularized.append(regularized_objective(game, policy, target, omega))
    return trace


def theorem1_gap(game: TabularGame, policy: np.ndarray) -> float:
    """``||V^pi - V*||_inf``."""
    return float(np.max(np.abs(evaluate(game, policy) - optimal_values(game))))


def theorem1_bound(game: TabularGame, omega: float) -> float:
    return omega / (1 - game.gamma) * math.log(game.n_actions)


def support_off_optimal(game: TabularGame, policy: np.ndarray, tolerance: float = 1e-6) -> float:
    """Prop. 2: the largest probability the policy puts outside the greedy actions of its own Q."""
    q = game.rewards + game.gamma * game.transitions @ evaluate(game, policy)
    optimal = q >= q.max(1, keepdims=True) - tolerance
    return float((policy * ~optimal).sum(1).max())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--omega", type=float, nargs="+", default=[0.01, 0.1, 1.0])
    parser.add_argument("--tau", type=float, default=0.1, help="rate of the moving-average variant")
    parser.add_argument("--states", type=int, default=6)
    parser.add_argument("--actions", type=int, default=4, help="joint actions")
    parser.add_argument("--gamma", type=float, default=0.9)
    parser.add_argument("--iterations", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plot", default=None, help="write J(pi^t) vs t to this PNG")
    args = parser.parse_args(argv)
    game = TabularGame.random(args.states, args.actions, args.gamma, args.seed)
    optimum = float(game.initial @ optimal_values(game))
    print(f"random game: {args.states} states, {args.actions} joint actions, gamma {args.gamma}, seed {args.seed}; J* = {optimum:.4f}")
    print(f"{'omega':>7} {'variant':>12} {'J(pi^0)':>9} {'J(pi^T)':>9} {'monotone J':>11} {'monotone J_rho':>15} "
          f"{'gap':>9} {'bound':>9} {'mass off U_s':>13}")
    traces = []
    for omega in args.omega:
        for tau in (None, args.tau):
            trace = divergence_policy_iteration(game, omega, args.iterations, tau)
            traces.append(trace)
            monotone = all(b >= a - 1e-9 for a, b in zip(trace.objective, trace.objective[1:]))
            monotone_reg = all(b >= a - 1e-9 for a, b in zip(trace.regularized[1:], trace.regularized[2:]))
            variant = "pi^t" if tau is None else f"avg tau={tau}"
            print(f"{omega:>7g} {variant:>12} {trace.objective[0]:>9.4f} {trace.objective[-1]:>9.4f} {monotone!s:>11} "
                  f"{monotone_reg!s:>15} {theorem1_gap(game, trace.policies[-1]):>9.4f} {theorem1_bound(game, omega):>9.4f} "
                  f"{support_off_optimal(game, trace.policies[-1]):>13.2e}")
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        figure, axis = plt.subplots(figsize=(6, 4))
        for trace in traces:
            label = f"omega={trace.omega:g}" + ("" if trace.tau is None else f", moving average tau={trace.tau:g}")
            axis.plot(trace.objective, label=label, linestyle="-" if trace.tau is None else "--")
        axis.axhline(optimum, color="black", linewidth=0.8, label="J*")
        axis.set_xlabel("iteration t")
        axis.set_ylabel("J(pi^t) in the original MDP")
        axis.set_title("Divergence policy iteration (exact)")
        axis.legend(fontsize=7)
        figure.tight_layout()
        figure.savefig(args.plot, dpi=120)
        print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
