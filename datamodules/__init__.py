"""LightningDataModules wrapping TorchRL collectors and replay buffers."""

from datamodules.assembler import EpisodeAssembler
from datamodules.episodes import EpisodeDataModule, EpisodeStream

__all__ = ["EpisodeAssembler", "EpisodeDataModule", "EpisodeStream"]
