"""LightningDataModules wrapping TorchRL collectors and replay buffers."""

from datamodules.episodes import EpisodeDataModule, EpisodeStream, EpisodeAssembler

__all__ = ["EpisodeDataModule", "EpisodeStream", "EpisodeAssembler"]
