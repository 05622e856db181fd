"""Per-seed eval win rate of a SMAX sweep's runs, as the tables of section 2b: one row per seed at fixed
env steps, the final win rate (mean over the evaluations in the last 100k env steps the seed reached),
how far it got and its training time; then, for two runs, +DMAC minus baseline over the seeds that got
the full budget (Welch).

    .venv/bin/python docs/results/as_published/seed_table.py --runs runs/smax3m_1m --names qmix qmix_dmac \\
        --budget 1000000

``--runs``: a sweep folder (``<name>/seed_<s>/`` with TensorBoard events, the layout of ``dmac-sweep``).
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "smax_peer"))
from compare import our_series  # noqa: E402  (the peer check's reader: eval/win_rate and training time per seed)

from dmac_lightning.experiments.plots import welch  # noqa: E402

COLUMNS = (25_000, 50_000, 100_000, 200_000, 300_000, 400_000, 500_000, 600_000, 700_000, 800_000, 900_000, 1_000_000)
FINAL_WINDOW = 100_000


def label(steps: int) -> str:
    return "1M" if steps == 1_000_000 else f"{steps // 1000}k"


def seed_rows(sweep: str, name: str, budget: int, metric: str = "eval/win_rate") -> tuple[list[str], dict[int, float]]:
    """The table's rows for one run, and the finals of the seeds that reached ``budget``."""
    columns = [c for c in COLUMNS if c <= budget]
    rows, finals = [], {}
    for seed, (steps, values, wall) in our_series(os.path.join(sweep, name), metric).items():
        cells = [f"{values[np.abs(steps - c).argmin()]:.2f}" if c <= steps.max() + 12_500 else "-" for c in columns]
        # the evaluations from 100k before the end on (a run's last one lands a few steps past its budget)
        final = float(values[steps >= steps.max() - FINAL_WINDOW - 1000].mean()) if steps.max() >= FINAL_WINDOW else float("nan")
        complete = steps.max() >= budget - 1000  # a run stops at the first collect past its budget
        if complete:
            finals[seed] = final
        reached = "full budget" if complete else f"{steps.max() / 1000:.0f}k so far"
        rows.append(f"| {name} | {seed} | " + " | ".join(cells) + f" | {'-' if np.isnan(final) else f'{final:.2f}'} | {reached}, {wall[-1] / 60:.0f} min |")
    header = "| run | seed | " + " | ".join(label(c) for c in columns) + " | final (last 100k) | reached, training time |"
    return [header, "|" + "---|" * (len(columns) + 4), *rows], finals


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", required=True)
    parser.add_argument("--names", nargs="+", required=True, help="run folders: a baseline, then its +DMAC variant")
    parser.add_argument("--budget", type=int, default=1_000_000)
    parser.add_argument("--metric", default="eval/win_rate",
                        help="eval/win_rate (the algorithm's published protocol), eval_greedy/win_rate or eval_sampled/win_rate")
    args = parser.parse_args(argv)
    finals = {}
    for name in args.names:
        rows, finals[name] = seed_rows(args.runs, name, args.budget, args.metric)
        print("\n".join(rows) + "\n")
    if len(args.names) == 2:
        baseline, variant = (np.array(list(finals[name].values())) for name in args.names)
        if len(baseline) >= 2 and len(variant) >= 2:
            difference, half, p = welch(baseline, variant)  # variant minus baseline
            print(f"{args.names[1]} minus {args.names[0]}, final, seeds at the full budget ({len(variant)} and {len(baseline)}): "
                  f"{difference:+.3f} [{difference - half:+.3f}, {difference + half:+.3f}], Welch p {p:.2g}")
        else:
            print("fewer than 2 seeds of a run got the full budget: no verdict yet")


if __name__ == "__main__":
    main()
