"""Record-level differential privacy inside a torch learner: DP-SGD with Opacus.

DP-SGD (Abadi et al., CCS'16, https://arxiv.org/abs/1607.00133): Poisson-sampled
batches, per-sample gradients clipped to ``max_grad_norm``, Gaussian noise
``noise_multiplier * max_grad_norm`` on their sum; Opacus's RDP accountant (Mironov et
al., 2019) counts the steps. Only gradients of private records are clipped and noised;
distillation gradients on public proxy inputs are added after the noise (docs/dp_sgd.md).
The same accountant counts the client's other releases of private statistics (class
prototypes: :mod:`clients.learners.dp_prototypes`), so epsilon and the budget cover both.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from opacus import GradSampleModule
from opacus.accountants import RDPAccountant
from opacus.accountants.analysis import rdp as rdp_analysis
from opacus.accountants.utils import get_noise_multiplier
from opacus.optimizers import DPOptimizer
from opacus.utils.uniform_sampler import UniformWithReplacementSampler
from opacus.validators import ModuleValidator

STATE_KEY = "__dpsgd_history__"
"""Learner-state key of the accountant's ``(noise_multiplier, sample_rate, steps)`` rows."""
RELEASES_KEY = "__dpsgd_releases__"
"""Learner-state key of how many of those steps were releases (:meth:`RecordPrivacy.release`)."""


@dataclass(frozen=True)
class DPSGD:
    """DP-SGD settings of one client (record level: one training example is the unit).

    Parameters
    ----------
    noise_multiplier : float
        ``sigma / max_grad_norm`` of the Gaussian noise on each step's clipped sum
        (:func:`calibrate_noise_multiplier` finds it for a target epsilon).
    max_grad_norm : float (default: 1.0)
        L2 bound of each example's gradient.
    delta : float (default: 1e-5)
        The delta epsilon is reported at.
    max_epsilon : float, optional
        Budget: private steps and releases stop before epsilon at ``delta`` would exceed
        it (training on public proxy data continues). Default: no budget.
    proto_noise_multiplier : float (default: 10.0)
        ``z`` of a class-prototype release (FedProto, FedTGP, FedGH): noise ``z * C`` on
        each class's sum of clipped features and ``z`` on each class count
        (:mod:`clients.learners.dp_prototypes`).
    proto_clip_norm : float (default: 1.0)
        ``C``, the L2 bound of each record's feature vector in that release.
    """

    noise_multiplier: float
    max_grad_norm: float = 1.0
    delta: float = 1e-5
    max_epsilon: float | None = None
    proto_noise_multiplier: float = 10.0
    proto_clip_norm: float = 1.0

    def __post_init__(self) -> None:
        if not self.noise_multiplier > 0:
            raise ValueError(f"noise_multiplier must be positive, got {self.noise_multiplier}")
        if not self.max_grad_norm > 0:
            raise ValueError(f"max_grad_norm must be positive, got {self.max_grad_norm}")
        if not 0.0 < self.delta < 1.0:
            raise ValueError(f"delta must lie in (0, 1), got {self.delta}")
        if self.max_epsilon is not None and not self.max_epsilon > 0:
            raise ValueError(f"max_epsilon must be positive, got {self.max_epsilon}")
        for name in ("proto_noise_multiplier", "proto_clip_norm"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")


def sample_rate(batch_size: int, num_examples: int) -> float:
    """Poisson sampling rate ``q = batch_size / num_examples`` (at most 1)."""
    return min(1.0, batch_size / max(int(num_examples), 1))


def steps_per_epoch(rate: float) -> int:
    """Steps of one epoch at sampling rate ``rate`` (Opacus's ``1 / q``)."""
    return max(1, int(1 / rate))


def history_epsilon(history: Sequence[tuple[float, float, int]], delta: float) -> float:
    """Epsilon at ``delta`` of ``(noise_multiplier, sample_rate, steps)`` rows composed
    (what Opacus's ``RDPAccountant`` gives for that history; 0 for none)."""
    rows = [row for row in history if row[2] > 0]
    if not rows:
        return 0.0
    orders = RDPAccountant.DEFAULT_ALPHAS
    rdp = sum(rdp_analysis.compute_rdp(q=q, noise_multiplier=z, steps=s, orders=orders)
              for z, q, s in rows)
    with warnings.catch_warnings():   # "optimal order is the largest alpha": small eps
        warnings.filterwarnings("ignore", message="Optimal order")
        return float(rdp_analysis.get_privacy_spent(orders=orders, rdp=rdp, delta=delta)[0])


def calibrate_noise_multiplier(target_epsilon: float, delta: float, rate: float,
                               steps: int, fixed: Sequence[tuple[float, float, int]] = ()
                               ) -> float:
    """The noise multiplier that spends ``target_epsilon`` at ``delta`` in ``steps``
    steps of sampling rate ``rate`` (Opacus's ``get_noise_multiplier``, RDP).

    Parameters
    ----------
    target_epsilon, delta : float
        The budget to spend.
    rate : float
        Sampling rate of the steps.
    steps : int
        Planned DP-SGD steps.
    fixed : sequence of (noise_multiplier, sample_rate, steps), optional
        Further planned mechanisms whose noise is given (the prototype releases,
        :func:`clients.learners.dp_prototypes.planned_releases`): the steps' multiplier
        is then the smallest (to 0.01 in epsilon, as Opacus's search) that keeps the
        whole plan within ``target_epsilon``.

    Raises
    ------
    ValueError
        If ``steps < 1``, or the ``fixed`` rows alone spend ``target_epsilon``.
    """
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    if not fixed:
        with warnings.catch_warnings():   # its search tries tiny epsilons at the largest order
            warnings.filterwarnings("ignore", message="Optimal order")
            return float(get_noise_multiplier(target_epsilon=target_epsilon,
                                              target_delta=delta, sample_rate=rate,
                                              steps=int(steps), accountant="rdp"))
    fixed = list(fixed)
    alone = history_epsilon(fixed, delta)
    if alone >= target_epsilon:
        raise ValueError(f"the fixed releases alone spend epsilon {alone:.3f} >= the target "
                         f"{target_epsilon} at delta {delta}: give them more noise")

    def spent(z: float) -> float:
        return history_epsilon(fixed + [(z, rate, int(steps))], delta)

    low, high = 0.0, 10.0
    while spent(high) > target_epsilon:
        low, high = high, 2 * high
    while spent(high) < target_epsilon - 0.01 and high - low > 1e-6:
        middle = (low + high) / 2
        if spent(middle) > target_epsilon:
            low = middle
        else:
            high = middle
    return float(high)


def _out_of_place_residuals(model: torch.nn.Module) -> None:
    """Rewrite torchvision's in-place residual additions (``out += identity``), which
    Opacus's backward hooks cannot follow, as the same out-of-place additions."""
    from torchvision.models.mobilenetv3 import InvertedResidual
    from torchvision.models.resnet import BasicBlock, Bottleneck

    def resnet_forward(block):
        def forward(x):
            out = block.bn1(block.conv1(x))
            out = block.relu(out)
            if isinstance(block, Bottleneck):
                out = block.relu(block.bn2(block.conv2(out)))
                out = block.bn3(block.conv3(out))
            else:
                out = block.bn2(block.conv2(out))
            identity = x if block.downsample is None else block.downsample(x)
            return block.relu(out + identity)
        return forward

    def inverted_forward(block):
        def forward(x):
            out = block.block(x)
            return out + x if block.use_res_connect else out
        return forward

    for module in model.modules():
        if isinstance(module, (BasicBlock, Bottleneck)):
            module.forward = resnet_forward(module)
        elif isinstance(module, InvertedResidual):
            module.forward = inverted_forward(module)


def make_private_compatible(model: torch.nn.Module) -> torch.nn.Module:
    """The model with what DP-SGD cannot train replaced (Opacus's ``ModuleValidator.fix``:
    BatchNorm becomes GroupNorm, ``nn.MultiheadAttention`` Opacus's DP version) and no
    in-place activations or residual additions; a copy when anything changed.

    Raises
    ------
    ValueError
        If Opacus still finds modules it cannot compute per-sample gradients for.
    """
    if ModuleValidator.validate(model, strict=False):
        model = ModuleValidator.fix(model)
    if "torchvision" in type(model).__module__ or any(
            "torchvision" in type(m).__module__ for m in model.modules()):
        _out_of_place_residuals(model)
    for module in model.modules():
        if getattr(module, "inplace", False) is True:
            module.inplace = False
    errors = ModuleValidator.validate(model, strict=False)
    if errors:
        raise ValueError(f"DP-SGD cannot train {type(model).__name__}: "
                         + "; ".join(str(e) for e in errors))
    return model


class RecordPrivacy:
    """DP-SGD state of one learner: per-sample gradients, the accountant, the budget.

    Parameters
    ----------
    model : torch.nn.Module
        A model returned by :func:`make_private_compatible`.
    settings : DPSGD
        Noise, clipping, delta and budget.
    """

    def __init__(self, model: torch.nn.Module, settings: DPSGD) -> None:
        self.settings = settings
        self._model = GradSampleModule(model, loss_reduction="mean")
        self._model.disable_hooks()       # on only while a private batch runs
        self.accountant = RDPAccountant()
        self.releases = 0

    def epsilon(self) -> float:
        """Epsilon spent so far at the settings' delta (0 before any private step)."""
        if not self.accountant.history:
            return 0.0
        with warnings.catch_warnings():   # "optimal order is the largest alpha": small eps
            warnings.filterwarnings("ignore", message="Optimal order")
            return float(self.accountant.get_epsilon(self.settings.delta))

    @property
    def steps(self) -> int:
        """Private (noised) DP-SGD steps taken so far (releases not counted)."""
        return int(sum(row[2] for row in self.accountant.history)) - self.releases

    def _epsilon_after(self, extra: int, rate: float,
                       noise_multiplier: float | None = None) -> float:
        z = self.settings.noise_multiplier if noise_multiplier is None else noise_multiplier
        return history_epsilon(list(self.accountant.history) + [(z, rate, extra)],
                               self.settings.delta)

    def release(self, noise_multiplier: float) -> bool:
        """Account one release of private statistics by the Gaussian mechanism with
        ``noise_multiplier`` (noise std over L2 sensitivity) on all records (sample rate
        1), if it fits in ``max_epsilon``.

        Returns
        -------
        bool
            Whether it was accounted; if not, the caller must release nothing.
        """
        if not noise_multiplier > 0:
            raise ValueError(f"noise_multiplier must be positive, got {noise_multiplier}")
        budget = self.settings.max_epsilon
        if budget is not None and self._epsilon_after(1, 1.0, noise_multiplier) > budget:
            return False
        self.accountant.step(noise_multiplier=float(noise_multiplier), sample_rate=1.0)
        self.releases += 1
        return True

    def steps_left(self, rate: float, wanted: int) -> int:
        """How many of ``wanted`` further steps at ``rate`` fit in ``max_epsilon``."""
        budget = self.settings.max_epsilon
        if budget is None or wanted <= 0:
            return max(wanted, 0)
        if self._epsilon_after(wanted, rate) <= budget:
            return wanted
        low, high = 0, wanted              # epsilon(low) fits, epsilon(high) does not
        while high - low > 1:
            middle = (low + high) // 2
            if self._epsilon_after(middle, rate) <= budget:
                low = middle
            else:
                high = middle
        return low

    def batches(self, num_examples: int, rate: float, generator: torch.Generator
                ) -> Iterator[torch.Tensor]:
        """One epoch of Poisson-sampled batches (Opacus's uniform sampler)."""
        sampler = UniformWithReplacementSampler(num_samples=int(num_examples),
                                                sample_rate=rate, generator=generator)
        for indices in sampler:
            yield torch.as_tensor(indices, dtype=torch.long)

    def optimizer(self, optimizer: torch.optim.Optimizer, rate: float,
                  num_examples: int) -> DPOptimizer:
        """``optimizer`` wrapped to clip and noise (expected batch ``rate * N``)."""
        return DPOptimizer(optimizer, noise_multiplier=self.settings.noise_multiplier,
                           max_grad_norm=self.settings.max_grad_norm,
                           expected_batch_size=max(1, round(rate * num_examples)))

    def step(self, optimizer: DPOptimizer, rate: float, batch_size: int,
             private_loss: Callable[[], torch.Tensor],
             public_loss: Callable[[], torch.Tensor] | None = None) -> None:
        """One DP-SGD step: the clipped, noised gradient of ``private_loss`` (a mean over
        the batch's examples) plus the plain gradient of ``public_loss`` (proxy data).

        An empty Poisson batch still takes a noise-only step: skipping it would depend
        on the data.
        """
        with warnings.catch_warnings():   # the first layer's input needs no gradient
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            self._step(optimizer, rate, batch_size, private_loss, public_loss)

    def _step(self, optimizer, rate, batch_size, private_loss, public_loss) -> None:
        params = optimizer.params
        optimizer.zero_grad()
        public = None
        if public_loss is not None:
            public = torch.autograd.grad(public_loss(), params, allow_unused=True)
        if batch_size == 0:
            for p in params:
                p.grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype, device=p.device)
        else:
            self._model.enable_hooks()
            try:
                private_loss().backward()
            finally:
                self._model.disable_hooks()
        optimizer.pre_step()              # clip, sum, noise, divide by the expected batch
        if public is not None:
            for p, g in zip(params, public):
                if g is not None:
                    p.grad.add_(g)
        optimizer.original_optimizer.step()
        optimizer.zero_grad()
        self.accountant.step(noise_multiplier=self.settings.noise_multiplier,
                             sample_rate=rate)

    def state(self) -> dict[str, np.ndarray]:
        """The accountant's history as a float64 ``(rows, 3)`` array (:data:`STATE_KEY`)
        and the release count (:data:`RELEASES_KEY`), for checkpoints."""
        history = np.asarray(self.accountant.history, dtype=np.float64).reshape(-1, 3)
        return {STATE_KEY: history, RELEASES_KEY: np.array([self.releases], dtype=np.int64)}

    def load_state(self, history: np.ndarray, releases: np.ndarray | None = None) -> None:
        """Restore the accountant's history and release count from :meth:`state` (a
        state saved before releases existed has none)."""
        rows = np.asarray(history, dtype=np.float64).reshape(-1, 3)
        self.accountant.history = [(float(z), float(q), int(s)) for z, q, s in rows]
        self.releases = 0 if releases is None else int(np.asarray(releases).reshape(-1)[0])


__all__ = ["DPSGD", "RELEASES_KEY", "RecordPrivacy", "STATE_KEY", "calibrate_noise_multiplier",
           "history_epsilon", "make_private_compatible", "sample_rate", "steps_per_epoch"]
