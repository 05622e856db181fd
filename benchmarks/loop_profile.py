"""Where one second of the training loop goes (issue 12, item 1): a script that prints a table.
(Not ``profile.py``, as the issue named it: run as a script, that name would shadow the standard
library's ``profile``, which cProfile imports.)

    python benchmarks/loop_profile.py --algorithm qmix_dmac --env smax --env-steps 20000
    python benchmarks/loop_profile.py --algorithm dop_dmac --env stochastic_game --updates-per-episode 0.125

Runs ``trainer.fit`` in this process under cProfile (one thread, no logger, checkpoints or
evaluation; on SMAX the env's step is compiled and warmed up before, outside the profile) and splits its wall time into the parts of the loop, each the cumulative
time of the functions that do it:

* collection: env step (``_step``/``_reset`` of our envs, including SMAX's JAX <-> torch crossing,
  shown apart as the DLPack conversions, which also wait for the jitted step to finish), policy step (``act``), episode assembly (the assembler's
  ``add``/``pop``), and the rest of ``collect`` (TorchRL's collector bookkeeping, the buffer write,
  the counters);
* buffer sampling (``sample``);
* the update (``training_step`` less the collection and sampling it drives): backward, optimiser
  (``step`` of the optimisers and gradient clipping), +DMAC's rho update (``after_actor_step``),
  metric accumulation (``record``), and the rest: the forward passes and the losses;
* the target networks' updates (the ``TargetNetworkUpdate`` callbacks), logging, and what
  Lightning's loop itself costs (the remainder).

cProfile adds a fixed cost per Python call, so Python-heavy parts (bookkeeping) read somewhat larger
than they run; the split, not the absolute figures, is the point. ``benchmarks/speed.py`` measures
speeds without the profiler.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import config_paths  # noqa: E402


def _cumulative(stats: pstats.Stats, match) -> float:
    """Summed cumulative seconds of the functions ``match(path, name)`` selects (not nested in each other)."""
    return sum(entry[3] for (path, _, name), entry in stats.stats.items() if match(path.replace(os.sep, "/"), name))


def _in(*parts: str):
    return lambda path: any(part in path for part in parts)


def split(stats: pstats.Stats, total: float) -> list[tuple[str, float]]:
    """The parts of ``total`` seconds, in the loop's order; the nested ones indented."""
    ours_envs = _in("dmac_lightning/envs/")
    env_step = _cumulative(stats, lambda p, n: ours_envs(p) and n in ("_step", "_reset"))
    crossing = _cumulative(stats, lambda p, n: p.endswith("envs/smax.py") and n in ("_unpack", "_to_jax"))
    policy = _cumulative(stats, lambda p, n: p.endswith("algorithms/base.py") and n == "act")
    assembly = _cumulative(stats, lambda p, n: p.endswith("datamodules/assembler.py") and n in ("add", "pop"))
    collect = _cumulative(stats, lambda p, n: p.endswith("datamodules/episodes.py") and n == "collect")
    sample = _cumulative(stats, lambda p, n: p.endswith("datamodules/episodes.py") and n == "sample")
    training_step = _cumulative(stats, lambda p, n: p.endswith("algorithms/base.py") and n == "training_step")
    backward = _cumulative(stats, lambda p, n: p.endswith("torch/_tensor.py") and n == "backward")
    optimiser = _cumulative(
        stats, lambda p, n: ("torch/optim/" in p and n == "step" and not p.endswith("optimizer.py"))
        or (p.endswith("clip_grad.py") and n == "clip_grad_norm_")
    )
    rho = _cumulative(stats, lambda p, n: "dmac_lightning/algorithms/" in p and n == "after_actor_step")
    targets = _cumulative(stats, lambda p, n: p.endswith("dmac_lightning/targets.py") and n == "on_train_batch_end")
    record = _cumulative(stats, lambda p, n: p.endswith("algorithms/base.py") and n == "record")
    logging = _cumulative(stats, lambda p, n: p.endswith("dmac_lightning/loggers.py") and n == "log_metrics")

    update = training_step - collect - sample
    rows = [
        ("collection", collect),
        ("  env step (ours)", env_step - crossing),
        ("  JAX <-> torch (DLPack)", crossing),
        ("  policy step", policy),
        ("  episode assembly", assembly),
        ("  collector bookkeeping, buffer write", collect - env_step - policy - assembly),
        ("buffer sampling", sample),
        ("update", update),
        ("  forward and losses", update - backward - optimiser - rho - record),
        ("  backward", backward),
        ("  optimiser step, grad clipping", optimiser),
        ("  rho update (+DMAC)", rho),
        ("  metric accumulation", record),
        ("target networks (callback)", targets),
        ("logging", logging),
        ("Lightning's loop, the rest", total - training_step - logging - targets),
    ]
    return rows


def warm_up(data, seconds: float) -> None:
    """Compile SMAX's jitted step for the training envs' configuration and run it past XLA's slow first
    seconds, outside the profile (the training envs share the compiled step)."""
    from dmac_lightning.envs import make_env

    env = make_env(data.env_name, data.env_kwargs, n_envs=data.n_envs, seed=0)
    td = env.reset()
    until = time.perf_counter() + seconds
    while time.perf_counter() < until:
        td = env.step_and_maybe_reset(env.rand_action(td))[1]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--algorithm", default="qmix_dmac")
    parser.add_argument("--env", default="stochastic_game", choices=["stochastic_game", "smax"])
    parser.add_argument("--map", default="3m")
    parser.add_argument("--env-steps", type=int, default=20000)
    parser.add_argument("--updates-per-episode", default=None, help="default: the algorithm file's")
    parser.add_argument("--n-envs", type=int, default=None, help="default: the config's")
    parser.add_argument("--warm-up-seconds", type=float, default=8.0,
                        help="SMAX: compile and run the env's step this long before profiling (XLA's first seconds are slow)")
    parser.add_argument("--top", type=int, default=0, help="also print the N functions with the most own time")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    from callbacks.evaluation import Evaluation
    from dmac_lightning.cli import DMACCLI

    configs = config_paths(args.algorithm, args.env, args.map if args.env == "smax" else None)
    extra = ["--data.updates_per_episode", args.updates_per_episode] if args.updates_per_episode else []
    if args.n_envs:
        extra += ["--data.n_envs", str(args.n_envs), "--data.episodes_per_collect", str(args.n_envs)]
    cli = DMACCLI(
        args=[
            *(x for path in configs for x in ("--config", path)),
            "--data.max_env_steps", str(args.env_steps), "--data.env_steps_per_epoch", str(args.env_steps),
            "--trainer.logger", "false", "--trainer.enable_checkpointing", "false",
            "--trainer.enable_progress_bar", "false", *extra,
        ],
        run=False,
    )
    # No evaluation: its envs (and, on SMAX, their JIT compilation) are not the loop's cost.
    cli.trainer.callbacks = [c for c in cli.trainer.callbacks if not isinstance(c, Evaluation)]
    if args.env == "smax":
        warm_up(cli.datamodule, args.warm_up_seconds)
    profiler = cProfile.Profile()
    started = time.perf_counter()
    profiler.runcall(cli.trainer.fit, cli.model, cli.datamodule)
    total = time.perf_counter() - started
    stats = pstats.Stats(profiler)
    data = cli.datamodule
    print(
        f"{args.algorithm} on {args.env}{' ' + args.map if args.env == 'smax' else ''}: {data.env_steps} env steps, "
        f"{data.n_envs} envs, {data.updates_per_episode} updates per episode, "
        f"{cli.model.updates} updates in {total:.1f} s under cProfile"
    )
    print("\n| part | seconds | share |\n|---|---|---|")
    for name, seconds in split(stats, total):
        print(f"| {name} | {seconds:.2f} | {seconds / total:.0%} |")
    if args.top:
        stats.sort_stats("tottime").print_stats(args.top)


if __name__ == "__main__":
    main()
