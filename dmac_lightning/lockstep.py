"""Several seeds' training in one process, in lockstep: each seed's whole ``Trainer.fit`` runs as a greenlet,
one at a time, and hands over at :func:`pause` (called before every collect), so all seeds advance together.

Each seed keeps everything a separate run has (its Trainer, callbacks, logger, checkpoints, data module,
envs, replay buffer, optimisers), and the process-wide state a run reads is swapped at every hand-over:
the random streams (torch, CUDA, NumPy, Python), the environment variables Lightning's ``seed_everything``
sets, and torch's grad mode. So a seed's computation is the same sequence of operations on the same
numbers as its separate run (tests/test_seeds.py checks this for every algorithm).

Greenlets, not threads: only one seed runs at any time, on the main thread (where Lightning registers its
signal handlers), and a hand-over happens only where a seed asks for it.
"""

from __future__ import annotations

import os
import signal
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from greenlet import greenlet
from pytorch_lightning.utilities import rank_zero_info
from pytorch_lightning.utilities.exceptions import SIGTERMException

from datamodules.rng import restore_rng_state, rng_state

# What Lightning's seed_everything leaves in the environment, read later (e.g. the data module's seed).
SEED_VARIABLES = ("PL_GLOBAL_SEED", "PL_SEED_WORKERS")

# How one seed of a group ended, in its folder: {"seed", "exit" (0; 1 failed; 143 SIGTERM, 130 Ctrl-C: stopped), "message"}.
SEED_RESULT = "seed_result.json"
STOPPED_BY_SIGTERM, INTERRUPTED = 143, 130  # a stopped seed's exit (130: Ctrl-C, as shells report it)

_running: Lockstep | None = None


def pause() -> None:
    """Let the other seeds of a lockstep group take their turn (nothing outside a group). Where the group is
    stopping (SIGTERM, Ctrl-C), raise what stops the seed instead."""
    if _running is not None and _running.current is not None:
        if _running.stop is not None:
            raise _running.stop()
        _running.hub.switch()


def _install_sigterm(handler: Any) -> Any:
    """Make ``handler`` SIGTERM's; returns the one it replaces (None off the main thread, where signals cannot be set)."""
    try:
        return signal.signal(signal.SIGTERM, handler)
    except ValueError:
        return None


def message_prefix() -> str:
    """``"seed <s>: "`` while a lockstep group runs (so that interleaved messages say whose they are), else ``""``."""
    return f"seed {os.environ.get('PL_GLOBAL_SEED', '?')}: " if _running is not None and _running.current is not None else ""


@dataclass
class ProcessState:
    """The process-wide state one seed's run reads and changes: saved when it hands over, put back when it resumes."""

    rng: dict[str, Any] = field(default_factory=rng_state)
    variables: dict[str, str | None] = field(default_factory=lambda: {name: os.environ.get(name) for name in SEED_VARIABLES})
    grad_enabled: bool = field(default_factory=torch.is_grad_enabled)

    def save(self) -> None:
        self.rng, self.grad_enabled = rng_state(), torch.is_grad_enabled()
        self.variables = {name: os.environ.get(name) for name in SEED_VARIABLES}

    def restore(self) -> None:
        restore_rng_state(self.rng)
        torch.set_grad_enabled(self.grad_enabled)
        for name, value in self.variables.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@dataclass
class Outcome:
    """How a seed's run ended: ``error`` is None when it finished."""

    error: BaseException | None = None
    traceback: str = ""


@dataclass
class _Task:
    key: Any
    run: Callable[[], Any]
    state: ProcessState
    outcome: Outcome = field(default_factory=Outcome)
    greenlet: greenlet | None = None


class Lockstep:
    """Runs tasks (a seed's fit each) round-robin, a turn each until they :func:`pause` or end.

    A task that raises ends alone (its outcome keeps the error) and the others go on: one seed
    diverging stops that seed, not the group.
    """

    def __init__(self) -> None:
        self.tasks: list[_Task] = []
        self.current: _Task | None = None
        self.hub: greenlet | None = None
        self.stop: type[BaseException] | None = None  # what stops every seed at its next turn (SIGTERM, Ctrl-C)

    def add(self, key: Any, run: Callable[[], Any], state: ProcessState) -> None:
        """``state``: the process state the task starts from (taken right after its run was set up)."""
        self.tasks.append(_Task(key, run, state))

    def run(self, on_end: Callable[[Any, Outcome], None] | None = None) -> dict[Any, Outcome]:
        """Run every task to its end; ``on_end(key, outcome)`` as each ends. SIGTERM stops every seed as it
        stops a run alone (Lightning's ``SIGTERMException`` at its next hand-over: its crash checkpoint is
        written); so does Ctrl-C once it has stopped one seed (the others get a ``KeyboardInterrupt``)."""
        global _running
        if _running is not None:
            raise RuntimeError("a lockstep group is already running in this process")
        _running, self.hub = self, greenlet.getcurrent()
        self.stop = None
        outside, previous_handler = ProcessState(), _install_sigterm(self._on_sigterm)
        try:
            for task in self.tasks:
                task.greenlet = greenlet(self._body(task), parent=self.hub)
            pending = list(self.tasks)
            while pending:
                for task in list(pending):
                    self.current = task
                    task.state.restore()
                    if self.stop is not None and not task.greenlet:  # not started: it never will
                        task.outcome = Outcome(self.stop(), "stopped before it started")
                        task.greenlet = greenlet(lambda: None, parent=self.hub)
                        task.greenlet.switch()
                    elif self.stop is not None:
                        task.greenlet.throw(self.stop)
                    else:
                        task.greenlet.switch()  # back here when the task pauses or ends
                    task.state.save()
                    self.current = None
                    # A seed's Trainer puts back, when it ends, the SIGTERM handler it found: keep the group's.
                    _install_sigterm(self._on_sigterm)
                    if task.greenlet.dead:
                        pending.remove(task)
                        # Lightning turns a KeyboardInterrupt into exactly SystemExit(1) after its graceful shutdown.
                        if self.stop is None and type(task.outcome.error) in (SystemExit, KeyboardInterrupt):
                            self.stop = KeyboardInterrupt
                        if on_end is not None:
                            on_end(task.key, task.outcome)
        finally:
            self.current, _running = None, None
            outside.restore()
            if previous_handler is not None:
                _install_sigterm(previous_handler)
        return {task.key: task.outcome for task in self.tasks}

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        rank_zero_info("[lockstep] received SIGTERM: every seed stops at its next collect, writing its checkpoint")
        self.stop = self.stop or SIGTERMException

    @staticmethod
    def _body(task: _Task) -> Callable[[], None]:
        def body() -> None:
            try:
                task.run()
            except BaseException as error:  # noqa: BLE001  (SystemExit too: one seed's end is not the group's)
                task.outcome = Outcome(error, traceback.format_exc())

        return body
