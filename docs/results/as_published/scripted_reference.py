"""Win rate of fixed scripts on the very evaluation episodes of a SMAX run, to read a plateau against.

Each script advances (one move direction) until an enemy is in range, then attacks the enemies in a fixed
order of priority (the first that is attackable): six orders on a 3-enemy map. Such a script uses no
learning at all, so a run whose evaluations equal a script's, evaluation for evaluation, has learnt that
script and nothing more.

Reproducing the episodes works because an evaluation's episodes are a function of the run's seed and the
evaluation's index only: the evaluator's envs are seeded ``seed + seed_offset`` (the ``Evaluator``
default), and every evaluation plays one round of ``episodes`` envs for the full episode limit (SMAX
draws its random keys per step whatever the policy does). So the k-th evaluation of every run of seed s
meets the same battles, whichever the algorithm.

    .venv/bin/python docs/results/as_published/scripted_reference.py --map 3m --seeds 0 1 2 --evaluations 13 \\
        --compare "coma greedy=runs/smax3m_300k/coma:eval_greedy/win_rate"

``--compare NAME=RUN_FOLDER:METRIC`` (repeatable): the run's value at each evaluation beside the scripts,
and at how many evaluations it equals each script exactly.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "smax_peer"))
from compare import our_series  # noqa: E402  (per-seed TensorBoard series of a sweep's run)

from dmac_lightning.envs import make_env  # noqa: E402
from dmac_lightning.envs.common import ACTION, ACTION_MASK  # noqa: E402
from dmac_lightning.evaluation import Evaluator, evaluate_episodes  # noqa: E402

N_MOVES = 4  # SMAX: move in 4 directions, stop, then one attack per enemy (docs/smax.md)


def advance_then_attack(move: int, order: tuple[int, ...]):
    """A policy: the first attackable enemy of ``order``; else ``move`` (else anything available)."""

    def policy(tensordict):
        mask = tensordict.get(ACTION_MASK)
        priority = torch.zeros(mask.shape[-1])
        priority[move] = 1.0
        for rank, enemy in enumerate(order):
            priority[N_MOVES + 1 + enemy] = 10.0 - rank
        tensordict.set(ACTION, priority.expand_as(mask).masked_fill(~mask, -1.0).argmax(-1))
        return tensordict

    return policy


def script_win_rates(map_name: str, seed: int, evaluations: int, episodes: int, policy) -> list[float]:
    env = make_env("smax", {"map_name": map_name}, n_envs=episodes, seed=seed + Evaluator().seed_offset)
    try:
        limit = env.info.episode_limit
        return [evaluate_episodes(env, policy, episodes, limit)["win_rate"] for _ in range(evaluations)]
    finally:
        env.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--map", default="3m")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--evaluations", type=int, default=13, help="evaluations from the one at 0 env steps on")
    parser.add_argument("--episodes", type=int, default=32, help="episodes per evaluation (the run's evaluation.episodes)")
    parser.add_argument("--move", type=int, default=1, help="the move action the scripts advance with (0-3)")
    parser.add_argument("--compare", action="append", default=[], help="NAME=RUN_FOLDER:METRIC")
    parser.add_argument("--orders", nargs="+", default=None, metavar="ORDER",
                        help="the attack orders to play, e.g. 0>1>2 (default: every order; 8m has 40320)")
    args = parser.parse_args(argv)
    compared = {}
    for item in args.compare:
        name, _, source = item.partition("=")
        folder, _, metric = source.rpartition(":")
        compared[name] = {seed: values for seed, (_, values, _) in our_series(folder, metric).items()}
    probe = make_env("smax", {"map_name": args.map}, n_envs=1, seed=0)
    n_enemies = probe.info.n_actions - N_MOVES - 1
    probe.close()
    if args.orders is None:
        orders = list(itertools.permutations(range(n_enemies)))
    else:
        orders = []
        for text in args.orders:
            order = tuple(int(e) if e.strip().isdigit() else -1 for e in text.split(">"))
            if sorted(order) != list(range(n_enemies)):
                parser.error(f"--orders: {text} is not an order of the {n_enemies} enemies 0..{n_enemies - 1} (e.g. 0>1>2)")
            orders.append(order)

    print(f"| seed | policy | win rate at evaluations 0..{args.evaluations - 1} | mean | " +
          " | ".join(f"equal to {name}" for name in compared) + (" |" if compared else ""))
    print("|---|---|---|---|" + "---|" * len(compared))
    for seed in args.seeds:
        for name, series in compared.items():
            values = [f"{v:.2f}" for v in series.get(seed, [])[: args.evaluations]]
            print(f"| {seed} | {name} | {' '.join(values)} | - |" + " - |" * len(compared))
        for order in orders:
            wins = script_win_rates(args.map, seed, args.evaluations, args.episodes, advance_then_attack(args.move, order))
            equal = []
            for series in compared.values():
                run = series.get(seed, [])[: args.evaluations]
                equal.append(f" {sum(abs(a - b) < 1e-6 for a, b in zip(wins, run))} of {len(run)} |")
            label = "advance, attack " + ">".join(str(e) for e in order)
            print(f"| {seed} | {label} | {' '.join(f'{w:.2f}' for w in wins)} | {sum(wins) / len(wins):.2f} |" + "".join(equal),
                  flush=True)


if __name__ == "__main__":
    main()
