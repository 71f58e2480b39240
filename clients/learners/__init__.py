"""Client learners: one small adapter per ML framework."""

from .base import DistillTarget, Learner

__all__ = ["DistillTarget", "Learner"]
