"""Knowledge-distillation loss against hand-computed values."""

import math

import pytest
import torch

from flhet_strategies.kd_loss import kd_loss


def test_kd_loss_hand_computed_with_temperature_squared():
    student = torch.zeros(1, 2)
    target = torch.tensor([[0.75, 0.25]])
    # KL = .75 ln(.75/.5) + .25 ln(.25/.5); times T^2 = 4
    expected = 4 * (0.75 * math.log(1.5) + 0.25 * math.log(0.5))
    assert kd_loss(student, target, temperature=2.0).item() == pytest.approx(expected, rel=1e-6)


def test_kd_loss_is_zero_when_student_matches_target():
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.1, 0.2, 0.3]])
    target = torch.softmax(logits / 3.0, dim=1)
    assert kd_loss(logits, target, temperature=3.0).item() == pytest.approx(0.0, abs=1e-6)


def test_kd_loss_is_batch_mean():
    s = torch.tensor([[0.0, 0.0], [0.0, 0.0]])
    t = torch.tensor([[0.75, 0.25], [0.5, 0.5]])
    single = kd_loss(s[:1], t[:1], 1.0).item()
    assert kd_loss(s, t, 1.0).item() == pytest.approx(single / 2, rel=1e-6)


def test_kd_loss_gradient_moves_student_towards_target():
    student = torch.zeros(1, 2, requires_grad=True)
    kd_loss(student, torch.tensor([[0.9, 0.1]]), 1.0).backward()
    assert student.grad[0, 0] < 0 < student.grad[0, 1]


def test_kd_loss_rejects_bad_input():
    with pytest.raises(ValueError, match="temperature"):
        kd_loss(torch.zeros(1, 2), torch.ones(1, 2) / 2, 0.0)
    with pytest.raises(ValueError, match="same shape"):
        kd_loss(torch.zeros(1, 2), torch.ones(1, 3) / 3, 1.0)
