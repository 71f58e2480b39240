"""FedDF's server step: distill a student model toward the averaged logits of an ensemble.

Lin et al., *Ensemble Distillation for Robust Model Fusion in Federated Learning*, NeurIPS
2020, https://arxiv.org/abs/2006.07242: KL to the softmax of the teachers' mean logits
(AVGLOGITS) on unlabeled public inputs, Adam with cosine annealing, early stopping on a
validation slice. Torch + numpy, no Flower; ``docs/feddf.md`` has the details.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .distill_settings import DistillSettings
from .kd_loss import kd_loss
from .server_training import load_state_arrays, state_arrays


def predict_logits(model: nn.Module, x: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """A model's logits on ``x`` in eval mode, ``(N, C)`` float32 (mode restored after)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = []
    with torch.no_grad():
        for start in range(0, len(x), batch_size):
            batch = torch.as_tensor(np.asarray(x[start:start + batch_size], dtype=np.float32))
            out.append(model(batch.to(device)).float().cpu())
    model.train(was_training)
    return torch.cat(out).numpy() if out else np.zeros((0, 0), np.float32)


def kl_to_ensemble(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                   temperature: float) -> torch.Tensor:
    """``T^2 KL(softmax(teacher / T) || softmax(student / T))``, averaged over the batch
    (the clients' :func:`~flhet_strategies.kd_loss.kd_loss` toward the ensemble)."""
    return kd_loss(student_logits, F.softmax(teacher_logits / temperature, dim=1), temperature)


def _score(logits: np.ndarray, labels: np.ndarray | None, target: np.ndarray,
           temperature: float) -> float:
    """Validation score (higher is better): accuracy with labels, else minus the KL."""
    if labels is not None:
        return float(np.mean(np.argmax(logits, axis=1) == labels))
    return -float(kl_to_ensemble(torch.from_numpy(logits), torch.from_numpy(target),
                                 temperature))


def distill(student: nn.Module, x: np.ndarray, teacher_logits: np.ndarray,
            x_val: np.ndarray, val_teacher_logits: np.ndarray,
            val_labels: np.ndarray | None = None, settings: DistillSettings | None = None,
            seed: int = 0) -> dict[str, Any]:
    """Distill ``student`` (in place) toward the ensemble's logits; keep its best state.

    Every step draws ``batch_size`` of the ``x`` rows (reshuffled per pass), minimises
    :func:`kl_to_ensemble`, and steps Adam under a cosine schedule over ``max_steps``.
    Every ``eval_every`` steps the student is scored on the validation slice (accuracy
    on ``val_labels`` if given, as the authors' code does, else agreement with the
    ensemble); after ``patience`` steps without a better score it stops. The student
    ends in the best state seen, the starting one included (the authors'
    ``return_best_model_on_val``), so distillation never lowers the validation score.

    Parameters
    ----------
    student : torch.nn.Module
        The model to distill (e.g. a group's FedAvg model).
    x : np.ndarray
        Unlabeled proxy inputs ``(N, ...)``.
    teacher_logits : np.ndarray
        The ensemble's mean logits on ``x``, ``(N, C)``.
    x_val, val_teacher_logits : np.ndarray
        The held-out validation slice and the ensemble's logits on it.
    val_labels : np.ndarray, optional
        Labels of the validation slice.
    settings : DistillSettings, optional
        Optimiser, schedule and early stopping.
    seed : int (default: 0)
        Seeds the batch order and dropout (torch's global RNG is restored after).

    Returns
    -------
    dict
        ``steps`` taken, ``best_step`` (0: the start was best), ``val_start`` and
        ``val_best`` scores, ``loss`` (mean of the last ``eval_every`` steps).

    Raises
    ------
    ValueError
        If shapes disagree, the inputs are empty or the logits are not finite.
    """
    s = settings or DistillSettings()
    teacher_logits = np.asarray(teacher_logits, dtype=np.float32)
    val_teacher_logits = np.asarray(val_teacher_logits, dtype=np.float32)
    if len(x) == 0 or teacher_logits.shape[0] != len(x) or teacher_logits.ndim != 2:
        raise ValueError(f"need (N, C) teacher logits for N = {len(x)} > 0 proxy inputs, got "
                         f"{teacher_logits.shape}")
    if len(x_val) == 0 or val_teacher_logits.shape != (len(x_val), teacher_logits.shape[1]):
        raise ValueError(f"need (M, C) validation logits for M = {len(x_val)} > 0 inputs, got "
                         f"{val_teacher_logits.shape}")
    if not (np.all(np.isfinite(teacher_logits)) and np.all(np.isfinite(val_teacher_logits))):
        raise ValueError("the ensemble's logits are not finite")
    if val_labels is not None:
        val_labels = np.asarray(val_labels, dtype=np.int64)
        if val_labels.shape != (len(x_val),):
            raise ValueError(f"val_labels must have shape ({len(x_val)},), got {val_labels.shape}")

    device = next(student.parameters()).device
    inputs = torch.as_tensor(np.asarray(x, dtype=np.float32))
    targets = torch.from_numpy(teacher_logits)
    best = _score(predict_logits(student, x_val), val_labels, val_teacher_logits, s.temperature)
    info: dict[str, Any] = {"steps": 0, "best_step": 0, "val_start": best, "val_best": best,
                            "loss": float("nan")}
    best_state, losses = state_arrays(student), []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        order_rng = torch.Generator().manual_seed(int(seed))
        optimizer = torch.optim.Adam(student.parameters(), lr=s.lr)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, s.max_steps)
        order = torch.randperm(len(inputs), generator=order_rng)
        cursor = 0
        student.train()
        for step in range(1, s.max_steps + 1):
            if cursor + s.batch_size > len(order) and cursor > 0:
                order, cursor = torch.randperm(len(inputs), generator=order_rng), 0
            index = order[cursor:cursor + s.batch_size]
            cursor += s.batch_size
            loss = kl_to_ensemble(student(inputs[index].to(device)), targets[index].to(device),
                                  s.temperature)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            losses.append(float(loss.detach()))
            info["steps"] = step
            if step % s.eval_every and step != s.max_steps:
                continue
            score = _score(predict_logits(student, x_val), val_labels, val_teacher_logits,
                           s.temperature)
            info["loss"] = float(np.mean(losses[-s.eval_every:]))
            if score > info["val_best"]:
                info.update(val_best=score, best_step=step)
                best_state = state_arrays(student)
            elif step - info["best_step"] >= s.patience:
                break
    load_state_arrays(student, best_state)
    student.eval()
    return info


def build_student(constructor, arrays: dict[str, np.ndarray]) -> nn.Module:
    """A fresh model from ``constructor()`` holding ``arrays`` (a ``state_dict``), on CPU."""
    model = constructor()
    load_state_arrays(model, arrays)
    return model


__all__ = ["DistillSettings", "build_student", "distill", "kl_to_ensemble", "predict_logits"]
