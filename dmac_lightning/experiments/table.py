"""The paper's main comparison as one table: each family's +DMAC variant against its baseline on each
task (Su & Lu, Fig. 3), from the runs' marl-eval exports (``marl_eval.json``, which ``dmac-plots`` writes).

    dmac-table --task "reduced game=docs/results/as_published/reduced_game/marl_eval.json" \\
               --task "SMAX 3m=docs/results/as_published/smax_3m_1m/marl_eval.json@0.101" \\
               --task "SMAX 3m=docs/results/as_published/smax_3m_300k/marl_eval.json@0.34" \\
               --out docs/results

``--task NAME=EXPORT[@FRACTION][#FAMILY,...]``: a task's column, from one export (a task named twice takes
families from each export: e.g. QMIX at 1M from one sweep, DOP at 300k from another; a family in two
exports of one task is an error); a run's final score is its mean over the evaluations in the last
``FRACTION`` of its env steps (default 0.1); ``#FAMILY,...`` takes only those families from the export
(e.g. ``#coma,maac,qmix,dop`` to leave out a family whose runs a rerun in another export supersedes). The
metric is the export's ``return_ratio`` where it has one (the stochastic game), else ``win_rate``.

``--protocol`` picks the evaluations compared: ``published`` (default) each algorithm's own (greedy for QMIX
and FOP, sampled for the others and every +DMAC variant: App. C.3), so a QMIX cell compares greedy QMIX
with sampled QMIX+DMAC; ``greedy`` or ``sampled`` both sides under that one protocol, from the
``*_greedy`` / ``*_sampled`` metrics of runs that evaluated under both (issue 30; older exports lack them,
and the table says which).

Each cell: +DMAC minus baseline with its 95% interval and Welch's p, the probability of improvement
P(+DMAC > baseline) with its 95% stratified-bootstrap interval (rliable), the verdict (Welch at 5%), the
seeds and budget of each side, and the evaluation protocol of each side. Writes ``paper_table.md`` and ``paper_table.png``
(the probability of improvement per cell, with its interval).
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass

import numpy as np

from dmac_lightning.algorithms.registry import FAMILIES, algorithm
from dmac_lightning.experiments.plots import _pyplot, env_steps_label, improvement_probability, welch


@dataclass(frozen=True)
class Runs:
    """One algorithm's runs on one task: each run's final score and the env steps it reached."""

    finals: np.ndarray
    reached: np.ndarray

    @property
    def budget(self) -> int:
        """The env steps every run reached, to the thousand (a run stops at the first collect past its budget)."""
        return int(round(self.reached.min() / 1000) * 1000)


PROTOCOLS = ("published", "greedy", "sampled")


def read_export(path: str, fraction: float = 0.1, protocol: str = "published") -> tuple[str, dict[str, Runs]]:
    """``(metric, {algorithm: Runs})`` from a marl-eval export of one env and task, under ``protocol``."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    if not 0 < fraction <= 1:
        raise ValueError(f"{path}: the final window must be in (0, 1], got {fraction}")
    with open(path) as f:
        export = json.load(f)
    tasks = [(env, task) for env in export for task in export[env]]
    if len(tasks) != 1:
        raise ValueError(f"{path}: expected one env and task, found {tasks}")
    env, task = tasks[0]
    algorithms = export[env][task]
    first_step = next(iter(next(iter(algorithms.values())).values()))["step_0"]
    metric = "return_ratio" if "return_ratio" in first_step else "win_rate"
    if protocol != "published":
        metric = f"{metric}_{protocol}"
    result = {}
    for name, runs in algorithms.items():
        finals, reached = [], []
        for run, evaluations in runs.items():
            if not any(metric in e for key, e in evaluations.items() if key.startswith("step_")):
                raise ValueError(
                    f"{path}: {name} {run} has no {metric}: its runs did not log both protocols (made before issue 30, "
                    f"or with evaluation.both_protocols false); use --protocol published for this export"
                )
            points = sorted(
                (e["step_count"], e[metric][0]) for key, e in evaluations.items() if key.startswith("step_") and metric in e
            )
            steps, values = (np.array(column, dtype=float) for column in zip(*points))
            finals.append(values[steps >= (1 - fraction) * steps.max()].mean())
            reached.append(steps.max())
        result[name] = Runs(np.array(finals), np.array(reached))
    return metric, result


def published_protocol(name: str) -> str:
    """The evaluation protocol an algorithm is published with (App. C.3)."""
    return "greedy" if algorithm(name).module.evaluates_greedily else "sampled"


@dataclass(frozen=True)
class Cell:
    family: str
    task: str
    metric: str
    baseline: Runs
    variant: Runs
    protocol: str = "published"

    @property
    def protocols(self) -> str:
        """Baseline v +DMAC: how each side's evaluations played."""
        if self.protocol != "published":
            return f"{self.protocol} v {self.protocol}"
        return f"{published_protocol(self.family)} v {published_protocol(self.family + '_dmac')}"

    def statistics(self) -> dict[str, float]:
        difference, half, p = welch(self.baseline.finals, self.variant.finals)
        improvement, low, high = improvement_probability(self.variant.finals, self.baseline.finals)
        return {"difference": difference, "half": half, "p": p, "improvement": improvement, "low": low, "high": high}

    def verdict(self, stats: dict[str, float]) -> str:
        if len(self.baseline.finals) < 2 or len(self.variant.finals) < 2:
            return "too few seeds"
        if stats["difference"] - stats["half"] > 0:
            return "+DMAC better"
        if stats["difference"] + stats["half"] < 0:
            return "baseline better"
        return "no significant difference"

    def text(self) -> str:
        stats = self.statistics()
        n_base, n_variant = len(self.baseline.finals), len(self.variant.finals)
        budget = env_steps_label(min(self.baseline.budget, self.variant.budget))
        protocols = self.protocols
        if n_base < 2 or n_variant < 2:
            return f"{stats['difference']:+.3f} ({n_variant} v {n_base} seeds: no interval), {budget}, {protocols}"
        return (
            f"{stats['difference']:+.3f} [{stats['difference'] - stats['half']:+.3f}, {stats['difference'] + stats['half']:+.3f}] "
            f"p {stats['p']:.2g}; P(+DMAC > base) {stats['improvement']:.2f} [{stats['low']:.2f}, {stats['high']:.2f}]; "
            f"**{self.verdict(stats)}**; {n_variant} v {n_base} seeds, {budget}, {protocols}"
        )


def cells(tasks: list[Task], protocol: str = "published") -> tuple[list[str], dict[tuple[str, str], Cell]]:
    """Task names in order, and every (family, task) pair with both a baseline and a +DMAC variant."""
    names: list[str] = []
    found: dict[tuple[str, str], Cell] = {}
    for task, path, fraction, families in tasks:
        if task not in names:
            names.append(task)
        metric, runs = read_export(path, fraction, protocol)
        for family in families or FAMILIES:
            if family in runs and f"{family}_dmac" in runs:
                if (family, task) in found:
                    raise ValueError(f"task {task!r}: {family.upper()} is in two exports (give it once)")
                found[family, task] = Cell(family, task, metric, runs[family], runs[f"{family}_dmac"], protocol)
    return names, found


def markdown(names: list[str], found: dict[tuple[str, str], Cell], protocol: str = "published") -> str:
    protocols = "as published" if protocol == "published" else f"both sides {protocol}"
    lines = [
        "Each cell: +DMAC minus baseline in the final score (return as a fraction of the exact optimum on the games, win "
        "rate on SMAX) with its 95% interval and Welch's p; the probability that a +DMAC run beats a baseline run, with "
        "its 95% stratified-bootstrap interval (rliable); the verdict (Welch, 5%); the seeds (+DMAC v baseline) and the "
        f"budget; the evaluation protocols (baseline v +DMAC, {protocols}). \"-\": not run.",
        "",
        "| family | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for family in FAMILIES:
        if not any((family, task) in found for task in names):
            continue
        row = [found[family, task].text() if (family, task) in found else "-" for task in names]
        lines.append(f"| {family.upper()} | " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def figure(names: list[str], found: dict[tuple[str, str], Cell], path: str) -> None:
    """Probability of improvement per (family, task), with its interval; 0.5 is no difference."""
    plt = _pyplot()
    families = [f for f in FAMILIES if any((f, task) in found for task in names)]
    fig, axes = plt.subplots(1, len(names), figsize=(2.6 * len(names) + 1, 0.5 * len(families) + 1.4), sharey=True, squeeze=False)
    for axis, task in zip(axes[0], names):
        for row, family in enumerate(families):
            if (family, task) not in found:
                continue
            stats = found[family, task].statistics()
            axis.errorbar(stats["improvement"], row, xerr=[[stats["improvement"] - stats["low"]], [stats["high"] - stats["improvement"]]],
                          fmt="o", color="tab:red" if stats["low"] > 0.5 else ("tab:blue" if stats["high"] < 0.5 else "black"), capsize=3)
        axis.axvline(0.5, color="grey", linestyle="--", linewidth=1)
        axis.set_xlim(-0.05, 1.05)
        axis.set_title(task, fontsize=9)
        axis.set_xlabel("P(+DMAC > baseline)")
    axes[0][0].set_yticks(range(len(families)), [f.upper() for f in families])
    axes[0][0].set_ylim(-0.5, len(families) - 0.5)
    fig.suptitle("P(+DMAC run beats baseline run), 95% CI (rliable); red: interval above 0.5, blue: below", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# One column's share of the table: (task name, export path, final window, the families taken: () for all).
Task = tuple[str, str, float, tuple[str, ...]]


def parse_task(spec: str) -> Task:
    name, separator, rest = spec.partition("=")
    if not separator or not name or not rest:
        raise ValueError(f"--task must look like NAME=EXPORT[@FRACTION][#FAMILY,...], got {spec!r}")
    rest, _, selected = rest.partition("#")
    path, _, fraction = rest.partition("@")
    families = tuple(family.strip().lower() for family in selected.split(",") if family.strip())
    unknown = [family for family in families if family not in FAMILIES]
    if unknown:
        raise ValueError(f"--task {spec!r}: unknown families {unknown}; the families are {', '.join(FAMILIES)}")
    return name, path, float(fraction) if fraction else 0.1, families


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", action="append", required=True, metavar="NAME=EXPORT[@FRACTION][#FAMILY,...]")
    parser.add_argument("--out", required=True)
    parser.add_argument(
        "--protocol", choices=PROTOCOLS, default="published",
        help="the evaluations compared: each algorithm's published protocol (default), or greedy / sampled on both sides",
    )
    args = parser.parse_args(argv)
    try:
        names, found = cells([parse_task(spec) for spec in args.task], args.protocol)
    except (ValueError, OSError) as error:
        parser.error(str(error))
    if not found:
        parser.error("no family has both its baseline and its +DMAC variant in these exports")
    os.makedirs(args.out, exist_ok=True)
    text = markdown(names, found, args.protocol)
    with open(os.path.join(args.out, "paper_table.md"), "w") as f:
        f.write(text)
    figure(names, found, os.path.join(args.out, "paper_table.png"))
    print(text)
    print(f"wrote {args.out}/paper_table.md, paper_table.png")


if __name__ == "__main__":
    main()
