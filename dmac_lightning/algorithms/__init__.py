"""The algorithms: each family as its published baseline and as +DMAC (``DivergenceRegularized``)."""

from dmac_lightning.algorithms.base import MultiAgentModule
from dmac_lightning.algorithms.coma import Coma, ComaDmac
from dmac_lightning.algorithms.dmac import DivergenceRegularized
from dmac_lightning.algorithms.dop import Dop, DopDmac
from dmac_lightning.algorithms.fop import Fop, FopDmac
from dmac_lightning.algorithms.maac import Maac, MaacDmac
from dmac_lightning.algorithms.qmix import Qmix, QmixDmac
from dmac_lightning.algorithms.registry import ALGORITHMS, FAMILIES, NAMES, REGISTRY, Algorithm, algorithm, register_algorithm

__all__ = [
    "ALGORITHMS", "FAMILIES", "NAMES", "REGISTRY", "Algorithm", "Coma", "ComaDmac", "DivergenceRegularized", "Dop",
    "DopDmac", "Fop", "FopDmac", "Maac", "MaacDmac", "MultiAgentModule", "Qmix", "QmixDmac", "algorithm", "register_algorithm",
]
