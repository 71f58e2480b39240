"""Differential-privacy building blocks on client payloads (pure numpy, no Flower import).

* :mod:`.clipping` -- L2 clipping of a payload, flat or per row.
* :mod:`.sensitivity` -- the L2 sensitivity of a sum of clipped payloads under
  add-or-remove-one and replace-one, derived for prediction payloads.
* :mod:`.gaussian` -- central noise on the clipped sum, and distributed noise shares.
* :mod:`.postprocess` -- noisy probability rows back onto the simplex.
* :mod:`.private_consensus` -- the DP combine step of the DS-FL consensus (central or
  distributed noise), used by ``ConsensusDistillation(privacy=...)``.
* :mod:`.update_noise` -- one client's clipped model update plus its noise share
  (distributed DP for FedAvg).
* :mod:`.prediction_noise` -- one client's clipped probabilities plus its noise share
  (distributed DP for the DS-FL consensus).

Privacy accounting (epsilon, delta over rounds) lives in
:mod:`flhet_strategies.privacy.accounting`, on Flower's ``RdpAccountant``.
"""

from .clipping import (
    CLIP_MODES,
    clip_by_l2_norm,
    clip_payload,
    clip_rows_by_l2_norm,
    payload_norm_bound,
)
from .gaussian import (
    add_central_noise,
    add_noise_share,
    central_noise_std,
    gaussian_noise,
    noise_share_std,
    realized_noise_multiplier,
)
from .postprocess import noisy_rows_to_probabilities
from .private_consensus import DP_MODES, PrivateConsensus
from .prediction_noise import (
    PREDICTION_ENCODINGS,
    NoisyPredictions,
    PredictionNoiseSettings,
    privatize_predictions,
)
from .sensitivity import (
    ADD_OR_REMOVE_ONE,
    NEIGHBOURING_RELATIONS,
    REPLACE_ONE,
    accounting_noise_multiplier,
    prediction_payload_sensitivity,
    sensitivity_factor,
    sum_sensitivity,
)
from .update_noise import UPDATE_NOISE_KEYS, UpdateNoiseSettings, privatize_update

__all__ = [
    "ADD_OR_REMOVE_ONE",
    "CLIP_MODES",
    "DP_MODES",
    "NEIGHBOURING_RELATIONS",
    "NoisyPredictions",
    "PREDICTION_ENCODINGS",
    "PredictionNoiseSettings",
    "PrivateConsensus",
    "REPLACE_ONE",
    "UPDATE_NOISE_KEYS",
    "UpdateNoiseSettings",
    "accounting_noise_multiplier",
    "add_central_noise",
    "add_noise_share",
    "central_noise_std",
    "clip_by_l2_norm",
    "clip_payload",
    "clip_rows_by_l2_norm",
    "gaussian_noise",
    "noise_share_std",
    "noisy_rows_to_probabilities",
    "payload_norm_bound",
    "prediction_payload_sensitivity",
    "privatize_predictions",
    "privatize_update",
    "realized_noise_multiplier",
    "sensitivity_factor",
    "sum_sensitivity",
]
