"""scikit-learn members of the model zoo: linear classifiers on flattened pixels.

Both estimators support ``fit(X, y, sample_weight=...)`` and ``predict_proba``, which is
all a distillation client needs: it trains on its own data plus soft-labelled proxy data
(as weighted hard labels) and shares class probabilities.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.base import ClassifierMixin
from sklearn.linear_model import LogisticRegression, SGDClassifier

SKLEARN_MODELS: tuple[str, ...] = ("logreg", "sgd_logreg")
"""Names accepted by :func:`build_sklearn_model`."""


def build_sklearn_model(name: str, seed: int = 0) -> ClassifierMixin:
    """Build an unfitted scikit-learn classifier of the zoo.

    Parameters
    ----------
    name : str
        ``"logreg"``: multinomial ``LogisticRegression`` (lbfgs, up to 200 iterations).
        ``"sgd_logreg"``: ``SGDClassifier(loss="log_loss")``, i.e. logistic regression by
        SGD, which also offers ``partial_fit`` for incremental rounds.
    seed : int, optional
        ``random_state`` of the estimator, by default 0.

    Returns
    -------
    sklearn.base.ClassifierMixin
        An unfitted estimator with ``fit(X, y, sample_weight=...)`` and ``predict_proba``.
        ``X`` is 2-D: flatten images to ``(N, C * H * W)`` first.

    Raises
    ------
    ValueError
        If ``name`` is not one of :data:`SKLEARN_MODELS`.
    """
    if name == "logreg":
        # lbfgs fits a multinomial model for more than two classes (the only option since
        # scikit-learn 1.7 removed ``multi_class``).
        return LogisticRegression(max_iter=200, random_state=seed)
    if name == "sgd_logreg":
        return SGDClassifier(loss="log_loss", random_state=seed)
    raise ValueError(
        f"Unknown scikit-learn model {name!r}; valid names are: {', '.join(SKLEARN_MODELS)}."
    )


def full_class_proba(estimator: Any, features: np.ndarray, num_classes: int) -> np.ndarray:
    """``predict_proba`` spread over all ``num_classes`` columns.

    A client whose data lacks some classes fits an estimator that only knows the classes it
    saw (``estimator.classes_``); its ``predict_proba`` has one column per seen class. This
    puts each column under its class label and fills unseen classes with 0.

    Parameters
    ----------
    estimator : fitted scikit-learn classifier
        Must have ``classes_`` holding integer labels in ``[0, num_classes)``.
    features : numpy.ndarray
        2-D array ``(N, D)`` passed to ``predict_proba``.
    num_classes : int
        Total number of classes of the federation.

    Returns
    -------
    numpy.ndarray
        ``(N, num_classes)`` float array; each row sums to 1.

    Raises
    ------
    ValueError
        If the estimator is unfitted or knows a label outside ``[0, num_classes)``.
    """
    classes = getattr(estimator, "classes_", None)
    if classes is None:
        raise ValueError("The estimator is not fitted yet: call fit(...) before predicting.")
    classes = np.asarray(classes)
    is_integer = np.issubdtype(classes.dtype, np.integer)
    if not is_integer or classes.min() < 0 or classes.max() >= num_classes:
        raise ValueError(
            f"Estimator classes {classes.tolist()} are not integer labels in [0, {num_classes})."
        )
    proba = estimator.predict_proba(features)
    full = np.zeros((proba.shape[0], num_classes), dtype=np.float64)
    full[:, classes] = proba
    return full
