"""Flower client mods of flhet (Message API).

- :class:`PaillierMod` (earlier name ``PaillierConsensusMod``) -- the Paillier secure sum
  of any weighted-sum algorithm.
- :class:`DpNoiseMod` (earlier name ``DpPredictionsMod``) -- distributed DP of any
  weighted-sum algorithm.
- :class:`PaillierFedAvgMod`, :class:`DpUpdateNoiseMod` -- the same for Flower's own
  FedAvg (the user's own ClientApp).
"""

from clients.faces.wrappers import DpNoiseMod, DpPredictionsMod, PaillierConsensusMod, PaillierMod
from clients.fedavg.dp import DpUpdateNoiseMod
from clients.fedavg.paillier import PaillierFedAvgMod

__all__ = ["DpNoiseMod", "DpPredictionsMod", "DpUpdateNoiseMod", "PaillierConsensusMod",
           "PaillierFedAvgMod", "PaillierMod"]
