"""Training-loop env steps/s with 1 vs 2 DDP ranks on the stochastic game (CPU by default).

    python benchmarks/ddp_scaling.py [--algorithm coma_dmac] [--steps 40000]
        [--accelerator cpu|gpu]

Each rank runs its own envs (``n_envs`` per rank), so 2 ranks collect twice the env steps per
update round; the figure is global env steps per second (summed over ranks). With
``--accelerator gpu`` the 2-rank run needs 2 GPUs (one per rank); ``--ranks 1`` measures 1 GPU alone.
"""

from __future__ import annotations

import argparse

from common import config_paths, run_fit, steady_throughput


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--algorithm", default="coma_dmac", help="a registered algorithm, on the stochastic game")
    parser.add_argument("--steps", type=int, default=40_000)
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    rows = []
    for devices in args.ranks:
        extra = ["--trainer.strategy", "ddp"] if devices > 1 else []
        run_dir = run_fit(
            config_paths(args.algorithm), "--data.max_env_steps", str(args.steps), "--evaluation.interval", str(10 * args.steps),
            "--evaluation.at_start", "false", "--trainer.accelerator", args.accelerator,
            "--trainer.devices", str(devices), *extra,
        )
        rows.append((devices, steady_throughput(run_dir)))
    print(f"{'ranks':>5} | {'env steps/s (global)':>20} | {'vs 1 rank':>9}")
    for devices, throughput in rows:
        print(f"{devices:>5} | {throughput:>20.0f} | {throughput / rows[0][1]:>9.2f}")


if __name__ == "__main__":
    main()
