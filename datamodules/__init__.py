"""LightningDataModules wrapping TorchRL collectors and replay buffers."""

from datamodules.episodes import EpisodeDataModule, EpisodeStream, pad_episodes

__all__ = ["EpisodeDataModule", "EpisodeStream", "pad_episodes"]
