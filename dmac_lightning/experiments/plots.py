"""Figures and tables from a sweep's TensorBoard logs: the paper's Fig. 1, Fig. 2/6 and a summary.

    python -m dmac_lightning.experiments.plots --runs runs/fig1 --out docs/results \\
        [--omega-runs runs/omega] [--metric eval/return_ratio] [--final-fraction 0.1]

Reads ``<runs>/<run>/seed_<s>/events.*`` (the sweep runner's layout). Writes

* ``learning_curves.png``: per family (COMA, MAAC, QMIX, DOP, FOP), baseline vs +DMAC, mean and
  95% confidence interval over seeds of ``--metric`` against env steps (Fig. 1);
* ``cover_rate.png``: the same for ``train/cover_rate`` (Fig. 5);
* ``summary.md``: final metric (a run's mean over the last ``--final-fraction`` of its env steps;
  mean ± 95% Student-t CI over seeds, and the interquartile mean with a stratified-bootstrap CI), final
  and mean-over-training cover rate per run, and for each family whether +DMAC beat its baseline
  (difference of means with its 95% CI and Welch's test, and the probability of improvement with its CI);
* ``performance_profile.png``: each run's score distribution over its seeds' final metric, with bands;
* ``health.md``: per seed, the critic's value of the actions taken (peak, final), the evaluation return,
  episode lengths and env steps reached; ``--max-return`` and ``--episode-limit`` flag overestimation and
  stalls at the time limit (a baseline that wins nothing where a peer's would is a defect, not a result);

The IQM, its interval, the probability of improvement and the performance profiles are rliable's
(Agarwal et al., 2021); Welch's test is kept beside them (the results' tables cite it).
* ``marl_eval.json``: the evaluations in marl-eval's raw-data layout;
* with ``--omega-runs``: ``omega_sweep.png``, final return vs cover rate per omega (Fig. 2/6).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import glob
import json
import math
import os
import re
import warnings
from dataclasses import dataclass, field

import numpy as np
from scipy import stats

from dmac_lightning.algorithms.registry import FAMILIES, algorithm

# Metrics that are fractions: their mean cannot leave [0, 1], so neither does its drawn interval
# (with 2 seeds the t quantile is 12.7 and the raw band spans several times the metric's range).
FRACTION_TAGS = ("eval/win_rate", "train/cover_rate")


def t95(dof: float) -> float:
    """The two-sided 95% Student-t quantile."""
    return float(stats.t.ppf(0.975, dof))


def mean_ci(samples: np.ndarray, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Mean and the half-width of its 95% confidence interval (Student t) along ``axis``."""
    samples = np.asarray(samples, dtype=float)
    n = samples.shape[axis]
    mean = samples.mean(axis)
    if n < 2:
        return mean, np.zeros_like(mean)
    return mean, t95(n - 1) * samples.std(axis, ddof=1) / math.sqrt(n)


def _rliable():
    """rliable (Agarwal et al., 2021), the field's library for IQM, stratified bootstrap CIs, probability
    of improvement and performance profiles; a dependency of the package."""
    try:
        from rliable import library, metrics
    except ImportError as error:  # pragma: no cover - installed with the package
        raise ImportError("dmac-plots' statistics need rliable: pip install 'rliable>=1.2'  (or: pip install -e .)") from error
    return library, metrics


@contextlib.contextmanager
def _numpy_seeded(seed: int):
    """NumPy's global stream seeded for the block, then put back: rliable's stratified bootstrap draws its
    resamples from ``np.random`` whatever ``random_state`` it is given, so this makes an interval repeat."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        with warnings.catch_warnings():  # arch deprecates the random_state rliable hands it; nothing to act on here
            warnings.filterwarnings("ignore", message="random_state is deprecated", category=FutureWarning)
            yield np.random.RandomState(seed)
    finally:
        np.random.set_state(state)


def iqm_interval(samples: np.ndarray, reps: int = 5000, seed: int = 0) -> tuple[float, float, float]:
    """The interquartile mean over runs (a quarter cut at each end; robust to an outlying seed) and its
    95% stratified-bootstrap interval, both by rliable: ``(iqm, low, high)``. One run: no interval."""
    library, metrics = _rliable()
    scores = np.asarray(samples, dtype=float).reshape(-1, 1)  # runs x tasks (one task)
    point = float(metrics.aggregate_iqm(scores))
    if len(scores) < 2:
        return point, point, point
    with _numpy_seeded(seed) as generator:
        points, intervals = library.get_interval_estimates(
            {"runs": scores}, lambda x: np.array([metrics.aggregate_iqm(x)]), reps=reps, random_state=generator
        )
    return float(points["runs"][0]), float(intervals["runs"][0, 0]), float(intervals["runs"][1, 0])


def improvement_probability(variant: np.ndarray, baseline: np.ndarray, reps: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """P(a run of ``variant`` scores above a run of ``baseline``), ties counting half (the Mann-Whitney
    statistic over all pairs), with its 95% stratified-bootstrap interval, by rliable: ``(p, low, high)``."""
    library, metrics = _rliable()
    x, y = (np.asarray(v, dtype=float).reshape(-1, 1) for v in (variant, baseline))
    point = float(metrics.probability_of_improvement(x, y))
    if len(x) < 2 or len(y) < 2:
        return point, point, point
    with _numpy_seeded(seed) as generator:
        points, intervals = library.get_interval_estimates(
            {"pair": [x, y]}, lambda a, b: np.array([metrics.probability_of_improvement(a, b)]), reps=reps, random_state=generator
        )
    return float(points["pair"][0]), float(intervals["pair"][0, 0]), float(intervals["pair"][1, 0])


def performance_profiles(finals: dict[str, np.ndarray], thresholds: np.ndarray, reps: int = 2000, seed: int = 0) -> tuple[dict, dict]:
    """Score distributions (the fraction of runs whose final score exceeds each threshold) with 95%
    bootstrap bands, by rliable: ``(profiles, bands)`` keyed like ``finals``."""
    library, _ = _rliable()
    with _numpy_seeded(seed):
        return library.create_performance_profile({k: np.asarray(v, dtype=float).reshape(-1, 1) for k, v in finals.items()}, thresholds, reps=reps)


def welch(base: np.ndarray, other: np.ndarray) -> tuple[float, float, float]:
    """``other - base``: the difference of means, the half-width of its 95% interval (Welch-
    Satterthwaite degrees of freedom) and Welch's two-sided p-value."""
    base, other = np.asarray(base, dtype=float), np.asarray(other, dtype=float)
    variance_base, variance_other = base.var(ddof=1) / len(base), other.var(ddof=1) / len(other)
    dof = (variance_base + variance_other) ** 2 / max(
        variance_base**2 / (len(base) - 1) + variance_other**2 / (len(other) - 1), 1e-300
    )
    difference = other.mean() - base.mean()
    half = t95(dof) * math.sqrt(variance_base + variance_other)
    p_value = float(stats.ttest_ind(other, base, equal_var=False).pvalue) if variance_base + variance_other > 0 else float(difference == 0)
    return float(difference), float(half), p_value


def read_scalars(run_dir: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Every scalar tag of a run: (env steps, values), merged over its TensorBoard event files and CSV
    logs (``metrics.csv`` of ``--trainer.logger CSVLogger``; several after resumes)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    merged: dict[str, dict[int, float]] = {}
    for path in sorted(glob.glob(os.path.join(run_dir, "events.out.tfevents.*"))):
        events = EventAccumulator(path, size_guidance={"scalars": 0})
        events.Reload()
        for tag in events.Tags()["scalars"]:
            merged.setdefault(tag, {}).update({e.step: e.value for e in events.Scalars(tag)})
    for path in sorted(glob.glob(os.path.join(run_dir, "**", "metrics.csv"), recursive=True)):
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                step = int(float(row.pop("step")))
                for tag, value in row.items():
                    if value not in ("", None):
                        merged.setdefault(tag, {})[step] = float(value)
    return {tag: (np.array(sorted(v)), np.array([v[k] for k in sorted(v)])) for tag, v in merged.items()}


@dataclass
class RunGroup:
    """All seeds of one run label (e.g. ``coma_dmac`` or ``coma_dmac-omega0.1``)."""

    label: str
    seeds: list[dict[str, tuple[np.ndarray, np.ndarray]]]
    seed_names: list[str] = field(default_factory=list)  # each seed's folder (seed_<s>), where read from disk

    def curve(self, tag: str, points: int = 100) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """Seeds interpolated onto a common env-step grid: (steps, mean, ci)."""
        series = [s[tag] for s in self.seeds if tag in s and len(s[tag][0])]
        if not series:
            return None
        end = min(x[-1] for x, _ in series)
        grid = np.linspace(0, end, points)
        values = np.stack([np.interp(grid, x, y) for x, y in series])
        mean, ci = mean_ci(values)
        return grid, mean, ci

    def averages(self, tag: str, points: int = 200) -> np.ndarray:
        """Per seed: the tag's mean over training (area under its curve / env steps). For the cover
        rate, which saturates on small games, this tells how fast a run explored."""
        averages = []
        for seed in self.seeds:
            if tag in seed and len(seed[tag][0]):
                x, y = seed[tag]
                averages.append(np.interp(np.linspace(0, x[-1], points), x, y).mean())
        return np.array(averages)

    def finals(self, tag: str, last_fraction: float = 0.1) -> np.ndarray:
        """Per seed: the mean of the tag over the last ``last_fraction`` of its env steps."""
        finals = []
        for seed in self.seeds:
            if tag not in seed:
                continue
            x, y = seed[tag]
            finals.append(y[x >= x[-1] * (1 - last_fraction)].mean())
        return np.array(finals)


def load(runs: str) -> dict[str, RunGroup]:
    groups: dict[str, RunGroup] = {}
    for run_dir in sorted(glob.glob(os.path.join(runs, "*", "seed_*"))):
        label = os.path.basename(os.path.dirname(run_dir))
        group = groups.setdefault(label, RunGroup(label, []))
        group.seeds.append(read_scalars(run_dir))
        group.seed_names.append(os.path.basename(run_dir))
    return groups


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def confidence_band(tag: str, mean: np.ndarray, ci: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The 95% interval to draw around ``mean``: cut to [0, 1] for a fraction, otherwise as computed."""
    low, high = mean - ci, mean + ci
    if tag in FRACTION_TAGS:
        low, high = np.clip(low, 0.0, 1.0), np.clip(high, 0.0, 1.0)
    return low, high


def env_steps_label(steps: float, _position: object = None) -> str:
    """An env-step tick as a researcher writes it: 0, 250k, 1M, 1.5M (full numbers run together)."""
    if abs(steps) >= 1_000_000:
        return f"{steps / 1_000_000:g}M"
    if abs(steps) >= 1_000:
        return f"{steps / 1_000:g}k"
    return f"{steps:g}"


def plot_families(groups: dict[str, RunGroup], tag: str, path: str, ylabel: str) -> list[str]:
    """One panel per family present, baseline and +DMAC. Returns the families drawn."""
    plt = _pyplot()
    families = [f for f in FAMILIES if f in groups or f"{f}_dmac" in groups]
    figure, axes = plt.subplots(1, max(1, len(families)), figsize=(3.6 * max(1, len(families)), 3.2), squeeze=False)
    for axis, family in zip(axes[0], families):
        for label, color in ((family, "tab:blue"), (f"{family}_dmac", "tab:red")):
            curve = groups[label].curve(tag) if label in groups else None
            if curve is None:
                continue
            steps, mean, ci = curve
            axis.plot(steps, mean, color=color, label=f"{algorithm(label).title} ({len(groups[label].seeds)} seeds)")
            axis.fill_between(steps, *confidence_band(tag, mean, ci), color=color, alpha=0.2)
        axis.set_title(family.upper())
        axis.xaxis.set_major_formatter(env_steps_label)
        axis.set_xlabel("env steps")
        axis.set_ylabel(ylabel)
        axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return families


def plot_performance_profiles(groups: dict[str, RunGroup], tag: str, path: str, final_fraction: float = 0.1) -> list[str]:
    """Performance profiles (Agarwal et al., 2021) of the runs' final scores: for each run label, the
    fraction of its runs whose final ``tag`` exceeds each threshold, with a 95% bootstrap band (rliable).
    Returns the labels drawn (those with at least 2 seeds)."""
    finals = {label: group.finals(tag, final_fraction) for label, group in sorted(groups.items())}
    finals = {label: values for label, values in finals.items() if len(values) >= 2}
    if not finals:
        return []
    everything = np.concatenate(list(finals.values()))
    low, high = (0.0, 1.0) if tag in FRACTION_TAGS or tag.endswith("return_ratio") else (float(everything.min()), float(everything.max()))
    thresholds = np.linspace(low, high, 101)
    profiles, bands = performance_profiles(finals, thresholds)
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6, 4))
    colours = plt.get_cmap("tab10")
    for index, label in enumerate(finals):
        colour = colours(index % 10)
        axis.plot(thresholds, profiles[label], color=colour, label=f"{label} ({len(finals[label])} seeds)")
        axis.fill_between(thresholds, bands[label][0], bands[label][1], color=colour, alpha=0.15)
    axis.set_xlabel(f"final {tag} (threshold)")
    axis.set_ylabel("fraction of runs above the threshold")
    axis.set_ylim(-0.02, 1.02)
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return list(finals)


def summary_table(groups: dict[str, RunGroup], tag: str, final_fraction: float = 0.1) -> str:
    """Markdown: final metric and cover rate per run label, then +DMAC vs baseline per family. A run's
    final value is its mean over the last ``final_fraction`` of its env steps."""
    lines = [
        f"| run | seeds | final {tag} | IQM final {tag} [95% stratified-bootstrap CI] | final train/cover_rate | mean train/cover_rate over training |",
        "|---|---|---|---|---|---|",
    ]
    for label in sorted(groups):
        group = groups[label]
        cells = []
        for values in (
            group.finals(tag, final_fraction),
            group.finals("train/cover_rate", final_fraction),
            group.averages("train/cover_rate"),
        ):
            if len(values) >= 2:
                mean, ci = mean_ci(values)
                cells.append(f"{float(mean):.3f} ± {float(ci):.3f}")
            elif len(values):
                cells.append(f"{float(values[0]):.3f} (one seed: no interval)")
            else:
                cells.append("n/a")
        finals = group.finals(tag, final_fraction)
        if len(finals) >= 2:
            point, low, high = iqm_interval(finals)
            cells.insert(1, f"{point:.3f} [{low:.3f}, {high:.3f}]")
        else:
            cells.insert(1, "n/a")
        lines.append(f"| {label} | {len(group.seeds)} | {' | '.join(cells)} |")
    lines.insert(
        0,
        "Each cell: mean ± half-width of the 95% confidence interval over seeds (Student t), and the interquartile "
        "mean with a 95% stratified-bootstrap interval (rliable). Final: the mean over the last "
        f"{final_fraction * 100:g}% of a run's env steps.\n",
    )
    lines += [
        "",
        f"| family | +DMAC minus baseline, final {tag} (95% CI, Welch) | Welch p | P(+DMAC > baseline) [95% CI] (rliable) | verdict (Welch) |",
        "|---|---|---|---|---|",
    ]
    for family in FAMILIES:
        if family not in groups or f"{family}_dmac" not in groups:
            continue
        base, dmac = groups[family].finals(tag, final_fraction), groups[f"{family}_dmac"].finals(tag, final_fraction)
        if len(base) < 2 or len(dmac) < 2:
            lines.append(f"| {family.upper()} | {float(dmac.mean() - base.mean()):+.3f} (fewer than 2 seeds a side: no test) | n/a | n/a | n/a |")
            continue
        difference, half, p_value = welch(base, dmac)
        improvement, low, high = improvement_probability(dmac, base)
        if difference - half > 0:
            verdict = "+DMAC better"
        elif difference + half < 0:
            verdict = "baseline better"
        else:
            verdict = "no significant difference"
        lines.append(
            f"| {family.upper()} | {difference:+.3f} [{difference - half:+.3f}, {difference + half:+.3f}] | {p_value:.3f} "
            f"| {improvement:.2f} [{low:.2f}, {high:.2f}] | {verdict} |"
        )
    return "\n".join(lines) + "\n"


def marl_eval_json(groups: dict[str, RunGroup], env: str, task: str) -> dict:
    """The runs in marl-eval's raw-data layout (``env -> task -> algorithm -> run_<seed> -> step_<i>``),
    each evaluation a step with its ``step_count`` (env steps) and metrics, ``absolute_metrics`` the
    last evaluation. We log each evaluation's mean, so every metric list holds that one value.

    ``return``, ``return_ratio`` and ``win_rate`` are the algorithm's published protocol (``eval/*``); runs that
    evaluated under both protocols (issue 30) add the same with ``_greedy`` and ``_sampled`` appended, so a
    comparison can be made at one protocol for both sides (``dmac-table --protocol``)."""
    metrics = {
        f"{prefix}/{name}": name + suffix
        for prefix, suffix in (("eval", ""), ("eval_greedy", "_greedy"), ("eval_sampled", "_sampled"))
        for name in ("return", "return_ratio", "win_rate")
    }
    tree: dict = {}
    for label, group in sorted(groups.items()):
        algorithm_runs = tree.setdefault(env, {}).setdefault(task, {}).setdefault(label, {})
        for index, seed in enumerate(group.seeds):
            present = {name: seed[tag] for tag, name in metrics.items() if tag in seed}
            if not present:
                continue
            steps = sorted(set().union(*(x.tolist() for x, _ in present.values())))
            run: dict = {}
            for i, step in enumerate(steps):
                entry: dict = {"step_count": int(step)}
                for name, (x, y) in present.items():
                    if step in x:
                        entry[name] = [float(y[list(x).index(step)])]
                run[f"step_{i}"] = entry
            run["absolute_metrics"] = {name: [float(y[-1])] for name, (_, y) in present.items()}
            algorithm_runs[f"run_{index}"] = run
    return tree


def omega_points(groups: dict[str, RunGroup]) -> list[tuple[float, RunGroup]]:
    """The ``<config>-omega<value>`` runs of an omega sweep, by increasing omega."""
    return sorted(
        ((float(m.group(1)), g) for g in groups.values() if (m := re.search(r"omega([0-9.eE+-]+)$", g.label))),
        key=lambda p: p[0],
    )


def omega_table(groups: dict[str, RunGroup], tag: str, final_fraction: float = 0.1) -> str:
    """Markdown: final ``tag`` and mean cover rate per omega (the numbers behind Fig. 2's scatter)."""
    lines = ["", f"| omega | seeds | final {tag} | mean train/cover_rate over training |", "|---|---|---|---|"]
    for omega, group in omega_points(groups):
        metric, cover = mean_ci(group.finals(tag, final_fraction)), mean_ci(group.averages("train/cover_rate"))
        lines.append(
            f"| {omega:g} | {len(group.seeds)} | {float(metric[0]):.3f} ± {float(metric[1]):.3f} | "
            f"{float(cover[0]):.3f} ± {float(cover[1]):.3f} |"
        )
    return "\n".join(lines) + "\n"


def plot_omega_sweep(
    groups: dict[str, RunGroup], tag: str, path: str, baseline: RunGroup | None = None, final_fraction: float = 0.1
) -> list[str]:
    """Final ``tag`` against the cover rate (mean over training: the final one saturates on small
    games), one point with 95% CIs per omega (Fig. 2)."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(5, 4))
    drawn = []
    for omega, group in omega_points(groups):
        cover, metric = mean_ci(group.averages("train/cover_rate")), mean_ci(group.finals(tag, final_fraction))
        axis.errorbar(cover[0], metric[0], xerr=cover[1], yerr=metric[1], fmt="o", capsize=3)
        axis.annotate(f"omega={omega:g}", (cover[0], metric[0]), fontsize=7, xytext=(4, 4), textcoords="offset points")
        drawn.append(group.label)
    if baseline is not None:
        cover, metric = mean_ci(baseline.averages("train/cover_rate")), mean_ci(baseline.finals(tag, final_fraction))
        axis.errorbar(cover[0], metric[0], xerr=cover[1], yerr=metric[1], fmt="s", color="black", capsize=3, label=baseline.label)
        axis.legend(fontsize=7)
    axis.set_xlabel("cover rate (mean over training)")
    axis.set_ylabel(f"final {tag}")
    axis.set_title("omega sweep (Fig. 2)")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return drawn


# The critic's value of the actions taken, by the name each family logs it under (QMIX, COMA, ...: q_taken;
# DOP and DOP+DMAC log their targets).
CRITIC_VALUE_TAGS = ("critic/q_taken", "critic/target")


def health_table(
    groups: dict[str, RunGroup], final_fraction: float = 0.1, max_return: float | None = None, episode_limit: int | None = None
) -> str:
    """Markdown: per run and seed, what tells a broken run from a weak one (a baseline that wins nothing
    where a peer's would is a defect to find): the critic's value of the actions taken against what an
    episode can pay (``max_return``), the episode lengths against the time limit (``episode_limit``), and
    how far the run got. With either bound given, a seed that crosses it is flagged."""
    lines = [
        "Per seed: the critic's value of the actions taken (its mean over a batch; peak over training, and final), the evaluation return "
        "(best, final), the mean episode length (over training, and the final evaluation's), the env steps "
        f"reached. Final: the mean over the last {final_fraction * 100:g}% of a run's env steps."
        + (f" Flags: a critic peak above {max_return:g}, what an episode can pay (overestimation)" if max_return is not None else "")
        + (f"{';' if max_return is not None else ' Flags:'} a final evaluation's episodes within 5% of the "
           f"{episode_limit}-step limit (a stall at the time limit)" if episode_limit is not None else "")
        + ("." if max_return is not None or episode_limit is not None else ""),
        "",
        "| run | seed | env steps | critic value: peak, final | eval return: best, final | episode length: training, final eval | flags |",
        "|---|---|---|---|---|---|---|",
    ]

    def final(series: tuple[np.ndarray, np.ndarray]) -> float:
        x, y = series
        return float(y[x >= x[-1] * (1 - final_fraction)].mean())

    for label in sorted(groups):
        group = groups[label]
        for index, seed in enumerate(group.seeds):
            name = group.seed_names[index] if index < len(group.seed_names) else f"#{index}"
            reached = max((int(x[-1]) for x, _ in seed.values() if len(x)), default=0)
            flags, cells = [], []
            value_tag = next((tag for tag in CRITIC_VALUE_TAGS if tag in seed and len(seed[tag][0])), None)
            if value_tag is None:
                cells.append("n/a")
            else:
                peak = float(seed[value_tag][1].max())
                cells.append(f"{peak:.2f}, {final(seed[value_tag]):.2f} ({value_tag})")
                if max_return is not None and peak > max_return:
                    flags.append(f"critic peak {peak:.2f} > {max_return:g}")
            cells.append(f"{float(seed['eval/return'][1].max()):.2f}, {final(seed['eval/return']):.2f}" if "eval/return" in seed else "n/a")
            training = seed.get("train/episode_length")
            evaluation = seed.get("eval/episode_length")
            cells.append(
                (f"{float(training[1].mean()):.1f}" if training is not None else "n/a")
                + ", " + (f"{final(evaluation):.1f}" if evaluation is not None else "n/a")
            )
            if episode_limit is not None and evaluation is not None and final(evaluation) >= 0.95 * episode_limit:
                flags.append(f"final eval episodes {final(evaluation):.1f} steps of {episode_limit}")
            lines.append(f"| {label} | {name} | {reached} | {' | '.join(cells)} | {'; '.join(flags) or '-'} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", required=True, help="a sweep directory: <runs>/<run>/seed_<s>/")
    parser.add_argument("--out", required=True)
    parser.add_argument("--metric", default="eval/return_ratio")
    parser.add_argument("--omega-runs", default=None, help="a sweep directory of <config>-omega<value> runs")
    parser.add_argument("--env-name", default="stochastic_game", help="the env's name in marl_eval.json")
    parser.add_argument("--task-name", default="default", help="the task's (map's) name in marl_eval.json")
    parser.add_argument(
        "--final-fraction",
        type=float,
        default=0.1,
        help="a run's final value is its mean over this last fraction of its env steps, in (0, 1] "
        "(default 0.1; with evaluations every 25k, 0.34 of a 300k run holds its last 5 evaluations)",
    )
    parser.add_argument("--max-return", type=float, default=None,
                        help="what an episode can pay (SMAX/SMAC: 20): health.md flags a critic whose values rise above it")
    parser.add_argument("--episode-limit", type=int, default=None,
                        help="the env's time limit (SMAX 3m: 100): health.md flags runs whose final evaluations stall at it")
    args = parser.parse_args(argv)
    if not 0 < args.final_fraction <= 1:
        parser.error(f"--final-fraction must be in (0, 1], got {args.final_fraction}")
    os.makedirs(args.out, exist_ok=True)
    groups = load(args.runs)
    if not groups:
        raise SystemExit(f"no runs under {args.runs}")
    plot_families(groups, args.metric, os.path.join(args.out, "learning_curves.png"), args.metric)
    has_cover = any(len(group.finals("train/cover_rate")) for group in groups.values())
    if has_cover:  # the stochastic game's; other envs have none
        plot_families(groups, "train/cover_rate", os.path.join(args.out, "cover_rate.png"), "train/cover_rate")
    profiled = plot_performance_profiles(groups, args.metric, os.path.join(args.out, "performance_profile.png"), args.final_fraction)
    omega_groups = load(args.omega_runs) if args.omega_runs else {}
    with open(os.path.join(args.out, "summary.md"), "w") as f:
        f.write(
            summary_table(groups, args.metric, args.final_fraction)
            + (omega_table(omega_groups, args.metric, args.final_fraction) if omega_groups else "")
        )
    with open(os.path.join(args.out, "health.md"), "w") as f:
        f.write(health_table(groups, args.final_fraction, args.max_return, args.episode_limit))
    with open(os.path.join(args.out, "marl_eval.json"), "w") as f:
        json.dump(marl_eval_json(groups, args.env_name, args.task_name), f, indent=1)
    if omega_groups:
        plot_omega_sweep(
            omega_groups, args.metric, os.path.join(args.out, "omega_sweep.png"), groups.get("coma"), args.final_fraction
        )
    print(
        f"wrote {args.out}/learning_curves.png, " + ("cover_rate.png, " if has_cover else "")
        + ("performance_profile.png, " if profiled else "") + "summary.md, health.md, marl_eval.json"
        + (", omega_sweep.png" if args.omega_runs else "")
    )


if __name__ == "__main__":
    main()
