"""Privacy features that need Flower (accounting on Flower's ``RdpAccountant``).

The Flower-free math (clipping, sensitivity, Gaussian noise) is in
:mod:`flhet_strategies.core.dp`.
"""

from .accounting import SAMPLING_SCHEMES, PrivacyLedger, RoundPrivacy, noise_multiplier_for_epsilon

__all__ = ["SAMPLING_SCHEMES", "PrivacyLedger", "RoundPrivacy", "noise_multiplier_for_epsilon"]
