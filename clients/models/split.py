"""Body/head split of the zoo's PyTorch classifiers, and the projection adapter.

Every zoo model is a :class:`SplitModel`: a ``body`` mapping images to features and a
linear ``head`` mapping features to logits. A :class:`ProjectionAdapter` at the end of
the body maps each architecture's native features into one common feature space, so
that feature-level methods (prototypes, shared heads, discriminators) work across
CNNs and Transformers.
"""

from __future__ import annotations

import torch
from torch import nn


class SplitModel(nn.Module):
    """A classifier split into a feature extractor and a linear head.

    ``forward(x)`` is ``head(body(x))``: exactly the computation of the unsplit network
    the parts were taken from.

    Parameters
    ----------
    body : torch.nn.Module
        Maps ``(N, C, H, W)`` images to ``(N, feature_dim)`` features.
    head : torch.nn.Module
        Maps ``(N, feature_dim)`` features to ``(N, num_classes)`` logits, usually an
        ``nn.Linear``.
    feature_dim : int, optional
        Width of the features the head takes; by default the head's ``in_features``.

    Attributes
    ----------
    feature_dim : int
        Width of the body's output (= the head's input).

    Raises
    ------
    ValueError
        If ``feature_dim`` is not given and the head has no ``in_features``, or it is
        not a positive integer.
    """

    def __init__(self, body: nn.Module, head: nn.Module, feature_dim: int | None = None) -> None:
        super().__init__()
        self.body = body
        self.head = head
        if feature_dim is None:
            feature_dim = getattr(head, "in_features", None)
            if feature_dim is None:
                raise ValueError(
                    f"Cannot infer feature_dim from a {type(head).__name__} head "
                    "(it has no in_features): pass feature_dim."
                )
        if isinstance(feature_dim, bool) or int(feature_dim) != feature_dim or feature_dim < 1:
            raise ValueError(f"feature_dim must be a positive integer, got {feature_dim!r}.")
        self.feature_dim = int(feature_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``head(body(x))``."""
        return self.head(self.body(x))


class ProjectionAdapter(nn.Linear):
    """Linear map from an architecture's native features into a common feature space.

    Appended to every body when models are built with a ``feature_dim``, it gives all
    architectures, CNNs and Transformers alike, features of one shared width, so that
    class prototypes, classifier heads and discriminators can be shared between them
    (a parameter-space mapping between CNN and Transformer feature spaces). It is a single
    ``nn.Linear`` with PyTorch's default initialisation, as in HtFLlib, which replaces
    every model's last fully connected layer by one into a common ``feature_dim``. It is
    kept even when the widths already agree, so every client has the same structure.

    Parameters
    ----------
    in_features : int
        Native feature width of the body it follows.
    out_features : int
        Width of the common feature space.

    Raises
    ------
    ValueError
        If a width is not a positive integer.
    """

    def __init__(self, in_features: int, out_features: int) -> None:
        for label, value in (("in_features", in_features), ("out_features", out_features)):
            if isinstance(value, bool) or int(value) != value or value < 1:
                raise ValueError(f"{label} must be a positive integer, got {value!r}.")
        super().__init__(int(in_features), int(out_features))


def split_sequential(model: nn.Sequential) -> SplitModel:
    """Split an ``nn.Sequential`` classifier into its last layer and the rest.

    Parameters
    ----------
    model : torch.nn.Sequential
        A network ending in an ``nn.Linear``.

    Returns
    -------
    SplitModel
        ``body`` is an ``nn.Sequential`` of every layer but the last (the same module
        objects, in the same order); ``head`` is the last ``nn.Linear``.

    Raises
    ------
    TypeError
        If the last layer is not an ``nn.Linear``.
    """
    layers = list(model)
    if not layers or not isinstance(layers[-1], nn.Linear):
        raise TypeError("split_sequential needs an nn.Sequential that ends in an nn.Linear.")
    return SplitModel(nn.Sequential(*layers[:-1]), layers[-1])


def split_off_head(model: nn.Module, path: str) -> SplitModel:
    """Take the final ``nn.Linear`` at ``path`` out of ``model`` as the head.

    The layer is replaced by ``nn.Identity`` in place, so ``model`` becomes the body and
    returns the features the layer used to receive.

    Parameters
    ----------
    model : torch.nn.Module
        A classifier whose last operation is the linear layer at ``path``.
    path : str
        Dotted submodule name, e.g. ``"fc"``, ``"classifier.3"`` or ``"heads.head"``.

    Returns
    -------
    SplitModel
        ``body`` is ``model`` (with the identity in place), ``head`` the removed layer.

    Raises
    ------
    TypeError
        If the submodule at ``path`` is not an ``nn.Linear``.
    """
    parent_name, _, child_name = path.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    head = parent.get_submodule(child_name)
    if not isinstance(head, nn.Linear):
        raise TypeError(f"{path!r} of {type(model).__name__} is a {type(head).__name__}, "
                        "not an nn.Linear.")
    setattr(parent, child_name, nn.Identity())
    return SplitModel(model, head)


def with_projection(model: SplitModel, feature_dim: int, num_classes: int) -> SplitModel:
    """Re-head ``model`` on a :class:`ProjectionAdapter` into ``feature_dim`` features.

    Parameters
    ----------
    model : SplitModel
        A model whose body gives ``model.feature_dim`` native features; its head is
        discarded.
    feature_dim : int
        Width of the common feature space.
    num_classes : int
        Number of logits of the fresh head.

    Returns
    -------
    SplitModel
        ``body = nn.Sequential(model.body, ProjectionAdapter(native, feature_dim))`` and
        ``head = nn.Linear(feature_dim, num_classes)``, created in that order.
    """
    adapter = ProjectionAdapter(model.feature_dim, feature_dim)
    head = nn.Linear(int(feature_dim), int(num_classes))
    return SplitModel(nn.Sequential(model.body, adapter), head)
