"""dmac-lightning: divergence-regularized multi-agent actor-critic (Su & Lu, ICML 2022) on Lightning."""

import logging

import torchrl  # noqa: F401  (configures its logger on import; quieten it afterwards)

# torchrl logs every storage initialisation at INFO; keep the console for progress and evaluation.
logging.getLogger("torchrl").setLevel(logging.WARNING)

__version__ = "0.1.0"
