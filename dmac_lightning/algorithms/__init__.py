"""The algorithms: each family as its published baseline and as +DMAC."""

from dmac_lightning.algorithms.base import MultiAgentModule
from dmac_lightning.algorithms.coma import Coma, ComaDmac
from dmac_lightning.algorithms.dop import Dop, DopDmac
from dmac_lightning.algorithms.fop import Fop, FopDmac
from dmac_lightning.algorithms.maac import Maac, MaacDmac
from dmac_lightning.algorithms.qmix import Qmix, QmixDmac

ALGORITHMS = {cls.__name__: cls for cls in (Coma, ComaDmac, Maac, MaacDmac, Qmix, QmixDmac, Dop, DopDmac, Fop, FopDmac)}

__all__ = [
    "ALGORITHMS", "Coma", "ComaDmac", "Dop", "DopDmac", "Fop", "FopDmac", "Maac", "MaacDmac", "MultiAgentModule",
    "Qmix", "QmixDmac",
]
