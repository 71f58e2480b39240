"""Knowledge-distillation loss (Hinton et al., 2015) for soft consensus targets."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def kd_loss(student_logits: torch.Tensor, target_probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """Temperature-scaled KL divergence ``T^2 * KL(target || softmax(student / T))``.

    The ``T^2`` factor keeps the gradient magnitude comparable to a cross-entropy
    term when the temperature changes (Hinton et al., "Distilling the Knowledge in a
    Neural Network", 2015). The KL is averaged over the batch.

    Parameters
    ----------
    student_logits : torch.Tensor
        Student scores, ``(batch, num_classes)``.
    target_probs : torch.Tensor
        Soft targets (rows sum to one), ``(batch, num_classes)``.
    temperature : float
        Distillation temperature ``T > 0``.

    Returns
    -------
    torch.Tensor
        A scalar loss.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if student_logits.shape != target_probs.shape:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} and targets "
            f"{tuple(target_probs.shape)} must have the same shape"
        )
    log_student = F.log_softmax(student_logits / temperature, dim=1)
    kl = F.kl_div(log_student, target_probs, reduction="batchmean")
    return kl * temperature**2
