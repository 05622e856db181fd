"""Figures and tables from a sweep's TensorBoard logs: the paper's Fig. 1, Fig. 2/6 and a summary.

    python -m dmac_lightning.experiments.plots --runs runs/fig1 --out docs/results \\
        [--omega-runs runs/omega] [--metric eval/return_ratio]

Reads ``<runs>/<run>/seed_<s>/events.*`` (the sweep runner's layout). Writes

* ``learning_curves.png``: per family (COMA, MAAC, QMIX, DOP, FOP), baseline vs +DMAC, mean and
  95% confidence interval over seeds of ``--metric`` against env steps (Fig. 1);
* ``cover_rate.png``: the same for ``train/cover_rate`` (Fig. 5);
* ``summary.md``: final metric, final and mean-over-training cover rate per run (mean ± 95% CI over
  seeds), and for each
  family whether +DMAC beat its baseline (difference of means with its 95% CI, Welch);
* with ``--omega-runs``: ``omega_sweep.png``, final return vs cover rate per omega (Fig. 2/6).
"""

from __future__ import annotations

import argparse
import glob
import math
import os
import re
from dataclasses import dataclass

import numpy as np

from dmac_lightning.algorithms.registry import FAMILIES, algorithm

# Two-sided 95% Student-t quantiles for 1..30 degrees of freedom; 1.96 beyond.
_T95 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042]


def t95(dof: int) -> float:
    return _T95[dof - 1] if 1 <= dof <= len(_T95) else 1.96


def mean_ci(samples: np.ndarray, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Mean and the half-width of its 95% confidence interval (Student t) along ``axis``."""
    samples = np.asarray(samples, dtype=float)
    n = samples.shape[axis]
    mean = samples.mean(axis)
    if n < 2:
        return mean, np.zeros_like(mean)
    return mean, t95(n - 1) * samples.std(axis, ddof=1) / math.sqrt(n)


def read_scalars(run_dir: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Every scalar tag of a run: (env steps, values), merged over its event files (resumes)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    merged: dict[str, dict[int, float]] = {}
    for path in sorted(glob.glob(os.path.join(run_dir, "events.out.tfevents.*"))):
        events = EventAccumulator(path, size_guidance={"scalars": 0})
        events.Reload()
        for tag in events.Tags()["scalars"]:
            merged.setdefault(tag, {}).update({e.step: e.value for e in events.Scalars(tag)})
    return {tag: (np.array(sorted(v)), np.array([v[k] for k in sorted(v)])) for tag, v in merged.items()}


@dataclass
class RunGroup:
    """All seeds of one run label (e.g. ``coma_dmac`` or ``coma_dmac-omega0.1``)."""

    label: str
    seeds: list[dict[str, tuple[np.ndarray, np.ndarray]]]

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
        groups.setdefault(label, RunGroup(label, [])).seeds.append(read_scalars(run_dir))
    return groups


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


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
            axis.fill_between(steps, mean - ci, mean + ci, color=color, alpha=0.2)
        axis.set_title(family.upper())
        axis.set_xlabel("env steps")
        axis.set_ylabel(ylabel)
        axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return families


def summary_table(groups: dict[str, RunGroup], tag: str) -> str:
    """Markdown: final metric and cover rate per run label, then +DMAC vs baseline per family."""
    lines = [
        f"| run | seeds | final {tag} | final train/cover_rate | mean train/cover_rate over training |",
        "|---|---|---|---|---|",
    ]
    for label in sorted(groups):
        group = groups[label]
        cells = []
        for values in (group.finals(tag), group.finals("train/cover_rate"), group.averages("train/cover_rate")):
            if len(values):
                mean, ci = mean_ci(values)
                cells.append(f"{float(mean):.3f} ± {float(ci):.3f}")
            else:
                cells.append("n/a")
        lines.append(f"| {label} | {len(group.seeds)} | {' | '.join(cells)} |")
    lines.insert(0, "Each cell: mean ± half-width of the 95% confidence interval over seeds (Student t). Final: the mean over the last 10% of a run's env steps.\n")
    lines += ["", f"| family | +DMAC minus baseline, final {tag} (95% CI, Welch) | verdict |", "|---|---|---|"]
    for family in FAMILIES:
        if family not in groups or f"{family}_dmac" not in groups:
            continue
        base, dmac = groups[family].finals(tag), groups[f"{family}_dmac"].finals(tag)
        if len(base) < 2 or len(dmac) < 2:
            continue
        difference = dmac.mean() - base.mean()
        variance_base, variance_dmac = base.var(ddof=1) / len(base), dmac.var(ddof=1) / len(dmac)
        standard_error = math.sqrt(variance_base + variance_dmac)
        dof = (variance_base + variance_dmac) ** 2 / max(
            variance_base**2 / (len(base) - 1) + variance_dmac**2 / (len(dmac) - 1), 1e-300
        )
        half = t95(max(1, int(dof))) * standard_error
        if difference - half > 0:
            verdict = "+DMAC better"
        elif difference + half < 0:
            verdict = "baseline better"
        else:
            verdict = "no significant difference"
        lines.append(f"| {family.upper()} | {difference:+.3f} [{difference - half:+.3f}, {difference + half:+.3f}] | {verdict} |")
    return "\n".join(lines) + "\n"


def omega_points(groups: dict[str, RunGroup]) -> list[tuple[float, RunGroup]]:
    """The ``<config>-omega<value>`` runs of an omega sweep, by increasing omega."""
    return sorted(
        ((float(m.group(1)), g) for g in groups.values() if (m := re.search(r"omega([0-9.eE+-]+)$", g.label))),
        key=lambda p: p[0],
    )


def omega_table(groups: dict[str, RunGroup], tag: str) -> str:
    """Markdown: final ``tag`` and mean cover rate per omega (the numbers behind Fig. 2's scatter)."""
    lines = ["", f"| omega | seeds | final {tag} | mean train/cover_rate over training |", "|---|---|---|---|"]
    for omega, group in omega_points(groups):
        metric, cover = mean_ci(group.finals(tag)), mean_ci(group.averages("train/cover_rate"))
        lines.append(
            f"| {omega:g} | {len(group.seeds)} | {float(metric[0]):.3f} ± {float(metric[1]):.3f} | "
            f"{float(cover[0]):.3f} ± {float(cover[1]):.3f} |"
        )
    return "\n".join(lines) + "\n"


def plot_omega_sweep(groups: dict[str, RunGroup], tag: str, path: str, baseline: RunGroup | None = None) -> list[str]:
    """Final ``tag`` against the cover rate (mean over training: the final one saturates on small
    games), one point with 95% CIs per omega (Fig. 2)."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(5, 4))
    drawn = []
    for omega, group in omega_points(groups):
        cover, metric = mean_ci(group.averages("train/cover_rate")), mean_ci(group.finals(tag))
        axis.errorbar(cover[0], metric[0], xerr=cover[1], yerr=metric[1], fmt="o", capsize=3)
        axis.annotate(f"omega={omega:g}", (cover[0], metric[0]), fontsize=7, xytext=(4, 4), textcoords="offset points")
        drawn.append(group.label)
    if baseline is not None:
        cover, metric = mean_ci(baseline.averages("train/cover_rate")), mean_ci(baseline.finals(tag))
        axis.errorbar(cover[0], metric[0], xerr=cover[1], yerr=metric[1], fmt="s", color="black", capsize=3, label=baseline.label)
        axis.legend(fontsize=7)
    axis.set_xlabel("cover rate (mean over training)")
    axis.set_ylabel(f"final {tag}")
    axis.set_title("omega sweep (Fig. 2)")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return drawn


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", required=True, help="a sweep directory: <runs>/<run>/seed_<s>/")
    parser.add_argument("--out", required=True)
    parser.add_argument("--metric", default="eval/return_ratio")
    parser.add_argument("--omega-runs", default=None, help="a sweep directory of <config>-omega<value> runs")
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    groups = load(args.runs)
    if not groups:
        raise SystemExit(f"no runs under {args.runs}")
    plot_families(groups, args.metric, os.path.join(args.out, "learning_curves.png"), args.metric)
    plot_families(groups, "train/cover_rate", os.path.join(args.out, "cover_rate.png"), "train/cover_rate")
    omega_groups = load(args.omega_runs) if args.omega_runs else {}
    with open(os.path.join(args.out, "summary.md"), "w") as f:
        f.write(summary_table(groups, args.metric) + (omega_table(omega_groups, args.metric) if omega_groups else ""))
    if omega_groups:
        plot_omega_sweep(omega_groups, args.metric, os.path.join(args.out, "omega_sweep.png"), groups.get("coma"))
    print(f"wrote {args.out}/learning_curves.png, cover_rate.png, summary.md" + (", omega_sweep.png" if args.omega_runs else ""))


if __name__ == "__main__":
    main()
