"""A :class:`~clients.learners.base.Learner` for any ``torch.nn.Module`` classifier.

On a model split into ``body`` and ``head`` (every zoo model, see
:class:`~clients.models.split.SplitModel`) it is also a
:class:`~clients.learners.base.FeatureLearner`: it embeds inputs, shares its head and
trains with an auxiliary feature loss.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from flhet_strategies.kd_loss import kd_loss

from .base import AuxLoss, DistillTarget
from .dpsgd import (
    DPSGD,
    RELEASES_KEY,
    STATE_KEY,
    RecordPrivacy,
    make_private_compatible,
    sample_rate,
)

OPTIMIZERS = ("sgd", "adam", "adamw")

_BATCH = 512
"""Inference batch size of :meth:`TorchLearner.predict_logits` and the feature methods."""


class NoFeatureSplitError(TypeError, AttributeError):
    """The learner's model has no ``body``/``head`` split, so it cannot give features.

    A ``TypeError`` (the model is of the wrong kind) that is also an ``AttributeError``,
    so ``hasattr(learner, "feature_dim")`` is ``False`` for such a learner.
    """


def _seeded(method):
    """Run a training method with torch's global generator (dropout, ...) seeded from
    the learner's seed and left as it was afterwards, so training repeats exactly."""

    @functools.wraps(method)
    def run(self, *args, **kwargs):
        self._calls += 1
        seed = (self._generator.initial_seed() * 1_000_003 + self._calls) % 2**63
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            return method(self, *args, **kwargs)

    return run


class TorchLearner:
    """Train, distill and predict with a PyTorch classifier.

    In :meth:`train` with a distillation target, every private mini-batch step adds
    ``weight * kd_loss`` on the next proxy mini-batch (cycling through the proxy
    samples), so private cross-entropy and distillation are optimised jointly.

    If the model has ``body`` and ``head`` submodules (logits ``= head(body(x))``, as for
    every :class:`~clients.models.split.SplitModel`), the learner also offers
    :meth:`embed`, :attr:`feature_dim`, :meth:`get_head`, :meth:`set_head`,
    :meth:`predict_from_features` and ``train(..., aux_loss=...)``; on any other module
    these raise a :class:`NoFeatureSplitError` (a ``TypeError``).

    Parameters
    ----------
    model : torch.nn.Module
        Maps ``(N, C, H, W)`` float32 inputs to ``(N, num_classes)`` logits; a
        :class:`~clients.models.split.SplitModel` or any module with ``body``/``head``.
    lr : float (default: 0.05)
        Learning rate.
    optimizer : str (default: "sgd")
        ``"sgd"`` (momentum 0.9), ``"adam"`` or ``"adamw"``; created afresh per call.
    batch_size : int (default: 64)
        Mini-batch size for private and proxy batches.
    weight_decay : float (default: 5e-4)
        L2 penalty passed to the optimizer.
    device : str (default: "cpu")
        Torch device.
    seed : int (default: 0)
        Seed of the batch shuffling.
    dp : DPSGD, optional
        Record-level differential privacy (DP-SGD with Opacus, see
        :mod:`clients.learners.dpsgd`): the model is made DP-compatible (BatchNorm
        becomes GroupNorm, ...), private batches are Poisson-sampled with rate
        ``batch_size / N``, their per-sample gradients clipped and noised; distillation
        on public proxy inputs is not. :meth:`privacy_spent` reports epsilon.
    architecture : str, optional
        The model's architecture name (FedDF groups clients by it); default: the model's
        ``architecture`` attribute (every zoo model has one), else its class name.
    """

    framework = "pytorch"

    def __init__(
        self,
        model: torch.nn.Module,
        lr: float = 0.05,
        optimizer: str = "sgd",
        batch_size: int = 64,
        weight_decay: float = 5e-4,
        device: str = "cpu",
        seed: int = 0,
        dp: DPSGD | None = None,
        architecture: str | None = None,
    ) -> None:
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
        if lr <= 0 or batch_size < 1:
            raise ValueError("lr must be positive and batch_size at least 1")
        if dp is not None:
            model = make_private_compatible(model)
        self.architecture = str(architecture or getattr(model, "architecture", None)
                                or type(model).__name__)
        self.model = model.to(device)
        self.dp = dp
        self._privacy = None if dp is None else RecordPrivacy(self.model, dp)
        self.lr = float(lr)
        self.optimizer_name = optimizer
        self.batch_size = int(batch_size)
        self.weight_decay = float(weight_decay)
        self.device = torch.device(device)
        self._generator = torch.Generator().manual_seed(int(seed))
        self._calls = 0

    def reseed(self, seed: int) -> None:
        """Reset the seed of the batch order and of dropout (e.g. per round, so they differ)."""
        self._generator.manual_seed(int(seed))
        self._calls = 0

    def _optimizer(self, lr_scale: float) -> torch.optim.Optimizer:
        lr = self.lr * lr_scale
        params = self.model.parameters()
        if self.optimizer_name == "sgd":
            return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=self.weight_decay)
        if self.optimizer_name == "adam":
            return torch.optim.Adam(params, lr=lr, weight_decay=self.weight_decay)
        return torch.optim.AdamW(params, lr=lr, weight_decay=self.weight_decay)

    def _batches(self, n: int) -> Iterator[torch.Tensor]:
        order = torch.randperm(n, generator=self._generator)
        for start in range(0, n, self.batch_size):
            yield order[start : start + self.batch_size]

    def _proxy_stream(self, n: int) -> Iterator[torch.Tensor]:
        while True:
            yield from self._batches(n)

    def _split(self, what: str) -> tuple[torch.nn.Module, torch.nn.Module]:
        """The model's ``(body, head)``, or a :class:`NoFeatureSplitError` naming ``what``."""
        body = getattr(self.model, "body", None)
        head = getattr(self.model, "head", None)
        if not isinstance(body, torch.nn.Module) or not isinstance(head, torch.nn.Module):
            raise NoFeatureSplitError(
                f"TorchLearner.{what} needs a model with `body` and `head` submodules "
                f"(features = body(x), logits = head(features)); "
                f"{type(self.model).__name__} has none: wrap it in "
                f"clients.models.SplitModel(body, head)."
            )
        return body, head

    @property
    def feature_dim(self) -> int:
        """Width of the features :meth:`embed` returns (the head's input width).

        Read from the model's ``feature_dim`` attribute, else the head's ``in_features``.

        Raises
        ------
        NoFeatureSplitError
            If the model has no ``body``/``head`` split or its feature width is unknown.
        """
        _, head = self._split("feature_dim")
        dim = getattr(self.model, "feature_dim", None)
        if dim is None:
            dim = getattr(head, "in_features", None)
        if dim is None:
            raise NoFeatureSplitError(
                f"TorchLearner.feature_dim: {type(self.model).__name__} has no feature_dim "
                f"attribute and its {type(head).__name__} head no in_features."
            )
        return int(dim)

    @_seeded
    def train(
        self,
        x: np.ndarray,
        y: np.ndarray,
        epochs: int,
        distill: DistillTarget | None = None,
        lr_scale: float = 1.0,
        aux_loss: AuxLoss | None = None,
    ) -> dict[str, float]:
        """Train on private data for ``epochs``, optionally with joint distillation.

        Parameters
        ----------
        x, y : numpy.ndarray
            Private inputs ``(N, C, H, W)`` and integer labels ``(N,)``.
        epochs : int
            Passes over the private data.
        distill : DistillTarget, optional
            Proxy soft targets to distill towards jointly (see the class docstring).
        lr_scale : float (default: 1.0)
            Factor on the learning rate for this call.
        aux_loss : callable, optional
            ``aux_loss(features, logits, labels) -> scalar tensor`` on each private batch
            (``features = model.body(x)``, ``logits = model.head(features)``), added to
            its loss; e.g. FedProto's distance to the global class prototypes. Needs a
            model with a ``body``/``head`` split. Without it the model is called as a whole.

        Returns
        -------
        dict[str, float]
            ``train_loss`` (mean private cross-entropy) and ``kd_loss`` (mean
            distillation loss, 0 without a target); with ``aux_loss`` also ``aux_loss``
            (its mean). Under DP-SGD only ``kd_loss`` (the others average private
            records and are not DP).

        Raises
        ------
        ValueError
            If ``x`` and ``y`` differ in length, or ``aux_loss`` returns a non-scalar.
        NoFeatureSplitError
            If ``aux_loss`` is given and the model has no ``body``/``head`` split.
        """
        if len(x) != len(y):
            raise ValueError(f"{len(x)} inputs but {len(y)} labels")
        body = head = None
        if aux_loss is not None:
            body, head = self._split("train(aux_loss=...)")
        xt = torch.tensor(x, dtype=torch.float32)
        yt = torch.tensor(y, dtype=torch.long)
        stream, px, pp = None, None, None
        if distill is not None and distill.weight > 0 and len(distill.x):
            px = torch.tensor(distill.x, dtype=torch.float32)
            pp = torch.as_tensor(distill.probs, dtype=torch.float32)
            stream = self._proxy_stream(len(px))
        sums = {"ce": 0.0, "kd": 0.0, "aux": 0.0}

        def private_loss(idx: torch.Tensor) -> torch.Tensor:
            labels = yt[idx].to(self.device)
            if body is None:
                loss = F.cross_entropy(self.model(xt[idx].to(self.device)), labels)
                sums["ce"] += loss.item()
                return loss
            features = body(xt[idx].to(self.device))
            out = head(features)
            loss = F.cross_entropy(out, labels)
            sums["ce"] += loss.item()
            aux = aux_loss(features, out, labels)
            if not isinstance(aux, torch.Tensor) or aux.numel() != 1:
                got = (f"shape {tuple(aux.shape)}" if isinstance(aux, torch.Tensor)
                       else type(aux).__name__)
                raise ValueError("aux_loss(features, logits, labels) must return a "
                                 f"scalar tensor, got {got}")
            aux = aux.reshape(())
            sums["aux"] += aux.item()
            return loss + aux

        def public_loss() -> torch.Tensor:
            pidx = next(stream)
            if len(pidx) < 2:
                pidx = next(stream)
            kd = kd_loss(self.model(px[pidx].to(self.device)), pp[pidx].to(self.device),
                         distill.temperature)
            sums["kd"] += kd.item()
            return distill.weight * kd

        opt = self._optimizer(lr_scale)
        self.model.train()
        if self._privacy is None:
            steps = 0
            for _ in range(int(epochs)):
                for idx in self._batches(len(xt)):
                    if len(idx) < 2:
                        continue  # BatchNorm cannot train on a single sample
                    opt.zero_grad()
                    loss = private_loss(idx)
                    if stream is not None:
                        loss = loss + public_loss()
                    loss.backward()
                    opt.step()
                    steps += 1
            metrics = {}
        else:
            steps, metrics = self._train_private(opt, len(xt), int(epochs), private_loss,
                                                 public_loss if stream is not None else None)
        steps = max(steps, 1)
        metrics["kd_loss"] = sums["kd"] / steps   # public proxy inputs: post-processing
        if self.dp is None:   # means over private records: not DP, kept on the client
            metrics["train_loss"] = sums["ce"] / steps
            if aux_loss is not None:
                metrics["aux_loss"] = sums["aux"] / steps
        return metrics

    def _train_private(self, opt, num_examples: int, epochs: int, private_loss,
                       public_loss) -> tuple[int, dict[str, float]]:
        """DP-SGD epochs (Poisson batches); once the budget is spent, the remaining
        steps train on the public proxy term alone (if any)."""
        privacy = self._privacy
        rate = sample_rate(self.batch_size, num_examples)
        wanted = epochs * max(1, int(1 / rate))
        allowed = privacy.steps_left(rate, wanted)
        dp_opt = privacy.optimizer(opt, rate, num_examples)
        private_steps = 0
        for _ in range(epochs):
            for idx in privacy.batches(num_examples, rate, self._generator):
                if private_steps < allowed:
                    privacy.step(dp_opt, rate, len(idx), lambda i=idx: private_loss(i),
                                 public_loss)
                    private_steps += 1
                elif public_loss is not None:
                    opt.zero_grad()
                    public_loss().backward()
                    opt.step()
        return private_steps, {"dp_steps": float(private_steps),
                               "dp_budget_exhausted": float(allowed < wanted)}

    def privacy_spent(self) -> dict[str, float]:
        """Record-level privacy spent so far: ``{"epsilon", "delta", "steps",
        "releases"}`` (DP-SGD steps and :meth:`account_release` releases; empty without
        DP-SGD)."""
        if self._privacy is None:
            return {}
        return {"epsilon": self._privacy.epsilon(), "delta": self.dp.delta,
                "steps": float(self._privacy.steps),
                "releases": float(self._privacy.releases)}

    def account_release(self, noise_multiplier: float) -> bool:
        """Account a release of statistics of the private records (e.g. class
        prototypes, :mod:`clients.learners.dp_prototypes`) in the DP-SGD accountant: one
        Gaussian mechanism of ``noise_multiplier`` (noise std over L2 sensitivity) at
        sample rate 1, if it fits in ``max_epsilon``.

        Returns
        -------
        bool
            Whether it was accounted: if not, the budget is spent and nothing computed
            from the private records may be released.

        Raises
        ------
        ValueError
            Without DP-SGD (there is no accountant).
        """
        if self._privacy is None:
            raise ValueError("account_release needs a learner trained with DP-SGD (dp=DPSGD)")
        return self._privacy.release(noise_multiplier)

    @_seeded
    def distill(self, target: DistillTarget, epochs: int) -> dict[str, float]:
        """Train on the proxy soft targets alone for ``epochs`` passes."""
        px = torch.tensor(target.x, dtype=torch.float32)
        pp = torch.as_tensor(target.probs, dtype=torch.float32)
        opt = self._optimizer(1.0)
        self.model.train()
        kd_sum, steps = 0.0, 0
        for _ in range(int(epochs)):
            for idx in self._batches(len(px)):
                if len(idx) < 2:
                    continue
                opt.zero_grad()
                loss = kd_loss(self.model(px[idx].to(self.device)), pp[idx].to(self.device),
                               target.temperature)
                loss.backward()
                opt.step()
                kd_sum += loss.item()
                steps += 1
        return {"kd_loss": kd_sum / max(steps, 1)}

    @torch.no_grad()
    def predict_logits(self, x: np.ndarray) -> np.ndarray:
        """Logits ``(N, num_classes)`` as float32, computed in eval mode."""
        self.model.eval()
        outs = []
        xt = torch.tensor(x, dtype=torch.float32)
        for start in range(0, len(xt), _BATCH):
            outs.append(self.model(xt[start : start + _BATCH].to(self.device)).cpu())
        if not outs:
            raise ValueError("predict_logits needs at least one input")
        return torch.cat(outs).numpy().astype(np.float32)

    @torch.no_grad()
    def embed(self, x: np.ndarray) -> np.ndarray:
        """Body features of ``x``, computed in eval mode without gradients.

        Parameters
        ----------
        x : numpy.ndarray
            Inputs ``(N, C, H, W)``.

        Returns
        -------
        numpy.ndarray
            ``(N, feature_dim)`` float32 (``(0, feature_dim)`` for no inputs).

        Raises
        ------
        NoFeatureSplitError
            If the model has no ``body``/``head`` split.
        """
        body, _ = self._split("embed")
        dim = self.feature_dim
        self.model.eval()
        xt = torch.tensor(x, dtype=torch.float32)
        outs = [body(xt[start : start + _BATCH].to(self.device)).cpu()
                for start in range(0, len(xt), _BATCH)]
        if not outs:
            return np.zeros((0, dim), dtype=np.float32)
        features = torch.cat(outs)
        if features.ndim != 2 or features.shape[1] != dim:
            raise ValueError(f"the model's body returned features of shape "
                             f"{tuple(features.shape)}, expected (N, {dim})")
        return features.numpy().astype(np.float32)

    @torch.no_grad()
    def predict_from_features(self, features: np.ndarray) -> np.ndarray:
        """Logits of the head on given features, in eval mode.

        Parameters
        ----------
        features : numpy.ndarray
            ``(N, feature_dim)`` features, e.g. from :meth:`embed` or class prototypes.

        Returns
        -------
        numpy.ndarray
            ``(N, num_classes)`` float32 logits.

        Raises
        ------
        ValueError
            If ``features`` is not ``(N, feature_dim)``.
        NoFeatureSplitError
            If the model has no ``body``/``head`` split.
        """
        _, head = self._split("predict_from_features")
        dim = self.feature_dim
        ft = torch.as_tensor(np.asarray(features), dtype=torch.float32)
        if ft.ndim != 2 or ft.shape[1] != dim:
            raise ValueError(f"features must have shape (N, {dim}), got {tuple(ft.shape)}")
        self.model.eval()
        outs = [head(ft[start : start + _BATCH].to(self.device)).cpu()
                for start in range(0, len(ft), _BATCH)] or [head(ft.to(self.device)).cpu()]
        return torch.cat(outs).numpy().astype(np.float32)

    def get_head(self) -> dict[str, np.ndarray]:
        """The head's ``state_dict`` as numpy arrays (keys relative to the head).

        Raises
        ------
        NoFeatureSplitError
            If the model has no ``body``/``head`` split.
        """
        _, head = self._split("get_head")
        return {k: v.detach().cpu().numpy().copy() for k, v in head.state_dict().items()}

    def set_head(self, head_state: dict[str, np.ndarray]) -> None:
        """Load head parameters from :meth:`get_head` (e.g. another client's head).

        Parameters
        ----------
        head_state : dict[str, numpy.ndarray]
            Exactly the head's ``state_dict`` names, with matching shapes.

        Raises
        ------
        ValueError
            If names or shapes differ from this learner's head.
        NoFeatureSplitError
            If the model has no ``body``/``head`` split.
        """
        _, head = self._split("set_head")
        own = head.state_dict()
        missing = sorted(set(own) - set(head_state))
        unexpected = sorted(set(head_state) - set(own))
        if missing or unexpected:
            raise ValueError(f"head state names do not match: missing {missing}, "
                             f"unexpected {unexpected}")
        wrong = {k: (tuple(np.shape(v)), tuple(own[k].shape))
                 for k, v in head_state.items() if tuple(np.shape(v)) != tuple(own[k].shape)}
        if wrong:
            detail = ", ".join(f"{k}: got {g}, expected {e}" for k, (g, e) in wrong.items())
            raise ValueError(f"head state shapes do not match: {detail}")
        head.load_state_dict({k: torch.as_tensor(np.asarray(v)) for k, v in head_state.items()},
                             strict=True)

    def get_weights(self) -> dict[str, np.ndarray]:
        """The model's ``state_dict`` (parameters and buffers) as numpy arrays: what
        FedDF averages (no privacy accounting, unlike :meth:`get_state`)."""
        return {k: v.detach().cpu().numpy().copy() for k, v in self.model.state_dict().items()}

    def set_weights(self, weights: dict[str, np.ndarray]) -> None:
        """Load :meth:`get_weights` arrays (strict: names and shapes must match).

        Raises
        ------
        ValueError
            If names or shapes differ from this model's, naming the first ones.
        """
        own = self.model.state_dict()
        missing, extra = sorted(set(own) - set(weights)), sorted(set(weights) - set(own))
        wrong = [k for k in own if k in weights and tuple(np.shape(weights[k])) != own[k].shape]
        if missing or extra or wrong:
            raise ValueError(f"the weights do not fit this {self.architecture} model: missing "
                             f"{missing[:5]}, unexpected {extra[:5]}, wrong shape {wrong[:5]}")
        self.model.load_state_dict({k: torch.as_tensor(np.asarray(weights[k])).to(
            dtype=v.dtype, device=v.device) for k, v in own.items()}, strict=True)

    def get_state(self) -> dict[str, np.ndarray]:
        """The ``state_dict`` (parameters and buffers) as numpy arrays; with DP-SGD also
        the accountant's history and release count
        (:data:`~clients.learners.dpsgd.STATE_KEY`,
        :data:`~clients.learners.dpsgd.RELEASES_KEY`)."""
        state = {k: v.detach().cpu().numpy().copy() for k, v in self.model.state_dict().items()}
        if self._privacy is not None:
            state.update(self._privacy.state())
        return state

    def set_state(self, state: dict[str, np.ndarray]) -> None:
        """Load a state from :meth:`get_state` (strict: names and shapes must match)."""
        state = dict(state)
        history = state.pop(STATE_KEY, None)
        releases = state.pop(RELEASES_KEY, None)
        if (history is None) != (self._privacy is None):
            raise ValueError("the saved state was trained " + ("without" if history is None
                             else "with") + " DP-SGD, this learner is the other kind")
        tensors = {k: torch.as_tensor(np.asarray(v)) for k, v in state.items()}
        self.model.load_state_dict(tensors, strict=True)
        if history is not None:
            self._privacy.load_state(history, releases)
