"""The algorithms: each family as its published baseline and as +DMAC."""

from dmac_lightning.algorithms.base import MultiAgentModule
from dmac_lightning.algorithms.coma import Coma, ComaDmac
from dmac_lightning.algorithms.qmix import Qmix, QmixDmac

ALGORITHMS = {cls.__name__: cls for cls in (Coma, ComaDmac, Qmix, QmixDmac)}

__all__ = ["ALGORITHMS", "Coma", "ComaDmac", "MultiAgentModule", "Qmix", "QmixDmac"]
