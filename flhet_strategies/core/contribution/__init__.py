"""Shapley-value contribution of federated clients (pure numpy, no Flower).

A game is a :class:`CoalitionUtility` (memoized, counted ``v(S)``); utilities of
federated aggregation rules are in :mod:`.logit_utility`; estimators share the
:class:`ShapleyEstimator` interface and return a :class:`ShapleyResult`;
:class:`ContributionLedger` keeps per-round and cumulative values and
:class:`ContributionWeighting` turns them into aggregation weights.
"""

from flhet_strategies.core.contribution.auto import (
    ESTIMATOR_NAMES,
    estimate_shapley,
    make_estimator,
)
from flhet_strategies.core.contribution.estimator import ShapleyEstimator, ShapleyResult
from flhet_strategies.core.contribution.exact import ExactShapley
from flhet_strategies.core.contribution.games import CoalitionUtility, coalition_mask
from flhet_strategies.core.contribution.gtg import GTGShapley, should_skip_round
from flhet_strategies.core.contribution.ledger import ContributionLedger, RoundContribution
from flhet_strategies.core.contribution.logit_utility import (
    LogitConsensusUtility,
    WeightedAverageUtility,
)
from flhet_strategies.core.contribution.permutation import PermutationShapley
from flhet_strategies.core.contribution.stratified import (
    RegressionAdjustedSVARM,
    StratifiedSVARM,
)
from flhet_strategies.core.contribution.weighting import ContributionWeighting, mix_weights

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
    "should_skip_round",
]
