"""The algorithms: one registry that the CLI, the sweeps, the plots, the benchmarks and the tests read.

The ten shipped ones are registered here; a family of your own joins them with
:func:`register_algorithm` (see the README, "Adding an algorithm family"). Each entry names an algorithm the way a config file does (``coma_dmac``: ``configs/algorithms/coma_dmac.yaml``,
also its label in sweeps and plots), its class, and its family. :meth:`Algorithm.configs` composes
the config files of a run: for SMAC/SMAX a map file then the algorithm file; for the stochastic game
the algorithm file, then the game file (its budget and evaluation win over the algorithm file's SMAC
protocol), then, for a +DMAC variant, the game's own omega.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from dmac_lightning.algorithms.base import MultiAgentModule
from dmac_lightning.algorithms.coma import Coma, ComaDmac
from dmac_lightning.algorithms.dmac import DivergenceRegularized
from dmac_lightning.algorithms.dop import Dop, DopDmac
from dmac_lightning.algorithms.fop import Fop, FopDmac
from dmac_lightning.algorithms.maac import Maac, MaacDmac
from dmac_lightning.algorithms.qmix import Qmix, QmixDmac

FAMILIES = ("coma", "maac", "qmix", "dop", "fop")
STOCHASTIC_GAME = "stochastic_game"


@dataclass(frozen=True)
class Algorithm:
    name: str  # e.g. "coma_dmac": its config file's stem and its label in sweeps and plots
    module: type[MultiAgentModule]

    @property
    def family(self) -> str:
        return self.name.removesuffix("_dmac")

    @property
    def regularized(self) -> bool:
        """A +DMAC variant."""
        return issubclass(self.module, DivergenceRegularized)

    @property
    def title(self) -> str:
        """``COMA+DMAC``."""
        return self.family.upper() + ("+DMAC" if self.regularized else "")

    def configs(
        self, env: str = STOCHASTIC_GAME, map_name: str | None = None, root: str = "configs", preset: str | None = None
    ) -> list[str]:
        """The ``--config`` files of a run of this algorithm on ``env`` (and ``map_name`` for SMAC/SMAX);
        with ``preset``, its algorithm file is ``configs/algorithms/<preset>/<name>.yaml`` (e.g. the DMAC
        authors' settings, ``authors``) in place of the shipped one."""
        algorithm = os.path.join(root, "algorithms", f"{self.name}.yaml")
        if preset is not None:
            offered = presets(root).get(preset)
            if offered is None:
                raise ValueError(f"preset {preset!r}: no such folder configs/algorithms/{preset}; allowed values: {', '.join(sorted(presets(root))) or 'none'}")
            if self.name not in offered:
                raise ValueError(f"preset {preset!r} has no config for {self.name!r}; it has: {', '.join(offered)}")
            algorithm = os.path.join(root, "algorithms", preset, f"{self.name}.yaml")
        if env == STOCHASTIC_GAME:
            game = [os.path.join(root, STOCHASTIC_GAME, "game.yaml")]
            return [algorithm, *game, *([os.path.join(root, STOCHASTIC_GAME, "dmac.yaml")] if self.regularized else [])]
        if map_name is None:
            raise ValueError(f"{env}: name a map (configs/{env}/<map>.yaml)")
        return [os.path.join(root, env, f"{map_name}.yaml"), algorithm]


def presets(root: str = "configs") -> dict[str, list[str]]:
    """Preset folders under ``configs/algorithms`` (``authors``) -> the algorithms each has a file for."""
    folder = os.path.join(root, "algorithms")
    found = {}
    for entry in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        path = os.path.join(folder, entry)
        if os.path.isdir(path):
            found[entry] = sorted(name.removesuffix(".yaml") for name in os.listdir(path) if name.endswith(".yaml"))
    return found


REGISTRY: list[Algorithm] = []
# Class name -> class: what ``--model <Name>`` accepts.
ALGORITHMS: dict[str, type[MultiAgentModule]] = {}


def register_algorithm(name: str, module: type[MultiAgentModule]) -> Algorithm:
    """Add an algorithm: ``name`` is its config file's stem (``<family>`` or ``<family>_dmac``)."""
    if not (isinstance(module, type) and issubclass(module, MultiAgentModule)):
        raise TypeError(f"register_algorithm({name!r}): {module!r} is not a MultiAgentModule subclass")
    if any(name == entry.name or module.__name__ == entry.module.__name__ for entry in REGISTRY):
        raise ValueError(f"register_algorithm: {name!r} or the class name {module.__name__!r} is already registered")
    entry = Algorithm(name, module)
    REGISTRY.append(entry)
    ALGORITHMS[module.__name__] = module
    return entry


for _name, _module in (
    ("coma", Coma), ("coma_dmac", ComaDmac), ("maac", Maac), ("maac_dmac", MaacDmac), ("qmix", Qmix),
    ("qmix_dmac", QmixDmac), ("dop", Dop), ("dop_dmac", DopDmac), ("fop", Fop), ("fop_dmac", FopDmac),
):
    register_algorithm(_name, _module)
# The ten shipped algorithms (the registry may hold more: see register_algorithm).
NAMES: tuple[str, ...] = tuple(entry.name for entry in REGISTRY)


def algorithm(name: str) -> Algorithm:
    """The entry named ``name`` (``coma_dmac``) or of the class ``name`` (``ComaDmac``)."""
    for entry in REGISTRY:
        if name in (entry.name, entry.module.__name__):
            return entry
    raise ValueError(f"unknown algorithm {name!r}; allowed values: {', '.join(entry.name for entry in REGISTRY)}")
