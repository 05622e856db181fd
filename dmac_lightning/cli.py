"""``dmac``: the LightningCLI (``fit``; ``test`` evaluates a checkpoint) with RL-sensible defaults.

Defaults on top of Lightning's: runs go to ``lightning_logs/<env>/<Algorithm>/version_N`` (TensorBoard
events, ``config.yaml``, ``checkpoints/``); an epoch is ``data.env_steps_per_epoch`` env steps and a
checkpoint (``last.ckpt``) is written after each; an exception writes ``on_exception.ckpt``;
``--ckpt_path last`` resumes the newest run of the same env and algorithm, in its own directory;
``dmac test --ckpt_path best`` evaluates its best evaluated policy (``checkpoints/best.ckpt``). A run that
diverges (NaN or inf) stops with one message and exit status 1 (``dmac_lightning.nonfinite``).
"""

from __future__ import annotations

import glob
import json
import os
import re
import sys
from dataclasses import dataclass
from typing import Any, NoReturn

import torch
from pytorch_lightning import seed_everything
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI
from pytorch_lightning.utilities.exceptions import SIGTERMException

from callbacks import Evaluation, RLProgressBar
from callbacks.checkpoint import CrashCheckpoint, EnvStepCheckpoint, newest_resumable
from callbacks.evaluation import BEST_FILENAME
from datamodules import EpisodeDataModule
from dmac_lightning.algorithms import ALGORITHMS, MultiAgentModule
from dmac_lightning.checkpoints import RenamedSettingError, upgrade_settings
from dmac_lightning.lockstep import INTERRUPTED, SEED_RESULT, STOPPED_BY_SIGTERM, Lockstep, ProcessState
from dmac_lightning.nonfinite import NonFiniteError

LOG_ROOT = "lightning_logs"
AUTO = "auto"

TRAINER_DEFAULTS: dict[str, Any] = {
    "max_epochs": -1,
    "devices": 1,
    "num_sanity_val_steps": 0,
    "log_every_n_steps": 10,
    "enable_model_summary": False,
    "logger": {
        "class_path": "pytorch_lightning.loggers.TensorBoardLogger",
        "init_args": {"save_dir": LOG_ROOT, "name": AUTO, "default_hp_metric": False, "flush_secs": 5},
    },
}


def persistent_callbacks(checkpointing: bool = True, progress_bar: bool = True, bar_position: int = 0, bar_label: str = "") -> list:
    """A checkpoint per epoch (``last.ckpt``, named by env steps) and one on exceptions, the RL progress bar; each unless
    the trainer turns checkpointing or the progress bar off. ``bar_position``/``bar_label``: a seed's own line
    (``--seeds``)."""
    callbacks: list = [EnvStepCheckpoint(save_last="link", every_n_epochs=1), CrashCheckpoint()] if checkpointing else []
    return callbacks + [RLProgressBar(process_position=bar_position, label=bar_label)] if progress_bar else callbacks


def run_name(model_class_path: str, env: str, env_kwargs: dict[str, Any] | None) -> str:
    """``<env>[_<map>]/<Algorithm>``: where a run's logs and checkpoints go."""
    env_label = env
    map_name = (env_kwargs or {}).get("map_name")
    if map_name:
        env_label = f"{env}_{map_name}"
    return f"{env_label}/{model_class_path.rsplit('.', 1)[-1]}"


def newest_run_checkpoint(save_dir: str, name: str, best: bool = False, seed: int | None = None) -> tuple[str, str] | None:
    """``(checkpoint path, version)``: the newest ``last.ckpt`` or ``on_exception.ckpt`` under ``save_dir/name``
    (with ``best``: the newest ``best.ckpt``); with ``seed``, also those of that seed in a run of several
    seeds (``version_N/seed_<seed>``, whose version is then that relative path)."""
    filenames = (BEST_FILENAME,) if best else ("last.ckpt", CrashCheckpoint.FILENAME)
    folders = ["*"] + ([os.path.join("*", f"seed_{seed}")] if seed is not None else [])
    candidates = [
        path
        for folder in folders
        for filename in filenames
        for path in glob.glob(os.path.join(save_dir, name, folder, "checkpoints", filename))
    ]
    if not candidates:
        return None
    newest = max(candidates, key=os.path.getmtime)
    return newest, os.path.relpath(os.path.dirname(os.path.dirname(newest)), os.path.join(save_dir, name))


def next_version(save_dir: str, name: str) -> str:
    """``version_<k>``, one past the highest under ``save_dir/name`` (Lightning's numbering)."""
    taken = [
        int(match.group(1))
        for entry in glob.glob(os.path.join(save_dir, name, "version_*"))
        if (match := re.fullmatch(r"version_(\d+)", os.path.basename(entry)))
    ]
    return f"version_{max(taken) + 1 if taken else 0}"


@dataclass
class SeedGroup:
    """``dmac fit --seeds``: the seeds trained in lockstep in this process, and where their folders go
    (``version`` with ``{seed}``, fixed by the first seed's CLI: every seed lands in the same run folder)."""

    seeds: list[int]
    count: int = 0  # with no seeds listed: this many from the first CLI's seed_everything on
    version: str | None = None

    def folder(self, seed: int) -> str:
        return self.version.format(seed=seed)


def parse_seeds_option(value: str) -> int | list[int]:
    """``--seeds``: a count N (seeds S..S+N-1, S from ``--seed_everything``) or a comma-separated list."""
    try:
        if "," in value:
            seeds = [int(part) for part in value.split(",") if part.strip()]
            if not seeds or len(set(seeds)) != len(seeds):
                raise ValueError
            return seeds
        count = int(value)
    except ValueError:
        raise ConfigError(f"--seeds must be a number of seeds (>= 1) or a list of distinct seeds like 0,2,5; got {value!r}") from None
    if count < 1:
        raise ConfigError(f"--seeds must be at least 1; got {count}")
    return count


def split_seeds_option(args: list[str]) -> tuple[int | list[int] | None, list[str]]:
    """``(--seeds value, the other arguments)``; None for a plain run (no ``--seeds``, or ``--seeds 1``)."""
    value, rest, index = None, [], 0
    while index < len(args):
        arg = args[index]
        if arg == "--seeds" and index + 1 < len(args):
            value, index = args[index + 1], index + 2
            continue
        if arg.startswith("--seeds="):
            value = arg.split("=", 1)[1]
        else:
            rest.append(arg)
        index += 1
    if value is None:
        return None, args
    seeds = parse_seeds_option(value)
    return (None if seeds == 1 else seeds), rest


class ConfigError(ValueError):
    """A configuration the CLI rejects before training starts."""


def model_settings(class_name: str) -> list[str]:
    """The settings an algorithm accepts (its own and its parents', as the CLI resolves them)."""
    parser = LightningArgumentParser()
    parser.add_class_arguments(ALGORITHMS[class_name], "m")
    return [action.dest[2:] for action in parser._actions if action.dest.startswith("m.")]


def explain(message: str) -> str:
    """One line saying what is wrong, naming the setting as a config writes it, what is allowed and
    what was given, from a (possibly nested, multi-line) jsonargparse or setting-check message."""
    if message.startswith(("model.", "data.", "evaluation.")):  # ours, unwrapped (with any instructions that follow)
        return message
    for line in message.splitlines():  # a setting check of ours, wherever jsonargparse nested it
        line = line.strip().removeprefix("- ").strip()
        if line.startswith(("model.", "data.", "evaluation.")):
            return line
    named = re.search(r"class_path '([\w.]+)'", message)
    class_name = named.group(1).rsplit(".", 1)[-1] if named else None
    wrong_type = re.search(r'Parser key "(\w+)":\s*Expected a <class \'(\w+)\'>\. Got value: (.*)', message)
    if class_name in ALGORITHMS and wrong_type:
        key, expected, given = wrong_type.groups()
        return f"model.{key} must be a {expected}, got {given.strip()!r}"
    unknown_setting = re.search(r"Option '(\w+)' is not accepted", message)
    if class_name in ALGORITHMS and unknown_setting:
        return f"model.{unknown_setting.group(1)}: not a setting of {class_name}; allowed: {', '.join(model_settings(class_name))}"
    if 'key "model"' in message or message.startswith("model") or "class_path" in message:
        given = re.search(r"path but (\S+) either|class_path '([^']+)'|Given value: (\S+)", message)
        name = next((g for g in given.groups() if g), "?") if given else "?"
        return f"model: unknown algorithm {name!r}; allowed values: {', '.join(ALGORITHMS)}"
    return message


class DMACArgumentParser(LightningArgumentParser):
    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        """The explanation as the first line of the error, without the usage dump."""
        message = explain(message)
        if not self.exit_on_error:
            super().error(message, ex)
        self._logger.error(message)
        sys.stderr.write(f"error: {message}\ntip: {self.prog} --help lists every setting; add --print_config to see the resolved config\n")
        self.exit(2)


class DMACCLI(LightningCLI):
    """``group``: this CLI builds one seed of ``dmac fit --seeds`` (``group_index``-th); it then sets the run up
    without starting it: ``start_fit()`` runs it (``fit_seeds`` calls it in lockstep with the others)."""

    def __init__(self, args: list[str] | None = None, run: bool = True, group: SeedGroup | None = None, group_index: int = 0) -> None:
        self.group, self.group_index = group, group_index
        self.start_fit: Any = None
        super().__init__(
            MultiAgentModule,
            EpisodeDataModule,
            subclass_mode_model=True,
            trainer_defaults={**TRAINER_DEFAULTS, "callbacks": persistent_callbacks()},
            seed_everything_default=0,
            parser_class=DMACArgumentParser,
            save_config_kwargs={"overwrite": True},
            args=args,
            run=run,
        )

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        return {name: keys for name, keys in LightningCLI.subcommands().items() if name in ("fit", "test")}

    def _set_seed(self) -> None:
        # Lightning's, without its log line: a config error found next must be the first line a user sees.
        config = self.config[self.subcommand] if self.subcommand else self.config
        seed = config.get("seed_everything")
        if seed is not False:
            config["seed_everything"] = seed_everything(None if seed is True else seed, workers=True, verbose=False)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(Evaluation, "evaluation")
        # Taken off the command line by main() before parsing; here so that --help shows it.
        parser.add_argument(
            "--seeds", type=str, default="1",
            help="train several seeds of this config in one process, in lockstep: N (seeds S..S+N-1, S = "
            "seed_everything) or a list like 0,2,5; each seed's outputs go to <run folder>/seed_<s>/, laid out as "
            "a single run's; command line only",
        )

    def _run_subcommand(self, subcommand: str) -> None:
        if self.group is None:
            super()._run_subcommand(subcommand)
        else:
            self.start_fit = lambda: super(DMACCLI, self)._run_subcommand(subcommand)

    def instantiate_classes(self) -> None:
        # Configuration mistakes found while building the objects read like parser errors: the
        # message and exit status 2, not a traceback.
        try:
            super().instantiate_classes()
        except (ValueError, FileNotFoundError, ImportError) as error:
            message = str(error) or type(error).__name__
            self.parser.error(message)

    def _parse_ckpt_path(self) -> None:
        """Lightning's (a checkpoint's model settings go over the config), with settings saved under names
        since renamed mapped to today's, or one line naming the setting where they cannot be
        (``dmac_lightning.checkpoints``)."""
        subcommand = self.config.get("subcommand")
        path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if not path or not os.path.isfile(path):
            return
        settings = torch.load(path, weights_only=True, map_location="cpu").get("hyper_parameters", {})
        settings.pop("_instantiator", None)
        if not settings:
            return
        class_path = settings.pop("_class_path", None)
        try:
            settings = upgrade_settings((class_path or self.config[subcommand].model.class_path).rsplit(".", 1)[-1], settings)
        except RenamedSettingError as error:
            self.parser.error(f"--ckpt_path {path}: {error}")
        model = {"class_path": class_path, "dict_kwargs": settings} if class_path else settings
        self.config = self.parser.parse_object({subcommand: {"model": model}}, self.config)

    def before_instantiate_classes(self) -> None:
        try:
            self._check_and_name_run()
        except ConfigError as error:
            self.parser.error(str(error))

    def _check_and_name_run(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        if str(config.get("seeds", "1")) != "1":
            raise ConfigError("seeds: give --seeds on the command line (dmac fit ... --seeds N), not in a config file")
        seed = config.get("seed_everything")
        self.trainer_defaults["callbacks"] = persistent_callbacks(
            checkpointing=config.trainer.enable_checkpointing is not False,
            progress_bar=config.trainer.enable_progress_bar is not False,
            bar_position=self.group_index,
            bar_label=f"seed {seed}" if self.group is not None else "",
        )
        if config.trainer.strategy == "ddp":
            # A critic step and an actor step each back-propagate through only part of the module.
            config.trainer.strategy = "ddp_find_unused_parameters_true"
        class_path = config.model.class_path
        if class_path.rsplit(".", 1)[-1] not in ALGORITHMS:
            raise ConfigError(f"model: unknown algorithm {class_path!r}; allowed values: {', '.join(ALGORITHMS)}")
        loggers = config.trainer.logger if isinstance(config.trainer.logger, list) else [config.trainer.logger]
        named = []
        for logger in loggers:
            init_args = getattr(logger, "init_args", None)
            if init_args is None:
                continue
            if getattr(init_args, "save_dir", None) == LOG_ROOT and config.trainer.default_root_dir:
                # Lightning's habit: runs go under --trainer.default_root_dir unless a save_dir is given.
                init_args.save_dir = os.path.join(config.trainer.default_root_dir, LOG_ROOT)
            if getattr(init_args, "name", None) == AUTO:
                init_args.name = run_name(class_path, config.data.env, config.data.env_kwargs)
                named.append(init_args)
        wanted = getattr(config, "ckpt_path", None)
        if wanted == "best" and self.subcommand == "fit":
            raise ConfigError("--ckpt_path best holds no optimiser state or replay buffer: it is for dmac test; resume with --ckpt_path last")
        if self.group is not None:
            self._place_seed(config, [getattr(logger, "init_args", None) for logger in loggers], seed, wanted)
            return
        if not named:
            return
        init_args = named[0]
        if wanted in ("last", "best"):
            found = newest_run_checkpoint(init_args.save_dir, init_args.name, best=wanted == "best", seed=seed if isinstance(seed, int) else None)
            if found is None:
                raise ConfigError(
                    f"--ckpt_path {wanted}: no run of {init_args.name} has a {wanted}.ckpt under "
                    f"{os.path.join(init_args.save_dir, init_args.name)}"
                )
            config.ckpt_path, version = found
            for other in named:
                other.version = version

    def _place_seed(self, config: Any, loggers: list[Any], seed: Any, wanted: str | None) -> None:
        """One seed of ``--seeds``: its logger version ``<run folder>/seed_<s>``, and with ``--ckpt_path last`` its own
        newest checkpoint there (none yet: that seed starts afresh)."""
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ConfigError(f"--seeds needs an integer seed_everything (the first seed); got {seed!r}")
        devices, nodes = config.trainer.devices, config.trainer.num_nodes or 1
        if not (str(devices) == "1" or (isinstance(devices, (list, tuple)) and len(devices) == 1)) or nodes != 1:
            raise ConfigError(
                f"--seeds trains its seeds in one process, on one device: trainer.devices must be 1 (got {devices!r}, "
                f"num_nodes {nodes}); for seeds on several GPUs start one dmac fit --seeds per GPU"
            )
        loggers = [init_args for init_args in loggers if init_args is not None and hasattr(init_args, "save_dir")]
        if not loggers:
            raise ConfigError("--seeds needs a logger (trainer.logger): each seed writes its events and checkpoints to its own folder")
        if wanted not in (None, "last"):
            raise ConfigError(
                f"--ckpt_path {wanted} with --seeds: give --ckpt_path last (each seed resumes from its own "
                "seed_<s>/checkpoints), or resume one seed alone with --seed_everything S --ckpt_path PATH"
            )
        first = loggers[0]
        group = self.group
        if not group.seeds:
            group.seeds = list(range(seed, seed + group.count))
        if group.version is None:
            given = getattr(first, "version", None)
            if given is not None:
                group.version = str(given) if "{seed}" in str(given) else os.path.join(str(given), "seed_{seed}")
            elif wanted == "last":
                found = [newest_run_checkpoint(first.save_dir, first.name, seed=s) for s in group.seeds]
                found = [(path, version) for path, version in (f for f in found if f) if os.path.basename(version).startswith("seed_")]
                if not found:
                    raise ConfigError(
                        f"--ckpt_path last: no run of several seeds of {first.name} has a checkpoint of seed "
                        f"{', '.join(map(str, group.seeds))} under {os.path.join(first.save_dir, first.name)}"
                    )
                newest_version = max(found, key=lambda item: os.path.getmtime(item[0]))[1]
                group.version = os.path.join(os.path.dirname(newest_version), "seed_{seed}")
            else:
                group.version = os.path.join(next_version(first.save_dir, first.name), "seed_{seed}")
        for init_args in loggers:
            init_args.version = group.folder(seed)
        if wanted == "last":
            config.ckpt_path = newest_resumable(os.path.join(first.save_dir, first.name, group.folder(seed)))


# Exit status of a run stopped by SIGTERM (128 + 15, as a shell reports it): not 0, so that a sweep (local or
# SLURM) never takes a stopped run for a finished one.


def fit_seeds(args: list[str], seeds: int | list[int], from_command_line: bool = False) -> int:
    """``dmac fit ... --seeds``: each seed set up exactly as its own ``dmac fit --seed_everything s`` would be,
    then all trained in lockstep (``dmac_lightning.lockstep``). A seed that diverges or fails stops alone, says
    so, and the others go on. Each seed's end goes to ``seed_result.json`` in its folder. Exit status: 0 when
    every seed finished, 143 when one was stopped by SIGTERM, 130 by Ctrl-C (resume with ``--ckpt_path last``), else 1.
    ``from_command_line``: ``args`` are this process's command line (less ``--seeds``), parsed from ``sys.argv``
    as a plain ``dmac fit`` would be."""
    if not args or args[0] != "fit":
        sys.stderr.write("error: --seeds goes with dmac fit (dmac test evaluates one checkpoint: give a seed's seed_<s>/checkpoints/...)\n")
        return 2
    explicit = seeds if isinstance(seeds, list) else None
    group = SeedGroup(explicit or [], count=0 if explicit else seeds)
    first_args = args + (["--seed_everything", str(explicit[0])] if explicit else [])

    def build(seed_args: list[str], index: int) -> DMACCLI:
        if not from_command_line:
            return DMACCLI(args=seed_args, group=group, group_index=index)
        typed = list(sys.argv)
        sys.argv[1:] = seed_args  # as if this seed's dmac fit had been typed
        try:
            return DMACCLI(group=group, group_index=index)
        finally:
            sys.argv[:] = typed

    first = build(first_args, 0)
    clis, states = [first], [ProcessState()]
    for index, seed in enumerate(group.seeds[1:], 1):
        clis.append(build(args + ["--seed_everything", str(seed)], index))
        states.append(ProcessState())  # right after the seed's own seed_everything and model construction
    folders = {seed: cli.trainer.log_dir for seed, cli in zip(group.seeds, clis)}
    sys.stderr.write(f"training seeds {', '.join(map(str, group.seeds))} in lockstep, into {os.path.dirname(folders[group.seeds[0]])}\n")
    lockstep = Lockstep()
    for seed, cli, state in zip(group.seeds, clis, states):
        lockstep.add(seed, cli.start_fit, state)

    statuses: dict[int, int] = {}

    def report(seed: int, outcome: Any) -> None:
        status, message = _seed_status(outcome.error)
        statuses[seed] = status
        others = " (the other seeds go on)" if len(statuses) < len(group.seeds) and status == 1 and lockstep.stop is None else ""
        if status == 0:
            sys.stderr.write(f"seed {seed}: finished, in {folders[seed]}\n")
        else:
            if message.startswith("failed"):  # an error of the code or the setup: where it happened
                sys.stderr.write(outcome.traceback)
            sys.stderr.write(f"seed {seed}: {message}{others}\n")
        os.makedirs(folders[seed], exist_ok=True)
        with open(os.path.join(folders[seed], SEED_RESULT), "w") as f:
            json.dump({"seed": seed, "exit": status, "message": message}, f, indent=1)

    lockstep.run(on_end=report)
    if all(status == 0 for status in statuses.values()):
        return 0
    for stopped in (STOPPED_BY_SIGTERM, INTERRUPTED):
        if stopped in statuses.values():
            return stopped
    return 1


def _seed_status(error: BaseException | None) -> tuple[int, str]:
    if error is None:
        return 0, "finished"
    if isinstance(error, NonFiniteError):
        return 1, f"diverged: {error}"
    if isinstance(error, SIGTERMException):
        return STOPPED_BY_SIGTERM, "stopped by SIGTERM: its checkpoint is written; resume with --ckpt_path last"
    if type(error) in (SystemExit, KeyboardInterrupt):
        return INTERRUPTED, "interrupted: resume with --ckpt_path last"
    return 1, f"failed: {type(error).__name__}: {error}"


def main(args: list[str] | None = None) -> None:
    try:
        try:
            seeds, rest = split_seeds_option(list(sys.argv[1:] if args is None else args))
        except ConfigError as error:
            sys.stderr.write(f"error: {error}\n")
            raise SystemExit(2) from None
        if seeds is None:
            DMACCLI(args=args)
        else:
            raise SystemExit(fit_seeds(rest, seeds, from_command_line=args is None))
    except NonFiniteError as error:  # a diverged run: the message says it all, no traceback
        sys.stderr.write(f"error: {error}\n")
        raise SystemExit(1) from None
    except SIGTERMException:  # Lightning's (a SystemExit with status 0), after CrashCheckpoint wrote on_exception.ckpt
        sys.stderr.write("stopped by SIGTERM: the checkpoint is written; resume with --ckpt_path last\n")
        raise SystemExit(STOPPED_BY_SIGTERM) from None


if __name__ == "__main__":
    main()
