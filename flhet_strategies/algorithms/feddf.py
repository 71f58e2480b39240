"""FedDF, server half: FedAvg inside each architecture group, then ensemble distillation.

Lin et al., *Ensemble Distillation for Robust Model Fusion in Federated Learning*, NeurIPS
2020, https://arxiv.org/abs/2006.07242. Clients of one architecture form a group; the
group's models are averaged (sample-weighted), and every group's average is distilled on
the unlabeled proxy set toward the mean logits of all received models and of the
predictions-only clients (scikit-learn). Each node gets its own group's model. The server
builds models by architecture name from the constructors it is given. Flower-free; torch
only where it trains. Client half: ``clients.algorithms.feddf``; details: docs/feddf.md.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from .. import wire
from ..aggregation.logit_consensus import softmax
from ..aggregation.payload import (
    PayloadError,
    check_num_examples,
    required_floating,
    validated,
)
from ..protocol import Instruction, Outcome, Reply, ServerAlgorithm, mean_metrics
from ..distill_settings import DistillSettings
from .consensus import RoundPlan
from .recipes import FedDFRecipe

ModelFactory = Callable[[], Any]
"""Builds a fresh ``torch.nn.Module`` of one architecture (picklable for checkpoints:
a module-level function or a ``functools.partial``, not a lambda)."""

_METRICS = ("train_loss",)


def group_average(states: Sequence[Mapping[str, np.ndarray]],
                  weights: Sequence[float]) -> dict[str, np.ndarray]:
    """The weighted mean of model states (FedAvg); integer entries (e.g. BatchNorm's
    ``num_batches_tracked``) take the maximum."""
    w = np.asarray(weights, dtype=np.float64)
    w = w / w.sum()
    out = {}
    for key, first in states[0].items():
        stack = [np.asarray(s[key]) for s in states]
        if first.dtype.kind in "fc":
            out[key] = np.tensordot(w, np.stack(stack).astype(np.float64), axes=1).astype(
                first.dtype)
        else:
            out[key] = np.max(np.stack(stack), axis=0).astype(first.dtype)
    return out


class FedDFServer(ServerAlgorithm):
    """FedDF's server half: one model per architecture group, fused by distillation.

    Round 1 (and any round a node is first sampled) sends every group's model, since the
    server does not yet know the node's architecture; afterwards a node gets its group's
    model only. Predictions-only clients get a round plan instead: proxy indices to
    predict on and, once there is one, the ensemble of the distilled group models'
    probabilities to distill on (as DS-FL clients do).

    Parameters
    ----------
    models : Mapping[str, ModelFactory]
        Architecture name -> constructor of that architecture's (untrained) model. The
        group models start from it (seeded); replies must match its ``state_dict``.
    proxy_x : np.ndarray
        The public proxy inputs the clients hold too (indices refer to its rows).
    num_classes : int
        Number of classes.
    validation_indices : np.ndarray
        Proxy rows held out for early stopping (never distilled on).
    validation_labels : np.ndarray, optional
        Their labels: early stopping on accuracy (the authors' code); without them on
        agreement with the ensemble.
    recipe : FedDFRecipe, optional
        The client recipe sent every round.
    distillation : DistillSettings, optional
        The server's optimiser, schedule and early stopping
        (:class:`~flhet_strategies.distill_settings.DistillSettings`).
    proxy_per_round : int, optional
        Distill on a fresh seeded subset of this many proxy rows per round (default:
        every row not held out).
    seed : int (default: 0)
        Seeds the initial group models, the proxy subsets and the distillation.
    """

    name = "feddf"

    def __init__(self, models: Mapping[str, ModelFactory], proxy_x: np.ndarray,
                 num_classes: int, validation_indices: np.ndarray,
                 validation_labels: np.ndarray | None = None,
                 recipe: FedDFRecipe | None = None, distillation: Any = None,
                 proxy_per_round: int | None = None, seed: int = 0) -> None:
        if not isinstance(models, Mapping) or not models:
            raise ValueError("models must map at least one architecture name to a constructor")
        for arch, factory in models.items():
            if not isinstance(arch, str) or not arch or "/" in arch or "," in arch \
                    or arch == wire.PREDICTIONS_ONLY:
                raise ValueError(f"architecture names must be non-empty, without '/' or ',', "
                                 f"and not {wire.PREDICTIONS_ONLY!r}; got {arch!r}")
            if not callable(factory):
                raise ValueError(f"models[{arch!r}] must be a constructor, got {factory!r}")
        if isinstance(num_classes, bool) or int(num_classes) != num_classes or num_classes < 2:
            raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
        self.proxy_x = np.asarray(proxy_x, dtype=np.float32)
        n = len(self.proxy_x)
        val = np.asarray(validation_indices, dtype=np.int64).reshape(-1)
        if len(val) == 0 or val.min() < 0 or val.max() >= n or len(np.unique(val)) != len(val):
            raise ValueError(f"validation_indices must be distinct rows of the {n} proxy "
                             "inputs, at least one")
        self.validation_indices = val
        self.pool = np.setdiff1d(np.arange(n, dtype=np.int64), val)
        if len(self.pool) == 0:
            raise ValueError("no proxy rows are left to distill on after the validation slice")
        self.validation_labels = None
        if validation_labels is not None:
            labels = np.asarray(validation_labels, dtype=np.int64)
            if labels.shape != val.shape or labels.min() < 0 or labels.max() >= num_classes:
                raise ValueError(f"validation_labels must be {len(val)} labels in "
                                 f"[0, {num_classes})")
            self.validation_labels = labels
        if proxy_per_round is not None and not 1 <= int(proxy_per_round) <= len(self.pool):
            raise ValueError(f"proxy_per_round must be in [1, {len(self.pool)}], got "
                             f"{proxy_per_round!r}")
        self.models = dict(models)
        self.num_classes = int(num_classes)
        self.recipe = recipe or FedDFRecipe()
        self.distillation = distillation or DistillSettings()
        self.proxy_per_round = None if proxy_per_round is None else int(proxy_per_round)
        self.seed = int(seed)
        self.groups = {arch: self._initial_state(arch) for arch in sorted(self.models)}
        self.node_architecture: dict[str, str] = {}
        self._released = False
        self._consensus: tuple[int, np.ndarray, np.ndarray] | None = None

    # ------------------------------------------------------------------ models

    def _initial_state(self, arch: str) -> dict[str, np.ndarray]:
        import torch

        from ..server_training import state_arrays

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(np.random.SeedSequence([self.seed, *arch.encode()])
                                  .generate_state(1)[0]))
            return state_arrays(self.models[arch]())

    def build(self, arch: str, state: Mapping[str, np.ndarray] | None = None):
        """A ``torch.nn.Module`` of ``arch`` holding ``state`` (default: the group's)."""
        from ..server_distillation import build_student

        return build_student(self.models[arch], dict(self.groups[arch] if state is None
                                                     else state))

    def _model_arrays(self, arch: str) -> dict[str, np.ndarray]:
        return {wire.model_key(arch, k): v for k, v in self.groups[arch].items()}

    # ------------------------------------------------------------------ rounds

    def round_indices(self, server_round: int) -> np.ndarray:
        """The proxy rows distilled on in ``server_round`` (sorted)."""
        if self.proxy_per_round is None:
            return self.pool
        rng = np.random.default_rng([self.seed, int(server_round), 7])
        return np.sort(rng.choice(self.pool, self.proxy_per_round, replace=False))

    def predict_indices(self, server_round: int) -> np.ndarray:
        """What a predictions-only client predicts on: the round's rows, then the
        validation slice."""
        return np.concatenate([self.round_indices(server_round), self.validation_indices])

    def _ensemble_probabilities(self, server_round: int) -> tuple[np.ndarray, np.ndarray]:
        """The released group models' mean-logit softmax on the round's rows (cached)."""
        from ..server_distillation import predict_logits

        if self._consensus is None or self._consensus[0] != server_round:
            rows = self.round_indices(server_round)
            logits = np.mean([predict_logits(self.build(a), self.proxy_x[rows])
                              for a in sorted(self.groups)], axis=0)
            self._consensus = (server_round, rows, softmax(
                logits, self.recipe.kd_temperature, axis=1).astype(np.float32))
        return self._consensus[1], self._consensus[2]

    def _plan(self, server_round: int) -> dict[str, np.ndarray]:
        empty = np.zeros(0, dtype=np.int64)
        indices, consensus = empty, np.zeros((0, self.num_classes), np.float32)
        if self._released and self.recipe.use_global_model and self.recipe.kd_weight > 0:
            indices, consensus = self._ensemble_probabilities(server_round)
        return RoundPlan(server_round, self.predict_indices(server_round), indices,
                         consensus).to_arrays()

    def instructions(self, server_round: int, nodes: Sequence[str]) -> dict[str, Instruction]:
        """Its group's model to a known node; every group's model and a round plan to a
        node not seen yet; a round plan to a predictions-only node."""
        config = self.recipe.to_config()
        out = {}
        for node in nodes:
            arch = self.node_architecture.get(str(node))
            arrays: dict[str, np.ndarray] = {}
            if arch is None or arch == wire.PREDICTIONS_ONLY:
                arrays.update(self._plan(server_round))
            if self.recipe.use_global_model:
                for group in ([arch] if arch in self.groups else
                              [] if arch == wire.PREDICTIONS_ONLY else sorted(self.groups)):
                    arrays.update(self._model_arrays(group))
            out[node] = Instruction(arrays, dict(config))
        return out

    def evaluate_instructions(self, server_round: int,
                              nodes: Sequence[str]) -> dict[str, Instruction]:
        """A known node scores its group's (distilled) model; the others their own."""
        config = self.recipe.to_config()
        out = {}
        for node in nodes:
            arch = self.node_architecture.get(str(node))
            arrays = (self._model_arrays(arch) if self._released and arch in self.groups
                      and self.recipe.use_global_model else {})
            out[node] = Instruction(arrays, dict(config))
        return out

    def check_reply(self, server_round: int, reply: Reply) -> tuple[str, Any, int]:
        """A reply's architecture, its model state (or proxy logits) and example count:
        the architecture is named by the reply's ``model/<architecture>/...`` arrays; a
        reply without them is a predictions-only client's logits.

        Raises
        ------
        PayloadError
            For an unknown architecture, a state that does not match the group's model
            (names, shapes, non-finite values) or malformed logits.
        """
        count = check_num_examples(reply.num_examples)
        models = wire.group_models(reply.arrays)
        if not models:
            rows = len(self.predict_indices(server_round))
            return wire.PREDICTIONS_ONLY, required_floating(
                reply.arrays, wire.LOGITS, (rows, self.num_classes)), count
        if len(models) != 1 or len(reply.arrays) != len(next(iter(models.values()))):
            raise PayloadError(f"a reply carries one architecture's model and nothing else; "
                               f"got models of {sorted(models)} and {len(reply.arrays)} arrays")
        (arch, arrays), = models.items()
        if arch not in self.groups:
            raise PayloadError(f"architecture {arch!r} has no group; the server builds "
                               f"{sorted(self.groups)} (and takes proxy logits from clients "
                               "that only predict)")
        expected = self.groups[arch]
        missing = sorted(set(expected) - set(arrays))
        extra = sorted(set(arrays) - set(expected))
        if missing or extra:
            raise PayloadError(f"{arch} model state does not match the server's: missing "
                               f"{missing[:5]}, unexpected {extra[:5]}")
        state = {}
        for key, ref in expected.items():
            value = np.asarray(arrays[key])
            if value.shape != ref.shape:
                raise PayloadError(f"{arch} {key}: shape {value.shape}, expected {ref.shape}")
            if value.dtype.kind not in "fciub" or (value.dtype.kind in "fc"
                                                  and not np.all(np.isfinite(value))):
                raise PayloadError(f"{arch} {key}: not finite numbers")
            state[key] = value.astype(ref.dtype, copy=False)
        return arch, state, count

    def aggregate(self, server_round: int, replies: Sequence[Reply]) -> Outcome:
        """Average each group, distill every group toward the ensemble, release."""
        valid, rejected = validated(
            replies, lambda r: (r.node_id, *self.check_reply(server_round, r)))
        for _, node, arch, _, _ in valid:
            if node:
                self.node_architecture[str(node)] = arch
        if not valid:
            return Outcome(rejected=rejected)
        valid = [(cid, arch, state, n) for cid, _, arch, state, n in valid]
        accepted = [cid for cid, _, _, _ in valid]
        total = float(sum(n for _, _, _, n in valid))
        outcome = Outcome(accepted=accepted, rejected=rejected,
                          weights={cid: n / total for cid, _, _, n in valid},
                          metrics=mean_metrics(replies, accepted, _METRICS))
        if not self.recipe.use_global_model:       # local-only: nothing to fuse
            return outcome
        report = self._fuse(server_round, valid)
        outcome.released = True
        outcome.metrics.update({k: v for k, v in report.items() if not isinstance(v, dict)})
        outcome.history["feddf"] = report
        return outcome

    def _fuse(self, server_round: int, valid: list) -> dict[str, Any]:
        from ..server_distillation import distill, predict_logits
        from ..server_training import state_arrays

        rows = self.predict_indices(server_round)
        inputs = self.proxy_x[rows]
        teachers = [predict_logits(self.build(arch, state), inputs) if arch in self.groups
                    else np.asarray(state, dtype=np.float32) for _, arch, state, _ in valid]
        ensemble = np.mean(teachers, axis=0).astype(np.float32)
        cut = len(rows) - len(self.validation_indices)
        report: dict[str, Any] = {"teachers": len(teachers), "groups": {}}
        if self.validation_labels is not None:
            report["ensemble_val_accuracy"] = float(np.mean(
                np.argmax(ensemble[cut:], axis=1) == self.validation_labels))
        for arch in sorted({a for _, a, _, _ in valid if a in self.groups}):
            members = [(s, n) for _, a, s, n in valid if a == arch]
            student = self.build(arch, group_average([s for s, _ in members],
                                                     [n for _, n in members]))
            seed = int(np.random.SeedSequence([self.seed, int(server_round), *arch.encode()])
                       .generate_state(1)[0])
            info = distill(student, inputs[:cut], ensemble[:cut], inputs[cut:], ensemble[cut:],
                           self.validation_labels, self.distillation, seed=seed)
            self.groups[arch] = state_arrays(student)
            report["groups"][arch] = {"members": len(members), **info}
        self._released, self._consensus = True, None
        steps = [g["steps"] for g in report["groups"].values()]
        report["distill_steps"] = float(np.mean(steps)) if steps else 0.0
        return report

    def result_arrays(self) -> dict[str, np.ndarray]:
        """Every group's model (``model/<architecture>/<key>``)."""
        return {k: v for arch in sorted(self.groups) for k, v in self._model_arrays(arch).items()}

    def describe(self) -> list[str]:
        """The groups, the distillation and the recipe."""
        d = self.distillation
        return [f"FedDF: groups {sorted(self.groups)}, {self.num_classes} classes; server "
                f"distillation up to {d.max_steps} steps (Adam {d.lr}, batch {d.batch_size}, "
                f"T {d.temperature}, patience {d.patience})", f"Client recipe: {self.recipe}"]

    def state_dict(self) -> dict[str, np.ndarray]:
        """Flat arrays: every group's model (as :meth:`result_arrays`), the nodes seen and
        their architectures, and whether models were released."""
        nodes = sorted(self.node_architecture)
        return {**self.result_arrays(), "nodes": np.asarray(nodes, dtype=str),
                "node_architectures": np.asarray([self.node_architecture[n] for n in nodes],
                                                 dtype=str),
                "released": np.asarray(self._released)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`.

        Raises
        ------
        ValueError
            If the saved groups or their states are not this server's.
        """
        groups = wire.group_models(state)
        if set(groups) != set(self.groups):
            raise ValueError(f"the saved groups {sorted(groups)} are not this server's "
                             f"{sorted(self.groups)}")
        for arch, saved in groups.items():
            if set(saved) != set(self.groups[arch]):
                raise ValueError(f"the saved {arch} model's entries are not this server's")
        self.groups = {a: {k: np.asarray(v).reshape(self.groups[a][k].shape)
                           for k, v in s.items()} for a, s in groups.items()}
        self.node_architecture = dict(zip(map(str, state["nodes"]),
                                          map(str, state["node_architectures"])))
        self._released, self._consensus = bool(state["released"]), None


__all__ = ["FedDFServer", "ModelFactory", "group_average"]
