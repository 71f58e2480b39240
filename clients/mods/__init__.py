"""Flower client mods for flhet's distillation protocol (Message API).

- :class:`~clients.mods.dp_predictions.DpPredictionsMod` -- clipped, noised prediction
  payloads (local or distributed differential privacy).
"""

from .dp_predictions import DpPredictionsMod

__all__ = ["DpPredictionsMod"]
