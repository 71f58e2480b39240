"""A :class:`~clients.learners.base.Learner` for any ``torch.nn.Module`` classifier."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from ..kd_loss import kd_loss
from .base import DistillTarget

OPTIMIZERS = ("sgd", "adam", "adamw")


class TorchLearner:
    """Train, distill and predict with a PyTorch classifier.

    In :meth:`train` with a distillation target, every private mini-batch step adds
    ``weight * kd_loss`` on the next proxy mini-batch (cycling through the proxy
    samples), so private cross-entropy and distillation are optimised jointly.

    Parameters
    ----------
    model : torch.nn.Module
        Maps ``(N, C, H, W)`` float32 inputs to ``(N, num_classes)`` logits.
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
    ) -> None:
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
        if lr <= 0 or batch_size < 1:
            raise ValueError("lr must be positive and batch_size at least 1")
        self.model = model.to(device)
        self.lr = float(lr)
        self.optimizer_name = optimizer
        self.batch_size = int(batch_size)
        self.weight_decay = float(weight_decay)
        self.device = torch.device(device)
        self._generator = torch.Generator().manual_seed(int(seed))

    def reseed(self, seed: int) -> None:
        """Reset the batch-shuffling seed (e.g. per round, so orders differ)."""
        self._generator.manual_seed(int(seed))

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

    def train(
        self,
        x: np.ndarray,
        y: np.ndarray,
        epochs: int,
        distill: DistillTarget | None = None,
        lr_scale: float = 1.0,
    ) -> dict[str, float]:
        """Train on private data for ``epochs``, optionally with joint distillation.

        Returns
        -------
        dict[str, float]
            ``train_loss`` (mean private cross-entropy) and ``kd_loss`` (mean
            distillation loss, 0 without a target).
        """
        if len(x) != len(y):
            raise ValueError(f"{len(x)} inputs but {len(y)} labels")
        xt = torch.tensor(x, dtype=torch.float32)
        yt = torch.tensor(y, dtype=torch.long)
        stream, px, pp = None, None, None
        if distill is not None and distill.weight > 0 and len(distill.x):
            px = torch.tensor(distill.x, dtype=torch.float32)
            pp = torch.as_tensor(distill.probs, dtype=torch.float32)
            stream = self._proxy_stream(len(px))
        opt = self._optimizer(lr_scale)
        self.model.train()
        ce_sum, kd_sum, steps = 0.0, 0.0, 0
        for _ in range(int(epochs)):
            for idx in self._batches(len(xt)):
                if len(idx) < 2:
                    continue  # BatchNorm cannot train on a single sample
                opt.zero_grad()
                out = self.model(xt[idx].to(self.device))
                loss = F.cross_entropy(out, yt[idx].to(self.device))
                ce_sum += loss.item()
                if stream is not None:
                    pidx = next(stream)
                    if len(pidx) < 2:
                        pidx = next(stream)
                    s_out = self.model(px[pidx].to(self.device))
                    kd = kd_loss(s_out, pp[pidx].to(self.device), distill.temperature)
                    kd_sum += kd.item()
                    loss = loss + distill.weight * kd
                loss.backward()
                opt.step()
                steps += 1
        steps = max(steps, 1)
        return {"train_loss": ce_sum / steps, "kd_loss": kd_sum / steps}

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
        for start in range(0, len(xt), 512):
            outs.append(self.model(xt[start : start + 512].to(self.device)).cpu())
        if not outs:
            raise ValueError("predict_logits needs at least one input")
        return torch.cat(outs).numpy().astype(np.float32)

    def get_state(self) -> dict[str, np.ndarray]:
        """The ``state_dict`` (parameters and buffers) as numpy arrays."""
        return {k: v.detach().cpu().numpy().copy() for k, v in self.model.state_dict().items()}

    def set_state(self, state: dict[str, np.ndarray]) -> None:
        """Load a state from :meth:`get_state` (strict: names and shapes must match)."""
        tensors = {k: torch.as_tensor(np.asarray(v)) for k, v in state.items()}
        self.model.load_state_dict(tensors, strict=True)
