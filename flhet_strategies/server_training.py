"""Server-side training for flhet's server algorithms (pure torch + numpy, no Flower).

FedTGP (Zhang et al., AAAI 2024, https://arxiv.org/abs/2401.03230): trainable global
prototypes (TGP) learned with adaptive-margin-enhanced contrastive learning (ACL).
FedGH (Yi et al., ACM MM 2023, https://arxiv.org/abs/2305.13137): a global head trained
with cross-entropy on the clients' class prototypes. FedDF distillation will join.
Details, and where the authors' code and the paper differ: ``docs/server_training.md``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .algorithms.prototypes import (
    TGP_MARGIN_THRESHOLD,
    TGP_SERVER_BATCH_SIZE,
    TGP_SERVER_EPOCHS,
    TGP_SERVER_LR,
)

__all__ = [
    "DISTANCE_EPS",
    "TrainablePrototypes",
    "stack_client_prototypes",
    "class_centers",
    "class_gaps",
    "adaptive_margin",
    "acl_loss",
    "train_prototypes",
    "state_arrays",
    "load_state_arrays",
    "PrototypeGenerator",
    "train_head",
]

DISTANCE_EPS = 1e-12
"""Added inside the square root of every squared distance in :func:`acl_loss`.

The gradient of ``sqrt`` is infinite at 0, so an uploaded prototype that coincides
with a generated one would otherwise give NaN gradients; with the epsilon the gradient
there is exactly 0 and every distance changes by at most ``sqrt(DISTANCE_EPS)`` = 1e-6.
"""


# ---------------------------------------------------------------------------
# FedTGP: trainable global prototypes
# ---------------------------------------------------------------------------


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _check_real(name: str, value: Any, *, positive: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name} must be a real number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if positive and value <= 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    if not positive and value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return value


class TrainablePrototypes(nn.Module):
    """FedTGP's trainable global prototypes: class id -> generated prototype.

    An ``nn.Embedding(num_classes, feature_dim)`` of the class ids, then
    ``Linear(feature_dim, hidden_dim)`` + ReLU, then ``Linear(hidden_dim, feature_dim)``.

    Parameters
    ----------
    num_classes : int
        Number of classes ``C`` (>= 1).
    feature_dim : int
        Dimension ``d`` of the common feature space of the clients' prototypes.
    hidden_dim : int, optional
        Width of the hidden layer; defaults to ``feature_dim`` (as in the reference).
    seed : int, optional
        If given, the parameters are initialised under ``torch.manual_seed(seed)``
        inside ``torch.random.fork_rng(devices=[])``, so the same seed gives the same
        parameters and torch's global CPU generator is left untouched. If ``None``,
        torch's global generator is used as for any ``nn.Module``.

    Attributes
    ----------
    num_classes, feature_dim, hidden_dim : int
        The sizes above.
    embedding : torch.nn.Embedding
    hidden : torch.nn.Linear
    output : torch.nn.Linear
    """

    def __init__(self, num_classes: int, feature_dim: int, hidden_dim: int | None = None,
                 *, seed: int | None = None) -> None:
        super().__init__()
        self.num_classes = _check_int("num_classes", num_classes, 1)
        self.feature_dim = _check_int("feature_dim", feature_dim, 1)
        self.hidden_dim = (self.feature_dim if hidden_dim is None
                           else _check_int("hidden_dim", hidden_dim, 1))
        if seed is None:
            self._build()
        else:
            seed = _check_int("seed", seed, 0)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                self._build()

    def _build(self) -> None:
        self.embedding = nn.Embedding(self.num_classes, self.feature_dim)
        self.hidden = nn.Linear(self.feature_dim, self.hidden_dim)
        self.output = nn.Linear(self.hidden_dim, self.feature_dim)

    def forward(self, class_ids: torch.Tensor) -> torch.Tensor:
        """Generated prototypes of the given classes.

        Parameters
        ----------
        class_ids : torch.LongTensor
            Class ids, shape ``(n,)``, values in ``[0, num_classes)``.

        Returns
        -------
        torch.Tensor
            Shape ``(n, feature_dim)``.
        """
        return self.output(F.relu(self.hidden(self.embedding(class_ids))))

    def prototypes(self) -> torch.Tensor:
        """Generated prototypes of all classes, shape ``(num_classes, feature_dim)``.

        Returns
        -------
        torch.Tensor
            Row ``c`` is the prototype of class ``c`` (with autograd, if enabled).
        """
        ids = torch.arange(self.num_classes, device=self.embedding.weight.device)
        return self(ids)


def stack_client_prototypes(
        per_client: Iterable[Mapping[int, Any]], feature_dim: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Stack the clients' ``{class: prototype}`` uploads into training arrays.

    Parameters
    ----------
    per_client : iterable of mapping int -> array_like
        One mapping per client, class id -> that client's prototype (shape ``(d,)``).
    feature_dim : int, optional
        Expected ``d``; if ``None`` it is taken from the first prototype.

    Returns
    -------
    prototypes : numpy.ndarray
        Shape ``(K, d)``, float32, one row per (client, class) pair, in upload order.
    labels : numpy.ndarray
        Shape ``(K,)``, int64.

    Raises
    ------
    ValueError
        If a prototype is not a vector of length ``d`` or a class id is not an integer.
    """
    rows: list[np.ndarray] = []
    labels: list[int] = []
    dim = None if feature_dim is None else _check_int("feature_dim", feature_dim, 1)
    for client_index, uploads in enumerate(per_client):
        for label, proto in uploads.items():
            label = _check_int(f"class id of client #{client_index}", label, 0)
            vec = np.asarray(proto, dtype=np.float32)
            if dim is None and vec.ndim == 1:
                dim = vec.shape[0]
            if vec.ndim != 1 or vec.shape[0] != dim:
                raise ValueError(f"client #{client_index}, class {label}: prototype has shape "
                                 f"{vec.shape}, expected ({dim},)")
            rows.append(vec)
            labels.append(label)
    if not rows:
        return (np.zeros((0, dim or 0), dtype=np.float32), np.zeros((0,), dtype=np.int64))
    return np.stack(rows), np.asarray(labels, dtype=np.int64)


def _as_prototypes(prototypes: Any, labels: Any, num_classes: int | None,
                   feature_dim: int | None, *, allow_empty: bool) -> tuple[np.ndarray, np.ndarray]:
    protos = np.asarray(prototypes)
    labs = np.asarray(labels)
    if protos.size == 0 and labs.size == 0:
        if not allow_empty:
            raise ValueError("no prototypes: the training set is empty")
        return np.zeros((0, feature_dim or 0)), np.zeros((0,), dtype=np.int64)
    if protos.ndim != 2:
        raise ValueError(f"prototypes must have shape (K, d), got {protos.shape}")
    if feature_dim is not None and protos.shape[1] != feature_dim:
        raise ValueError(f"prototypes have dimension {protos.shape[1]}, expected {feature_dim}")
    if labs.ndim != 1 or labs.shape[0] != protos.shape[0]:
        raise ValueError(f"labels must have shape ({protos.shape[0]},), got {labs.shape}")
    if protos.dtype == np.bool_ or not (np.issubdtype(protos.dtype, np.floating)
                                        or np.issubdtype(protos.dtype, np.integer)):
        raise ValueError(f"prototypes must be real numbers, got dtype {protos.dtype}")
    if not np.all(np.isfinite(protos)):
        raise ValueError("prototypes contain NaN or Inf")
    if labs.dtype == np.bool_ or not np.issubdtype(labs.dtype, np.integer):
        raise ValueError(f"labels must be integers, got dtype {labs.dtype}")
    if labs.min() < 0 or (num_classes is not None and labs.max() >= num_classes):
        bound = "" if num_classes is None else f" [0, {num_classes})"
        raise ValueError(f"labels out of range{bound}: min {labs.min()}, max {labs.max()}")
    return protos, labs.astype(np.int64)


def class_centers(prototypes: Any, labels: Any) -> dict[int, np.ndarray]:
    """Class-wise averages of the uploaded prototypes (FedTGP's ``P̄_c``).

    Parameters
    ----------
    prototypes : array_like
        Shape ``(K, d)``; one row per uploaded (client, class) prototype.
    labels : array_like of int
        Shape ``(K,)``, class of each row.

    Returns
    -------
    dict of int -> numpy.ndarray
        For each class present, the float64 mean of its rows (the mean over the
        clients that uploaded it, each client uploading one prototype per class).
        Empty if ``K == 0``.
    """
    protos, labs = _as_prototypes(prototypes, labels, None, None, allow_empty=True)
    protos = protos.astype(np.float64)
    return {int(c): protos[labs == c].mean(axis=0) for c in np.unique(labs)}


def class_gaps(prototypes: Any, labels: Any) -> dict[int, float]:
    """Per-class gap: distance from a class centre to the nearest other class centre.

    ``gap_c = min over c' != c of ||P̄_c - P̄_c'||_2`` over the classes present.

    Parameters
    ----------
    prototypes : array_like
        Shape ``(K, d)``.
    labels : array_like of int
        Shape ``(K,)``.

    Returns
    -------
    dict of int -> float
        One entry per class present; empty when fewer than two classes are present
        (no class then has another class to be apart from).
    """
    centers = class_centers(prototypes, labels)
    if len(centers) < 2:
        return {}
    classes = sorted(centers)
    stacked = np.stack([centers[c] for c in classes])
    dist = np.sqrt(((stacked[:, None, :] - stacked[None, :, :]) ** 2).sum(axis=-1))
    np.fill_diagonal(dist, np.inf)
    return {c: float(g) for c, g in zip(classes, dist.min(axis=1))}


def adaptive_margin(prototypes: Any, labels: Any,
                    margin_threshold: float = TGP_MARGIN_THRESHOLD) -> float:
    """FedTGP's adaptive margin ``δ = min(max_c gap_c, τ)`` of one round's uploads.

    Parameters
    ----------
    prototypes : array_like
        Shape ``(K, d)``, the prototypes uploaded this round.
    labels : array_like of int
        Shape ``(K,)``.
    margin_threshold : float, default 100.0
        ``τ`` (>= 0), the cap on the margin (HtFLlib's ``margin_threthold``).

    Returns
    -------
    float
        The margin. ``0.0`` when fewer than two classes were uploaded (also for
        ``K == 0``): no inter-class distance exists to be preserved. The reference
        code would return ``τ`` for a single class (its 1e9 placeholder gap is capped).

    See Also
    --------
    class_gaps : the per-class gaps.
    """
    tau = _check_real("margin_threshold", margin_threshold, positive=False)
    gaps = class_gaps(prototypes, labels)
    if not gaps:
        return 0.0
    return float(min(max(gaps.values()), tau))


def acl_loss(prototypes: torch.Tensor, labels: torch.Tensor, generated: torch.Tensor,
             margin: float, *, eps: float = DISTANCE_EPS) -> torch.Tensor:
    """Adaptive-margin-enhanced contrastive loss, averaged over the batch.

    For an uploaded prototype ``p`` of class ``y`` and generated prototypes ``G``:
    ``d_c = sqrt(||p - G_c||² + eps)``, logits ``-(d + margin·onehot(y))``, loss
    ``cross_entropy(logits, y)``, i.e.
    ``-log(e^{-(d_y+δ)} / (e^{-(d_y+δ)} + Σ_{c≠y} e^{-d_c}))``.

    Parameters
    ----------
    prototypes : torch.Tensor
        Shape ``(B, d)``, uploaded prototypes.
    labels : torch.LongTensor
        Shape ``(B,)``, values in ``[0, C)``.
    generated : torch.Tensor
        Shape ``(C, d)``, the generated (trainable) global prototypes.
    margin : float
        ``δ`` (>= 0), added to the distance to the true class.
    eps : float, default :data:`DISTANCE_EPS`
        Added inside the square root so the gradient is finite (0) at distance 0.

    Returns
    -------
    torch.Tensor
        Scalar, the mean loss over the ``B`` rows.

    Notes
    -----
    The distances are computed from the differences (``B × C × d`` values), not from
    ``||p||² - 2p·g + ||g||²`` as in the reference, which can round below 0 (NaN).
    """
    if prototypes.ndim != 2 or generated.ndim != 2 or prototypes.shape[1] != generated.shape[1]:
        raise ValueError(f"prototypes {tuple(prototypes.shape)} and generated "
                         f"{tuple(generated.shape)} must be (B, d) and (C, d)")
    if labels.shape != (prototypes.shape[0],):
        raise ValueError(f"labels must have shape ({prototypes.shape[0]},), "
                         f"got {tuple(labels.shape)}")
    margin = _check_real("margin", margin, positive=False)
    diff = prototypes[:, None, :] - generated[None, :, :]
    dist = torch.sqrt((diff * diff).sum(dim=-1) + eps)
    one_hot = F.one_hot(labels, generated.shape[0]).to(dist.dtype)
    return F.cross_entropy(-(dist + margin * one_hot), labels)


def _model_place(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    param = next(model.parameters())
    return param.device, param.dtype


def train_prototypes(model: TrainablePrototypes, prototypes: Any, labels: Any, *,
                     margin: float, epochs: int, batch_size: int, lr: float,
                     seed: int) -> list[float]:
    """Train the generated prototypes on uploaded prototypes with :func:`acl_loss`.

    Plain SGD (no momentum or weight decay, a fresh optimizer per call), ``epochs``
    passes over the ``K`` uploads in mini-batches of ``batch_size`` (the last one may
    be smaller), reshuffled every epoch with a ``torch.Generator`` seeded by ``seed``;
    every step regenerates all ``C`` prototypes. The model is trained in place on its
    own device and dtype; torch's global RNG and settings are not touched.

    Parameters
    ----------
    model : TrainablePrototypes
        The generator to train (in place).
    prototypes : array_like
        Shape ``(K, d)`` with ``d = model.feature_dim``, finite, ``K >= 1``.
    labels : array_like of int
        Shape ``(K,)``, values in ``[0, model.num_classes)``.
    margin : float
        ``δ`` (>= 0), e.g. from :func:`adaptive_margin`.
    epochs : int
        Number of passes (>= 1).
    batch_size : int
        Mini-batch size (>= 1).
    lr : float
        SGD learning rate (> 0).
    seed : int
        Seed (>= 0) of the shuffles.

    Returns
    -------
    list of float
        Per epoch, the mean loss over the ``K`` uploads (batch losses weighted by
        batch size), computed during the epoch.

    Raises
    ------
    ValueError
        On bad shapes, NaN/Inf, labels out of range, an empty set or bad settings.
    """
    if not isinstance(model, TrainablePrototypes):
        raise ValueError(f"model must be a TrainablePrototypes, got {type(model).__name__}")
    protos, labs = _as_prototypes(prototypes, labels, model.num_classes, model.feature_dim,
                                  allow_empty=False)
    margin = _check_real("margin", margin, positive=False)
    device, dtype = _model_place(model)
    x = torch.from_numpy(np.array(protos, dtype=np.float64)).to(device=device, dtype=dtype)
    y = torch.from_numpy(np.array(labs, dtype=np.int64)).to(device=device)
    model.train()
    return _sgd_epochs(model.parameters(), len(x),
                       lambda index: acl_loss(x[index], y[index], model.prototypes(), margin),
                       epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, device=device)


def _sgd_epochs(parameters: Iterable[nn.Parameter], count: int, batch_loss, *, epochs: int,
                batch_size: int, lr: float, seed: int, device: torch.device | str = "cpu",
                ) -> list[float]:
    """Plain SGD over ``count`` items: ``epochs`` reshuffled passes (a ``torch.Generator``
    seeded by ``seed``) in mini-batches; ``batch_loss(index)`` is a batch's mean loss.
    Returns each epoch's mean loss (batch losses weighted by size)."""
    epochs = _check_int("epochs", epochs, 1)
    batch_size = _check_int("batch_size", batch_size, 1)
    lr = _check_real("lr", lr, positive=True)
    seed = _check_int("seed", seed, 0)
    shuffle = torch.Generator(device="cpu")
    shuffle.manual_seed(seed)
    optimizer = torch.optim.SGD(parameters, lr=lr)
    losses: list[float] = []
    for _ in range(epochs):
        order = torch.randperm(count, generator=shuffle).to(device)
        total = torch.zeros((), dtype=torch.float64, device=device)
        for start in range(0, count, batch_size):
            index = order[start:start + batch_size]
            loss = batch_loss(index)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.detach().to(torch.float64) * index.shape[0]
        losses.append(float(total) / count)
    return losses


def state_arrays(model: nn.Module) -> dict[str, np.ndarray]:
    """Copy a model's state (parameters and buffers) into numpy arrays.

    Parameters
    ----------
    model : torch.nn.Module
        E.g. a :class:`TrainablePrototypes`.

    Returns
    -------
    dict of str -> numpy.ndarray
        ``state_dict`` key -> a copy of the tensor on the CPU.
    """
    return {key: value.detach().cpu().numpy().copy() for key, value in model.state_dict().items()}


def load_state_arrays(model: nn.Module, arrays: Mapping[str, Any]) -> None:
    """Load arrays from :func:`state_arrays` into a model, strictly.

    Parameters
    ----------
    model : torch.nn.Module
        The model to overwrite (in place, keeping its device and dtypes).
    arrays : mapping of str -> array_like
        Exactly the model's ``state_dict`` keys, with matching shapes and finite values.

    Raises
    ------
    ValueError
        On missing or unexpected keys, a shape mismatch or a non-finite value; the
        model is left unchanged then.
    """
    expected = model.state_dict()
    missing = sorted(set(expected) - set(arrays))
    unexpected = sorted(set(arrays) - set(expected))
    if missing or unexpected:
        raise ValueError(f"state mismatch: missing keys {missing}, unexpected keys {unexpected}")
    loaded = {}
    for key, target in expected.items():
        value = np.asarray(arrays[key])
        if tuple(value.shape) != tuple(target.shape):
            raise ValueError(f"{key}: shape {tuple(value.shape)}, expected {tuple(target.shape)}")
        if value.dtype.kind in "fc" and not np.all(np.isfinite(value)):
            raise ValueError(f"{key}: contains NaN or Inf")
        loaded[key] = torch.from_numpy(np.array(value)).to(dtype=target.dtype,
                                                           device=target.device)
    model.load_state_dict(loaded, strict=True)


class PrototypeGenerator:
    """FedTGP's server-side state: one TGP generator trained a little every round.

    The same :class:`TrainablePrototypes` is kept across rounds (FedTGP keeps training
    it); each :meth:`fit` computes the round's :func:`adaptive_margin` and runs
    :func:`train_prototypes` with a shuffle seed derived from ``(seed, fit number)``.

    Parameters
    ----------
    num_classes : int
        ``C``.
    feature_dim : int
        ``d``.
    hidden_dim : int, optional
        Hidden width of the generator; defaults to ``feature_dim``.
    margin_threshold : float, default 100.0
        ``τ``, the cap on the adaptive margin.
    epochs : int, default 100
        Server epochs per :meth:`fit` (FedTGP's ``server_epochs``).
    batch_size : int, default 64
        Mini-batch size (the reference uses the clients' batch size).
    lr : float, default 0.01
        SGD learning rate (the reference uses the clients' learning rate).
    seed : int, default 0
        Seeds the parameter initialisation and, with the fit number, the shuffles.
    device : str or torch.device, default "cpu"
        Where the generator lives; it is initialised on the CPU first, so the initial
        parameters do not depend on the device.

    Attributes
    ----------
    model : TrainablePrototypes
        The generator.
    num_fits : int
        Number of :meth:`fit` calls so far (those rejected by validation not counted).
    """

    def __init__(self, num_classes: int, feature_dim: int, hidden_dim: int | None = None,
                 margin_threshold: float = TGP_MARGIN_THRESHOLD,
                 epochs: int = TGP_SERVER_EPOCHS, batch_size: int = TGP_SERVER_BATCH_SIZE,
                 lr: float = TGP_SERVER_LR, seed: int = 0, *, device: str | torch.device = "cpu") -> None:
        self.margin_threshold = _check_real("margin_threshold", margin_threshold, positive=False)
        self.epochs = _check_int("epochs", epochs, 1)
        self.batch_size = _check_int("batch_size", batch_size, 1)
        self.lr = _check_real("lr", lr, positive=True)
        self.seed = _check_int("seed", seed, 0)
        self.model = TrainablePrototypes(num_classes, feature_dim, hidden_dim,
                                         seed=self.seed).to(device)
        self.num_fits = 0

    @property
    def num_classes(self) -> int:
        """int : Number of classes ``C``."""
        return self.model.num_classes

    @property
    def feature_dim(self) -> int:
        """int : Prototype dimension ``d``."""
        return self.model.feature_dim

    def _shuffle_seed(self, fit_number: int) -> int:
        state = np.random.SeedSequence([self.seed, fit_number]).generate_state(2, np.uint32)
        return (int(state[0]) << 31) ^ int(state[1])

    def fit(self, prototypes: Any, labels: Any) -> dict[str, Any]:
        """Train the generator on one round's uploaded prototypes.

        Parameters
        ----------
        prototypes : array_like
            Shape ``(K, d)``, ``K >= 1``, e.g. from :func:`stack_client_prototypes`.
        labels : array_like of int
            Shape ``(K,)``, values in ``[0, C)``.

        Returns
        -------
        dict
            ``margin`` (float, the δ used), ``loss`` (float, mean loss of the last
            epoch), ``losses`` (list of float, per epoch), ``epochs`` (int),
            ``num_prototypes`` (int, ``K``), ``num_classes_seen`` (int) and ``fit``
            (int, 0-based number of this call).

        Raises
        ------
        ValueError
            On invalid input (see :func:`train_prototypes`), including an empty set:
            a round without uploads should skip :meth:`fit`. The generator and
            :attr:`num_fits` are unchanged then.
        """
        protos, labs = _as_prototypes(prototypes, labels, self.num_classes, self.feature_dim,
                                      allow_empty=False)
        margin = adaptive_margin(protos, labs, self.margin_threshold)
        fit_number = self.num_fits
        self.num_fits += 1
        losses = train_prototypes(self.model, protos, labs, margin=margin, epochs=self.epochs,
                                  batch_size=self.batch_size, lr=self.lr,
                                  seed=self._shuffle_seed(fit_number))
        return {
            "margin": margin,
            "loss": losses[-1],
            "losses": losses,
            "epochs": self.epochs,
            "num_prototypes": int(protos.shape[0]),
            "num_classes_seen": int(np.unique(labs).size),
            "fit": fit_number,
        }

    def prototypes(self) -> np.ndarray:
        """The current global prototypes to send to the clients.

        Returns
        -------
        numpy.ndarray
            Shape ``(C, d)``, float32, row ``c`` for class ``c``.
        """
        with torch.no_grad():
            return self.model.prototypes().detach().cpu().numpy().astype(np.float32)

    def state_dict(self) -> dict[str, np.ndarray]:
        """Checkpoint: the generator's arrays plus the fit counter and the seed.

        Returns
        -------
        dict of str -> numpy.ndarray
            ``"model.<key>"`` for each :func:`state_arrays` entry, ``"num_fits"`` and
            ``"seed"`` (0-d int64 arrays). Hyper-parameters are not included.
        """
        state = {f"model.{key}": value for key, value in state_arrays(self.model).items()}
        state["num_fits"] = np.array(self.num_fits, dtype=np.int64)
        state["seed"] = np.array(self.seed, dtype=np.int64)
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a checkpoint from :meth:`state_dict`, strictly.

        Parameters
        ----------
        state : mapping of str -> array_like
            As returned by :meth:`state_dict`.

        Raises
        ------
        ValueError
            On missing or unexpected keys, mismatching shapes, non-finite values, a
            negative fit counter or a seed different from this generator's; nothing
            is changed then.
        """
        extra = sorted(k for k in state if not k.startswith("model.")
                       and k not in ("num_fits", "seed"))
        missing = sorted(k for k in ("num_fits", "seed") if k not in state)
        if extra or missing:
            raise ValueError(f"state mismatch: missing keys {missing}, unexpected keys {extra}")
        seed = np.asarray(state["seed"])
        num_fits = np.asarray(state["num_fits"])
        for name, value in (("seed", seed), ("num_fits", num_fits)):
            if value.shape != () or not np.issubdtype(value.dtype, np.integer):
                raise ValueError(f"{name} must be a 0-d integer array, got {value!r}")
        if int(seed) != self.seed:
            raise ValueError(f"checkpoint was made with seed {int(seed)}, this generator has "
                             f"seed {self.seed}")
        if int(num_fits) < 0:
            raise ValueError(f"num_fits must be >= 0, got {int(num_fits)}")
        load_state_arrays(self.model, {k[len("model."):]: v for k, v in state.items()
                                       if k.startswith("model.")})
        self.num_fits = int(num_fits)


# ---------------------------------------------------------------------------
# FedGH: the generalized global head
# ---------------------------------------------------------------------------


def train_head(head: Any, prototypes: Any, labels: Any, *, epochs: int, batch_size: int,
               lr: float, seed: int) -> tuple[np.ndarray, list[float]]:
    """FedGH's server step: train a linear head with cross-entropy on uploaded prototypes.

    As HtFLlib's ``servergh.py``: a fresh plain SGD optimizer, ``epochs`` passes over
    the ``K`` ``(prototype, class)`` pairs in shuffled mini-batches of ``batch_size``
    (the last may be smaller), loss ``CE(W p + b, y)`` averaged over a batch. Runs in
    float32 on the CPU with a ``torch.Generator`` seeded by ``seed``; torch's global RNG
    is not touched.

    Parameters
    ----------
    head : array_like
        The head to start from, ``(C, d + 1)``: the weight with the bias as the last column.
    prototypes : array_like
        Shape ``(K, d)``, finite, ``K >= 1``.
    labels : array_like of int
        Shape ``(K,)``, values in ``[0, C)``.
    epochs, batch_size : int
        Passes (>= 1) and mini-batch size (>= 1).
    lr : float
        SGD learning rate (> 0).
    seed : int
        Seed (>= 0) of the shuffles.

    Returns
    -------
    head : numpy.ndarray
        The trained head, ``(C, d + 1)`` float32 (the input is not modified).
    losses : list of float
        Per epoch, the mean loss over the ``K`` pairs (batch losses weighted by size).

    Raises
    ------
    ValueError
        On bad shapes, NaN/Inf, labels out of range, an empty set or bad settings.
    """
    start = np.asarray(head, dtype=np.float64)
    if start.ndim != 2 or start.shape[1] < 2 or not np.all(np.isfinite(start)):
        raise ValueError(f"head must be a finite (C, d + 1) array, got shape {start.shape}")
    num_classes, feature_dim = start.shape[0], start.shape[1] - 1
    protos, labs = _as_prototypes(prototypes, labels, num_classes, feature_dim,
                                  allow_empty=False)
    layer = nn.Linear(feature_dim, num_classes)
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(start[:, :-1]))
        layer.bias.copy_(torch.from_numpy(start[:, -1]))
    x = torch.from_numpy(np.array(protos, dtype=np.float32))
    y = torch.from_numpy(np.array(labs, dtype=np.int64))
    losses = _sgd_epochs(layer.parameters(), len(x),
                         lambda index: F.cross_entropy(layer(x[index]), y[index]),
                         epochs=epochs, batch_size=batch_size, lr=lr, seed=seed)
    with torch.no_grad():
        trained = torch.cat([layer.weight, layer.bias[:, None]], dim=1)
    return trained.numpy().astype(np.float32), losses
