"""Shapley-value contribution of federated clients (pure numpy, no Flower).

A game is a :class:`CoalitionUtility` (memoized, counted ``v(S)``); utilities of
federated aggregation rules are in :mod:`.logit_utility`; estimators share the
:class:`ShapleyEstimator` interface and return a :class:`ShapleyResult`;
:class:`ContributionLedger` keeps per-round and cumulative values and
:class:`ContributionWeighting` turns them into aggregation weights.
"""

from flhet_strategies.weighting.contribution.auto import (
    ESTIMATOR_NAMES,
    estimate_shapley,
    make_estimator,
)
from flhet_strategies.weighting.contribution.estimator import ShapleyEstimator, ShapleyResult
from flhet_strategies.weighting.contribution.exact import ExactShapley
from flhet_strategies.weighting.contribution.games import CoalitionUtility, coalition_mask
from flhet_strategies.weighting.contribution.gtg import GTGShapley
from flhet_strategies.weighting.contribution.ledger import ContributionLedger, RoundContribution
from flhet_strategies.weighting.contribution.logit_utility import (
    LogitConsensusUtility,
    WeightedAverageUtility,
)
from flhet_strategies.weighting.contribution.permutation import PermutationShapley
from flhet_strategies.weighting.contribution.stratified import (
    RegressionAdjustedSVARM,
    StratifiedSVARM,
)
from flhet_strategies.weighting.contribution.weighting import ContributionWeighting, mix_weights

__all__ = [
    "ESTIMATOR_NAMES",
    "CoalitionUtility",
    "ContributionLedger",
    "ContributionWeighting",
    "ExactShapley",
    "GTGShapley",
    "LogitConsensusUtility",
    "PermutationShapley",
    "RegressionAdjustedSVARM",
    "RoundContribution",
    "ShapleyEstimator",
    "ShapleyResult",
    "StratifiedSVARM",
    "WeightedAverageUtility",
    "coalition_mask",
    "estimate_shapley",
    "make_estimator",
    "mix_weights",
]
