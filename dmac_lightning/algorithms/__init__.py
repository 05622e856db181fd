"""The algorithms: each family as its published baseline and as +DMAC."""

from dmac_lightning.algorithms.base import MultiAgentModule
from dmac_lightning.algorithms.coma import Coma, ComaDmac

ALGORITHMS = {"Coma": Coma, "ComaDmac": ComaDmac}

__all__ = ["ALGORITHMS", "Coma", "ComaDmac", "MultiAgentModule"]
