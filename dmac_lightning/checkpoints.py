"""Checkpoints written by earlier versions: model settings saved under names since renamed.

``dmac fit|test --ckpt_path <file>`` reads the model settings saved in the checkpoint (LightningCLI
does, over the config). A setting renamed since is mapped to its name now where the value means the
same; where the network it sized changed, the run stops with one line naming the setting.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Renamed:
    old: str
    new: str
    algorithms: tuple[str, ...]  # class names
    maps: bool  # the old value means the same under the new name (the weights load as they are)
    why: str


RENAMED_SETTINGS = (
    Renamed(
        "mixer_hidden_dim", "mixing_embed_dim", ("QmixDmac",), True,
        "QMIX+DMAC's MLP mixer width took QMIX's name (commit 27c5cf6)",
    ),
    Renamed(
        "critic_hidden_dims", "critic_hidden_dim", ("Fop", "FopDmac"), False,
        "FOP's MLP critics became the published GRU critics, one width (commit b0399b8): a checkpoint from "
        "before holds critics no FOP of today can load; train it again",
    ),
)


class RenamedSettingError(ValueError):
    """A checkpoint's setting was renamed and its value cannot be carried over."""


def upgrade_settings(algorithm: str, settings: dict[str, Any]) -> dict[str, Any]:
    """``settings`` (a checkpoint's ``hyper_parameters`` of class ``algorithm``) under today's names."""
    settings = dict(settings)
    for renamed in RENAMED_SETTINGS:
        if algorithm not in renamed.algorithms or renamed.old not in settings:
            continue
        if not renamed.maps:
            raise RenamedSettingError(
                f"model.{renamed.old}: this {algorithm} checkpoint's setting is now model.{renamed.new}; {renamed.why}"
            )
        value = settings.pop(renamed.old)
        settings.setdefault(renamed.new, value)
    return settings
