"""Flower client mods for flhet's distillation protocol (Message API).

- :class:`~clients.mods.dp_predictions.DpPredictionsMod` -- clipped, noised prediction
  payloads (local or distributed differential privacy).
- :class:`~clients.mods.dp_update_noise.DpUpdateNoiseMod` -- clipped model updates plus
  each client's noise share (distributed DP for FedAvg).
- :class:`~clients.mods.paillier_consensus.PaillierConsensusMod` -- Paillier-encrypted
  prediction shares; decrypts the consensus the server relays (secure consensus).
- :class:`~clients.mods.paillier_fedavg.PaillierFedAvgMod` -- Paillier-encrypted model
  weights for FedAvg; decrypts the global model the server relays (secure FedAvg).
"""

from .dp_predictions import DpPredictionsMod
from .dp_update_noise import DpUpdateNoiseMod
from .paillier_consensus import PaillierConsensusMod
from .paillier_fedavg import PaillierFedAvgMod

__all__ = ["DpPredictionsMod", "DpUpdateNoiseMod", "PaillierConsensusMod", "PaillierFedAvgMod"]
