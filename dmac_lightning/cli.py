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
import os
import re
import sys
from typing import Any, NoReturn

import torch
from pytorch_lightning import seed_everything
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI
from pytorch_lightning.utilities.exceptions import SIGTERMException

from callbacks import Evaluation, RLProgressBar
from callbacks.checkpoint import CrashCheckpoint, EnvStepCheckpoint
from callbacks.evaluation import BEST_FILENAME
from datamodules import EpisodeDataModule
from dmac_lightning.algorithms import ALGORITHMS, MultiAgentModule
from dmac_lightning.checkpoints import RenamedSettingError, upgrade_settings
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


def persistent_callbacks(checkpointing: bool = True, progress_bar: bool = True) -> list:
    """A checkpoint per epoch (``last.ckpt``, named by env steps) and one on exceptions, the RL progress bar; each unless
    the trainer turns checkpointing or the progress bar off."""
    callbacks: list = [EnvStepCheckpoint(save_last="link", every_n_epochs=1), CrashCheckpoint()] if checkpointing else []
    return callbacks + [RLProgressBar()] if progress_bar else callbacks


def run_name(model_class_path: str, env: str, env_kwargs: dict[str, Any] | None) -> str:
    """``<env>[_<map>]/<Algorithm>``: where a run's logs and checkpoints go."""
    env_label = env
    map_name = (env_kwargs or {}).get("map_name")
    if map_name:
        env_label = f"{env}_{map_name}"
    return f"{env_label}/{model_class_path.rsplit('.', 1)[-1]}"


def newest_run_checkpoint(save_dir: str, name: str, best: bool = False) -> tuple[str, str] | None:
    """``(checkpoint path, version)``: the newest ``last.ckpt`` or ``on_exception.ckpt`` under ``save_dir/name``
    (with ``best``: the newest ``best.ckpt``)."""
    filenames = (BEST_FILENAME,) if best else ("last.ckpt", CrashCheckpoint.FILENAME)
    candidates = [
        path for filename in filenames for path in glob.glob(os.path.join(save_dir, name, "*", "checkpoints", filename))
    ]
    if not candidates:
        return None
    newest = max(candidates, key=os.path.getmtime)
    return newest, os.path.basename(os.path.dirname(os.path.dirname(newest)))


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
    def __init__(self, args: list[str] | None = None, run: bool = True) -> None:
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
        self.trainer_defaults["callbacks"] = persistent_callbacks(
            checkpointing=config.trainer.enable_checkpointing is not False,
            progress_bar=config.trainer.enable_progress_bar is not False,
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
        if not named:
            return
        init_args = named[0]
        wanted = getattr(config, "ckpt_path", None)
        if wanted == "best" and self.subcommand == "fit":
            raise ConfigError("--ckpt_path best holds no optimiser state or replay buffer: it is for dmac test; resume with --ckpt_path last")
        if wanted in ("last", "best"):
            found = newest_run_checkpoint(init_args.save_dir, init_args.name, best=wanted == "best")
            if found is None:
                raise ConfigError(
                    f"--ckpt_path {wanted}: no run of {init_args.name} has a {wanted}.ckpt under "
                    f"{os.path.join(init_args.save_dir, init_args.name)}"
                )
            config.ckpt_path, version = found
            for other in named:
                other.version = version


# Exit status of a run stopped by SIGTERM (128 + 15, as a shell reports it): not 0, so that a sweep (local or
# SLURM) never takes a stopped run for a finished one.
STOPPED_BY_SIGTERM = 143


def main(args: list[str] | None = None) -> None:
    try:
        DMACCLI(args=args)
    except NonFiniteError as error:  # a diverged run: the message says it all, no traceback
        sys.stderr.write(f"error: {error}\n")
        raise SystemExit(1) from None
    except SIGTERMException:  # Lightning's (a SystemExit with status 0), after CrashCheckpoint wrote on_exception.ckpt
        sys.stderr.write("stopped by SIGTERM: the checkpoint is written; resume with --ckpt_path last\n")
        raise SystemExit(STOPPED_BY_SIGTERM) from None


if __name__ == "__main__":
    main()
