"""Our DopDmac / Fop beside the DMAC authors' own code (PKU-RL/FOP-DMAC-MACPF), side by side: a table
and a figure per pairing, whole curves compared.

    .venv/bin/python docs/results/as_published/authors_peer/compare.py --pairing a-dmac --metric return_ratio \\
        --theirs "authors' DMAC=/work/peers/authors/FOP-DMAC-MACPF/results/sacred/reduced_game/dmac" \\
        --ours "ours, authors' preset=runs/authors_peer_a/dop_dmac-authors" \\
        --ours "ours, our default=runs/authors_peer_a/dop_dmac" --out docs/results/as_published/authors_peer

``--theirs NAME=DIR``: a folder of the authors' sacred runs (``<id>/config.json``, ``info.json``,
``run.json``): their test return (``test_return_mean``, as a fraction of the game's exact optimum with
``--metric return_ratio``) or win rate (``test_battle_won_mean``); or ``NAME=FILE.md``: a table this script
wrote earlier from those runs (its rows named NAME: values to two decimals at each checkpoint, and the env
steps/s of its whole-curve table), for when the sacred folder is no longer there. ``--ours NAME=DIR``: a sweep folder of
ours (``seed_<s>/`` with TensorBoard events: ``eval/return_ratio`` or ``eval/win_rate``), or
``FILE.json#algorithm``: a marl-eval export of earlier runs (no wall clock). Every series is read at the
evaluation nearest to each multiple of ``--every`` env steps up to the budget every seed reached.

Per implementation: per-seed rows, mean ± 95% CI, and three whole-curve figures per seed: the final value
(mean over the evaluations in the last tenth), the mean over all evaluations (the normalised area
under the curve), and the env steps to first reach ``--level`` (the budget when never). Each of ours
against the first ``--theirs``: the difference with its 95% CI and Welch p for the first two, and the
env steps per second of one seed on each side.
"""

from __future__ import annotations

import argparse
import glob
import json
import os

import numpy as np

from dmac_lightning.experiments.plots import _pyplot, env_steps_label, mean_ci, read_scalars, welch

Series = dict[int, tuple[np.ndarray, np.ndarray, float]]  # seed -> (env steps, values, env steps/s or NaN)


def _number(value: object) -> float:
    """A sacred info.json value: a float, or jsonpickle's ``{"py/object": "numpy.float64", "value": x}``."""
    return float(value["value"]) if isinstance(value, dict) else float(value)


def game_optimum(env_kwargs: dict) -> float:
    from dmac_lightning.envs import StochasticGameEnv

    return StochasticGameEnv(n_envs=1, **env_kwargs).optimal_return


def their_series(directory: str, metric: str) -> Series:
    """The authors' sacred runs in ``directory``: seed -> (test env steps, metric, env steps/s)."""
    series: Series = {}
    for run in sorted(glob.glob(os.path.join(directory, "*", "info.json"))):
        folder = os.path.dirname(run)
        with open(os.path.join(folder, "config.json")) as f:
            config = json.load(f)
        with open(run) as f:
            info = json.load(f)
        key = "test_battle_won_mean" if metric == "win_rate" else "test_return_mean"
        if key not in info:
            continue
        steps = np.array(info[key + "_T"], dtype=float)
        values = np.array([_number(v) for v in info[key]])
        if metric == "return_ratio":
            values = values / game_optimum(config["env_args"]["env_kwargs"])
        rate = float("nan")
        with open(os.path.join(folder, "run.json")) as f:
            times = json.load(f)
        if times.get("heartbeat") and times.get("start_time"):
            from datetime import datetime

            seconds = (datetime.fromisoformat(times["heartbeat"]) - datetime.fromisoformat(times["start_time"])).total_seconds()
            rate = steps.max() / seconds if seconds > 0 else float("nan")
        series[int(config["seed"])] = (steps, values, rate)
    return series


def tabled_series(path: str, name: str) -> Series:
    """The rows named ``name`` of a table this script wrote (``pairing_<p>.md``): seed -> (checkpoints, values,
    env steps/s). Its values are rounded to two decimals, so figures computed from it are too."""
    with open(path) as f:
        rows = [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in f if line.startswith("|")]
    header = next(row for row in rows if row[:2] == ["implementation", "seed"])
    unit = {"k": 1e3, "M": 1e6}
    steps = np.array([float(cell[:-1]) * unit[cell[-1]] if cell[-1] in unit else float(cell) for cell in header[2:]])
    figures = rows.index(["implementation", "seeds", "final", "mean over the curve", "env steps to reach the level", "env steps/s"])
    rates = [row[-1] for row in rows[figures:] if row[0] == name and row[-1] != "-"]
    rate = float(rates[0]) if rates else float("nan")
    series: Series = {}
    for row in rows[:figures]:
        if row[0] == name and row[1].isdigit():
            values = np.array([np.nan if cell == "-" else float(cell) for cell in row[2:]])
            known = ~np.isnan(values)
            series[int(row[1])] = (steps[known], values[known], rate)
    return series


def our_series(source: str, metric: str) -> Series:
    """Our sweep folder (``seed_<s>/``) or a marl-eval export ``FILE.json#algorithm``."""
    if "#" in source:
        path, name = source.split("#", 1)
        with open(path) as f:
            export = json.load(f)
        (env,) = export.values()
        (task,) = env.values()
        series = {}
        for run, evaluations in task[name].items():
            points = sorted((e["step_count"], e[metric][0]) for key, e in evaluations.items() if key.startswith("step_"))
            steps, values = (np.array(column, dtype=float) for column in zip(*points))
            series[int(run.removeprefix("run_"))] = (steps, values, float("nan"))
        return series
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "smax_peer"))
    from compare import wall_clock  # the peer check's reader of training time per seed

    series = {}
    for directory in sorted(glob.glob(os.path.join(source, "seed_*"))):
        scalars = read_scalars(directory)
        if f"eval/{metric}" not in scalars:
            continue
        steps, values = scalars[f"eval/{metric}"]
        wall = wall_clock(directory, steps)
        series[int(directory.rsplit("_", 1)[1])] = (steps.astype(float), values, steps.max() / wall[-1] if wall[-1] > 0 else float("nan"))
    return series


def at_checkpoints(series: Series, checkpoints: np.ndarray, every: float) -> np.ndarray:
    """[seeds, checkpoints]: each seed's evaluation nearest to each checkpoint (NaN past its end)."""
    table = np.full((len(series), len(checkpoints)), np.nan)
    for row, (steps, values, _) in enumerate(series.values()):
        for column, point in enumerate(checkpoints):
            if point <= steps.max() + every / 2:
                table[row, column] = values[np.abs(steps - point).argmin()]
    return table


def curve_figures(table: np.ndarray, checkpoints: np.ndarray, level: float) -> dict[str, np.ndarray]:
    """Per seed: final (mean over the last tenth), mean over all evaluations, env steps to reach ``level``."""
    last = checkpoints >= 0.9 * checkpoints[-1]
    reached = np.array([checkpoints[np.argmax(row >= level)] if (row >= level).any() else checkpoints[-1] for row in table])
    return {"final": np.nanmean(table[:, last], axis=1), "mean over the curve": np.nanmean(table, axis=1), "env steps to the level": reached}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairing", required=True, help="the name of the table and figure, e.g. a-dmac")
    parser.add_argument("--metric", choices=("return_ratio", "win_rate"), required=True)
    parser.add_argument("--theirs", action="append", required=True, metavar="NAME=DIR")
    parser.add_argument("--ours", action="append", default=[], metavar="NAME=DIR",
                        help="ours; none: the table and figure of the --theirs runs alone (a pairing half run)")
    parser.add_argument("--every", type=float, default=5000)
    parser.add_argument("--level", type=float, default=0.5, help="the level whose first crossing is timed")
    parser.add_argument("--title", default="")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)

    groups: dict[str, Series] = {}
    for spec in args.theirs:
        name, _, directory = spec.partition("=")
        groups[name] = tabled_series(directory, name) if directory.endswith(".md") else their_series(directory, args.metric)
    for spec in args.ours:
        name, _, source = spec.partition("=")
        groups[name] = our_series(source, args.metric)
    empty = [name for name, series in groups.items() if not series]
    if empty:
        parser.error(f"no runs with {args.metric} in: {', '.join(empty)}")
    end = min(steps.max() for series in groups.values() for steps, _, _ in series.values())  # every seed got this far
    checkpoints = np.arange(0, end + args.every / 2, args.every)
    tables = {name: at_checkpoints(series, checkpoints, args.every) for name, series in groups.items()}
    label = lambda c: f"{c / 1e6:g}M" if c >= 1e6 else f"{c / 1000:g}k"  # noqa: E731

    lines = [f"Metric: {args.metric} at the evaluation nearest each {label(args.every)} env steps, up to {label(checkpoints[-1])}.", ""]
    lines += ["| implementation | seed | " + " | ".join(label(c) for c in checkpoints) + " |", "|" + "---|" * (len(checkpoints) + 2)]
    for name, table in tables.items():
        for seed, row in zip(groups[name], table):
            lines.append(f"| {name} | {seed} | " + " | ".join("-" if np.isnan(v) else f"{v:.2f}" for v in row) + " |")
        mean, half = mean_ci(table)
        lines.append(f"| {name} | mean ± 95% CI | " + " | ".join("-" if np.isnan(m) else f"{m:.2f} ± {h:.2f}" for m, h in zip(mean, half)) + " |")

    figures = {name: curve_figures(table, checkpoints, args.level) for name, table in tables.items()}
    lines += ["", f"Whole curves, per seed (final: the mean over the last tenth; level: {args.level:g}; env steps/s: one seed on one core):", ""]
    lines += ["| implementation | seeds | final | mean over the curve | env steps to reach the level | env steps/s |", "|---|---|---|---|---|---|"]
    for name, figure in figures.items():
        rates = [rate for _, _, rate in groups[name].values()]
        rate = "-" if all(np.isnan(rates)) else f"{np.nanmean(rates):.0f}"
        cells = [", ".join(f"{v:.2f}" for v in figure["final"]), ", ".join(f"{v:.2f}" for v in figure["mean over the curve"]),
                 ", ".join(label(v) for v in figure["env steps to the level"])]
        lines.append(f"| {name} | {len(groups[name])} | " + " | ".join(cells) + f" | {rate} |")
    reference = next(iter(figures))
    if len(figures) > 1:
        lines += ["", f"Each against {reference} (difference, 95% CI, Welch p):", ""]
        lines += ["| implementation | final | mean over the curve | env steps to reach the level |", "|---|---|---|---|"]
    for name, figure in list(figures.items())[1:]:
        cells = []
        for key in ("final", "mean over the curve", "env steps to the level"):
            difference, half, p = welch(figures[reference][key], figure[key])
            scale = 1000 if key.startswith("env steps") else 1
            unit = "k" if scale == 1000 else ""
            if not np.isfinite(half):  # no spread on either side (e.g. every seed reached the level at the same evaluation)
                cells.append(f"{difference / scale:+.2f}{unit} (no spread over seeds)")
                continue
            cells.append(f"{difference / scale:+.2f}{unit} [{(difference - half) / scale:+.2f}{unit}, {(difference + half) / scale:+.2f}{unit}], p {p:.2g}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, f"pairing_{args.pairing}.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))

    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(7, 4))
    for (name, table), colour in zip(tables.items(), ("black", "tab:red", "tab:blue", "tab:green")):
        mean, half = mean_ci(table)
        axis.plot(checkpoints, mean, color=colour, label=f"{name} ({table.shape[0]} seeds)")
        axis.fill_between(checkpoints, np.clip(mean - half, 0, 1), np.clip(mean + half, 0, 1), color=colour, alpha=0.15)
    axis.xaxis.set_major_formatter(env_steps_label)
    axis.set_xlabel("env steps")
    axis.set_ylabel({"return_ratio": "eval return / exact optimum", "win_rate": "eval win rate"}[args.metric])
    axis.set_ylim(-0.02, 1.02)
    axis.set_title(args.title or f"pairing {args.pairing}: mean and 95% CI over seeds")
    axis.legend(loc="lower right")
    figure.tight_layout()
    figure.savefig(os.path.join(args.out, f"pairing_{args.pairing}.png"), dpi=110)


if __name__ == "__main__":
    main()
