"""Client step of distributed differential privacy for any weighted sum (Flower-free).

:class:`DpNoiseStep` clips a client's weighted-sum contribution and adds its share of the
Gaussian noise, so the sum of the cohort's replies carries the noise the server
announced (``DifferentialPrivacy(mode="distributed")``). Run it with
``clients.mods.DpNoiseMod`` (Message API) or ``clients.DpNoiseNumPyClient`` (compat).
"""

from __future__ import annotations

import json
from logging import INFO

import numpy as np
from flwr.common.logger import log

from flhet_strategies import wire
from flhet_strategies.aggregation.weighted_sum import SumLayout, SumTerm, client_weights
from flhet_strategies.algorithms import sum_rule
from flhet_strategies.algorithms.consensus import PROBABILITIES
from flhet_strategies.privacy.dp.clipping import CLIP_MODES
from flhet_strategies.privacy.dp.noise_share import NoiseShareSettings, noise_share
from flhet_strategies.privacy.dp.postprocess import noisy_rows_to_probabilities
from flhet_strategies.protocol import Instruction, Reply

from .step import ClientStep, StepEnv, StepRefusal

ENCODINGS = ("probabilities", "log-probabilities")
"""How a noisy consensus contribution is sent: linear (for a summing server), or
clamped onto the simplex and logged (readable by a plain DS-FL server; local DP)."""


class DpNoiseStep(ClientStep):
    """Clip this client's weighted-sum contribution and add its noise share.

    The server (``DifferentialPrivacy(mode="distributed")``) sends ``z``, the clip, the
    clip mode, the cohort size ``n`` and the sum's layout every round; the arguments here
    are fallbacks. The reply's arrays are replaced by the noisy terms (the label
    histogram and any other exact private array are dropped).

    Parameters
    ----------
    noise_multiplier, clip_norm, num_clients, clip_mode : optional
        Fallbacks for ``dp-noise-multiplier``, ``dp-clip-norm``, ``dp-num-clients``
        (default 1: local DP) and ``dp-clip-mode``.
    encoding : str (default: "probabilities")
        ``"probabilities"``: the noisy terms as the server sums them.
        ``"log-probabilities"`` (consensus only): the noisy probabilities clamped to
        ``min_probability``, renormalised and logged, sent as ``logits`` so that a
        plain DS-FL server reads them (each reply carries noise ``z / sqrt(n)``).
    min_probability : float (default: 1e-6)
        Clamp floor of the log-probability encoding.
    rng : numpy.random.Generator, optional
        For tests only; by default every reply draws from a fresh OS-seeded generator.
    """

    def __init__(self, noise_multiplier: float | None = None, clip_norm: float | None = None,
                 num_clients: int | None = 1, clip_mode: str = "flat",
                 encoding: str = "probabilities", min_probability: float = 1e-6,
                 rng: np.random.Generator | None = None) -> None:
        if clip_mode not in CLIP_MODES:
            raise ValueError(f"clip_mode must be one of {CLIP_MODES}, got {clip_mode!r}")
        if encoding not in ENCODINGS:
            raise ValueError(f"encoding must be one of {ENCODINGS}, got {encoding!r}")
        if not 0.0 < min_probability < 1e-2:
            raise ValueError(f"min_probability must be in (0, 0.01), got {min_probability!r}")
        if None not in (noise_multiplier, clip_norm, num_clients):
            NoiseShareSettings(noise_multiplier, clip_norm, num_clients, clip_mode)
        self.noise_multiplier, self.clip_norm = noise_multiplier, clip_norm
        self.num_clients, self.clip_mode = num_clients, clip_mode
        self.encoding, self.min_probability, self.rng = encoding, float(min_probability), rng

    def settings(self, config) -> NoiseShareSettings:
        """The noise settings of a train config (falling back to the step's)."""
        return NoiseShareSettings.from_config(config, self.noise_multiplier, self.clip_norm,
                                              self.num_clients, self.clip_mode,
                                              owner=type(self).__name__)

    def before(self, instruction: Instruction, env: StepEnv,
               kind: str) -> tuple[Instruction, dict]:
        """Check the settings before the client trains (a bad one refuses the message)."""
        if kind != "train":
            return instruction, {}
        return instruction, {"settings": self.settings(instruction.config)}

    def after(self, instruction: Instruction, memo: dict, reply: Reply, env: StepEnv,
              kind: str) -> Reply:
        """Replace the contribution by its clipped, noised terms."""
        if kind != "train":
            return reply
        settings: NoiseShareSettings = memo["settings"]
        layout = self._layout(instruction, reply)
        rule = sum_rule(layout.algorithm)
        try:
            values = rule.terms(layout, reply.arrays, reply.metrics)
            counts = reply.arrays.get(wire.CLASS_COUNTS)
            weights = None if layout.public_weights else {
                t.name: client_weights(layout, t, counts, reply.num_examples)
                for t in layout.terms}
        except ValueError as error:
            raise StepRefusal(f"the reply does not fit the sum: {error}") from error
        noisy = noise_share(layout, values, weights, settings, self.rng)
        arrays = noisy.arrays
        if self.encoding == "log-probabilities":
            if layout.algorithm != "consensus":
                raise StepRefusal("the log-probabilities encoding is for the consensus only")
            probs = noisy_rows_to_probabilities(arrays[f"noisy_{PROBABILITIES}"],
                                                floor=self.min_probability)
            arrays = {wire.LOGITS: np.log(probs).astype(np.float32)}
        metrics = {**reply.metrics, wire.NOISE_STD_METRIC: noisy.noise_std,
                   wire.DP_NOISE_MULTIPLIER: settings.noise_multiplier,
                   wire.DP_NUM_CLIENTS: settings.num_clients, "dp-norm-bound": noisy.norm_bound}
        log(INFO, "DpNoiseStep: contribution clipped to L2 %.4g (%s), noise std %.4g",
            noisy.norm_bound, settings.clip_mode, noisy.noise_std)
        return Reply(reply.client_id, arrays, metrics, reply.node_id)

    @staticmethod
    def _layout(instruction: Instruction, reply: Reply) -> SumLayout:
        """The server's layout, or (local DP with a plain consensus server) the
        consensus layout of the reply's logits."""
        raw = instruction.config.get(wire.DP_LAYOUT)
        if raw:
            return SumLayout.from_dict(json.loads(str(raw)))
        logits = np.asarray(reply.arrays.get(wire.LOGITS, np.zeros((0, 0))))
        if logits.ndim != 2 or not logits.size:
            raise StepRefusal(f"no '{wire.DP_LAYOUT}' in the config and no logits in the reply "
                              f"to noise; found {sorted(reply.arrays)}")
        term = SumTerm(PROBABILITIES, logits.shape, weight_axis=1)
        return SumLayout("consensus", (term,), "uniform", {"temperature": 1.0})


__all__ = ["DpNoiseStep", "ENCODINGS"]
