"""Training metrics averaged between two logging points, without a host sync per update."""

from __future__ import annotations

import torch
from torchmetrics.aggregation import MeanMetric


class MetricMeans:
    """Running means of named scalars, kept on the device until :meth:`compute` (which, under DDP,
    averages over all ranks: every rank must record the same names)."""

    def __init__(self) -> None:
        self._means: dict[str, MeanMetric] = {}

    def update(self, device: torch.device, **metrics: torch.Tensor | float) -> None:
        for name, value in metrics.items():
            if name not in self._means:
                # "disable": no NaN check, which would cost a host sync per update.
                self._means[name] = MeanMetric(nan_strategy="disable").to(device)
            value = value.detach().to(torch.get_default_dtype()) if isinstance(value, torch.Tensor) else float(value)
            self._means[name].update(value)

    def compute(self) -> dict[str, float]:
        """The means since the last call (in name order), then start again."""
        names = sorted(self._means)
        if not names:
            return {}
        values = torch.stack([self._means[name].compute() for name in names]).tolist()
        for mean in self._means.values():
            mean.reset()
        self._means.clear()
        return dict(zip(names, values))
