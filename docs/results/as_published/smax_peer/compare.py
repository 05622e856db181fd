"""Our QMIX against JaxMARL's own QMIX on SMAX 3m, side by side: a table and a figure.

    .venv/bin/python docs/results/as_published/smax_peer/compare.py \\
        --ours runs/smax3m_1m/qmix --peer /work/peer/pairing_a.log --pairing a --out docs/results/as_published/smax_peer

``--ours``: a sweep folder of our runs (``seed_<s>/`` with TensorBoard events; ``eval/win_rate``);
``--peer``: the output of JaxMARL's ``qmix_rnn.py`` with the print-only patch (README of this folder):
lines ``PEER {json}``, one per vmapped seed and test. Greedy test win rate at every 25k env steps
(each series' evaluation nearest to it), per seed and as mean with a 95% Student-t interval;
``--out``: ``pairing_<a|b>.md`` (the table) and ``pairing_<a|b>.png`` (the curves).
"""

from __future__ import annotations

import argparse
import glob
import json
import os

import numpy as np

from dmac_lightning.experiments.plots import _pyplot, mean_ci, read_scalars, welch

EVERY = 25_000


def peer_series(path: str) -> dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """seed -> (env steps, greedy test win rate, wall-clock seconds) from the PEER lines."""
    rows: dict[int, list[tuple[int, float, float]]] = {}
    with open(path) as f:
        for line in f:
            if not line.startswith("PEER "):
                continue
            record = json.loads(line[5:])
            rows.setdefault(record["seed"], []).append((record["env_step"], record["test_returned_won_episode"] or 0.0, record["wall_s"]))
    return {seed: tuple(np.array(column) for column in zip(*sorted(values))) for seed, values in sorted(rows.items())}


def our_series(sweep: str, metric: str = "eval/win_rate") -> dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """seed -> (env steps, ``metric``, wall-clock seconds since the run's first event)."""
    series = {}
    for directory in sorted(glob.glob(os.path.join(sweep, "seed_*"))):
        scalars = read_scalars(directory)
        if metric not in scalars:
            continue
        steps, values = scalars[metric]
        series[int(directory.rsplit("_", 1)[1])] = (steps, values, wall_clock(directory, steps))
    return series


def wall_clock(directory: str, steps: np.ndarray) -> np.ndarray:
    """Seconds of training at each of ``steps`` (summed over the run's resumed segments)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(directory, size_guidance={"scalars": 0})
    events.Reload()
    # Chronological, not by step: a resumed segment repeats the steps its predecessor logged after its
    # last checkpoint; the repeated work counts as time, and the later segment's steps replace the earlier's.
    timeline = sorted((e.wall_time, e.step) for e in events.Scalars("train/episode_return"))
    elapsed, total, last_time = [], 0.0, None
    for time, step in timeline:
        if last_time is not None and time - last_time < 600:  # a gap of over 10 min is a pause between segments
            total += time - last_time
        while elapsed and elapsed[-1][0] >= step:
            elapsed.pop()
        elapsed.append((step, total))
        last_time = time
    at = np.array([s for s, _ in elapsed]), np.array([t for _, t in elapsed])
    return np.interp(steps, *at)


def at_checkpoints(series: dict, checkpoints: np.ndarray) -> np.ndarray:
    """[seeds, checkpoints]: each seed's value at the evaluation nearest to each checkpoint (NaN past its end)."""
    table = np.full((len(series), len(checkpoints)), np.nan)
    for row, (steps, values, _) in enumerate(series.values()):
        for column, point in enumerate(checkpoints):
            if point <= steps.max() + EVERY / 2:
                table[row, column] = values[np.abs(steps - point).argmin()]
    return table


def speed(series: dict) -> tuple[float, float]:
    """(env steps reached, env steps per second of one seed), the mean over seeds."""
    reached = np.mean([steps.max() for steps, _, _ in series.values()])
    rates = [steps.max() / wall[-1] for steps, _, wall in series.values() if wall[-1] > 0]
    return float(reached), float(np.mean(rates)) if rates else float("nan")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ours", required=True)
    parser.add_argument("--peer", required=True)
    parser.add_argument("--pairing", required=True, choices=("a", "b"))
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    ours, peer = our_series(args.ours), peer_series(args.peer)
    end = min(steps.max() for steps, _, _ in (*ours.values(), *peer.values()))  # every seed of both got this far
    checkpoints = np.arange(0, end + EVERY / 2, EVERY)
    tables = {"ours (dmac-lightning QMIX)": (ours, at_checkpoints(ours, checkpoints)),
              "JaxMARL QMIX": (peer, at_checkpoints(peer, checkpoints))}

    header = "| implementation | seed | " + " | ".join(f"{int(c / 1000)}k" for c in checkpoints) + " |"
    lines = [header, "|" + "---|" * (len(checkpoints) + 2)]
    for name, (series, table) in tables.items():
        for seed, row in zip(series, table):
            lines.append(f"| {name} | {seed} | " + " | ".join("-" if np.isnan(v) else f"{v:.2f}" for v in row) + " |")
        mean, half = mean_ci(table)
        lines.append(f"| {name} | mean ± 95% CI | " + " | ".join("-" if np.isnan(m) else f"{m:.2f} ± {h:.2f}" for m, h in zip(mean, half)) + " |")
    # the last tenth of the common budget, per seed, as the final win rate
    final = {name: np.nanmean(table[:, checkpoints >= 0.9 * checkpoints[-1]], axis=1) for name, (_, table) in tables.items()}
    (name_a, a), (name_b, b) = final.items()
    difference, half, p = welch(b, a)
    lines += [
        "",
        f"Final (mean over the evaluations in the last tenth of {int(checkpoints[-1] / 1000)}k env steps), per seed: "
        + "; ".join(f"{name} " + ", ".join(f"{v:.2f}" for v in values) for name, values in final.items())
        + f". Ours minus JaxMARL's: {difference:+.2f} [{difference - half:+.2f}, {difference + half:+.2f}] (Welch, p {p:.2g}).",
        "",
        "| implementation | env steps reached (mean over seeds) | seeds per process (one core each) | wall clock per process | env steps/s per seed | env steps/s per core |",
        "|---|---|---|---|---|---|",
    ]
    for (name, (series, _)), per_process in zip(tables.items(), (1, len(peer))):  # ours one seed at a time; JaxMARL vmaps its seeds
        reached, rate = speed(series)
        wall = np.mean([w[-1] for _, _, w in series.values()])
        lines.append(f"| {name} | {reached:,.0f} | {per_process} | {wall / 60:.0f} min | {rate:.0f} | {rate * per_process:.0f} |")
    compact = [c for c in range(len(checkpoints)) if checkpoints[c] % 100_000 == 0]
    lines += [
        "",
        "Every 100k env steps, mean ± 95% CI over seeds:",
        "",
        "| implementation | " + " | ".join(f"{int(checkpoints[c] / 1000)}k" for c in compact) + " |",
        "|---|" + "---|" * len(compact),
    ]
    for name, (_, table) in tables.items():
        mean, half = mean_ci(table)
        lines.append(f"| {name} | " + " | ".join(f"{mean[c]:.2f} ± {half[c]:.2f}" for c in compact) + " |")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, f"pairing_{args.pairing}.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))

    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(7, 4))
    for (name, (series, _)), colour in zip(tables.items(), ("tab:blue", "tab:orange")):
        grid = np.arange(0, end + 1, EVERY / 5)
        curves = np.array([np.interp(grid, steps, values, right=np.nan) for steps, values, _ in series.values()])
        mean, half = mean_ci(curves)
        axis.plot(grid, mean, color=colour, label=f"{name} ({len(series)} seeds)")
        axis.fill_between(grid, mean - half, mean + half, color=colour, alpha=0.2)
    axis.set_xlabel("env steps")
    axis.set_ylabel("greedy test win rate")
    axis.set_ylim(-0.02, 1.02)
    axis.set_title(f"SMAX 3m, QMIX, pairing {args.pairing}: mean and 95% CI over seeds")
    axis.legend(loc="lower right")
    figure.tight_layout()
    figure.savefig(os.path.join(args.out, f"pairing_{args.pairing}.png"), dpi=110)


if __name__ == "__main__":
    main()
