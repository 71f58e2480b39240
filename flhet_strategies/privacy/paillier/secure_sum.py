"""Paillier secure sum of any weighted-sum algorithm, as a server-half wrapper.

The server only multiplies ciphertexts and holds the public key; keys are dealt outside
it. Each round the clients' step (``clients.privacy.paillier.PaillierStep``) decrypts
the previous round's sum (or opens the seal one client made of it for the cohort),
finishes it with the algorithm's rule, trains, and encrypts its share. With
distributed DP inside the sum, the clients noise their values before encrypting and the
server accounts the realized noise. See ``docs/weighted_sums.md``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from logging import INFO, WARNING

import numpy as np
from flwr.common.logger import log
from phe import PaillierPublicKey

from ... import wire
from ...protocol import (
    Instruction,
    Outcome,
    Reply,
    ServerAlgorithm,
    ServerAlgorithmWrapper,
    client_sort_key,
    find_wrapper,
    mean_metrics,
)
from ..dp.gaussian import realized_noise_multiplier
from ..dp.mechanism import DifferentialPrivacy, _check_sum_algorithm
from ..dp.noise_share import NoiseShareSettings, contribution_rows, noisy_layout
from .aggregate import CiphertextAggregator, one_client_share
from .errors import SecureSumError
from .keys import key_fingerprint, validate_public_key
from .spec import SecureSumSpec
from .threshold_keys import ThresholdCohort

DECRYPTION_MODES = ("delegate", "every_client", "threshold")
"""Who decrypts a sum: one client per round for the cohort (sealed), every client, or
``t`` holders of a threshold key together (their partials sealed for the cohort)."""


def context_arrays(context: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A sum's context arrays under their instruction names (:data:`wire.SUM_CONTEXT_PREFIX`)."""
    return {wire.SUM_CONTEXT_PREFIX + name: value for name, value in context.items()}


class SecureSum(ServerAlgorithmWrapper):
    """A weighted-sum server half whose clients' contributions reach it only encrypted.

    Parameters
    ----------
    inner : ServerAlgorithm
        A weighted-sum server half (``sum_layout``, ``sum_context``, ...), possibly
        wrapped in :class:`~flhet_strategies.privacy.dp.mechanism.DifferentialPrivacy`
        with ``mode="distributed"`` (central DP needs the plaintext sum and is refused).
    public_key : phe.PaillierPublicKey or ThresholdCohort
        The key dealer's public key (at least 2048 bits; a private key is refused), or
        the public side of a threshold key (:func:`.deal_threshold_keys`).
    max_examples : int, optional
        Public bound on any client's number of training examples; needed when the
        clients weight by their counts (it bounds the weights).
    bits : int, optional
        Quantization bits of a value over its term's public range (default: the
        algorithm's preference, ``sum_layout.params["bits"]``, else 8).
    vote_bits : int (default: 16)
        Most bits of an integer weight.
    decryption : str, optional
        ``"delegate"`` (default with a single key): after each round one client
        (rotating) decrypts the sum for the next cohort and seals it (with its evaluation
        request, or alone when the round has no evaluation); if that fails, the next
        round's clients each decrypt. ``"every_client"``: every client decrypts.
        ``"threshold"`` (the only mode of a threshold key): ``decryptors`` clients each
        check the signed shares and return a partial decryption sealed for the cohort;
        the next round's clients combine ``t`` of them.
    decryptors : int, optional
        Threshold mode: clients asked for a partial decryption each round (default
        ``t + 1``: one may drop out or fail).
    """

    def __init__(self, inner: ServerAlgorithm, public_key: PaillierPublicKey, *,
                 max_examples: int | None = None, bits: int | None = None, vote_bits: int = 16,
                 decryption: str | None = None, decryptors: int | None = None) -> None:
        super().__init__(inner)
        _check_sum_algorithm(self.innermost)
        self.cohort = public_key if isinstance(public_key, ThresholdCohort) else None
        decryption = decryption or ("threshold" if self.cohort else "delegate")
        if decryption not in DECRYPTION_MODES:
            raise ValueError(f"decryption must be one of {DECRYPTION_MODES}, got {decryption!r}")
        if (decryption == "threshold") != (self.cohort is not None):
            raise ValueError("decryption='threshold' goes with a threshold key (a "
                             "ThresholdCohort from deal_threshold_keys) and a threshold key "
                             f"only with it; got decryption={decryption!r} and a "
                             f"{type(public_key).__name__}")
        if decryptors is not None and (self.cohort is None or isinstance(decryptors, bool)
                                       or not isinstance(decryptors, int) or decryptors < 1):
            raise ValueError(f"decryptors is a positive int of the threshold mode, got "
                             f"{decryptors!r}")
        self.decryptors = None if self.cohort is None else \
            int(decryptors or self.cohort.threshold + 1)
        self.public_key = validate_public_key(
            self.cohort.public_key if self.cohort else public_key)
        self.fingerprint = key_fingerprint(self.public_key).hex()
        self.dp = find_wrapper(inner, DifferentialPrivacy)
        if self.dp is not None and self.dp.settings.mode != "distributed":
            raise ValueError("central differential privacy needs the server to see the "
                             "plaintext sum it noises; use mode='distributed' (the clients "
                             "add the noise inside the encrypted sum)")
        self.max_examples = max_examples
        self.bits = None if bits is None else int(bits)
        self.vote_bits, self.decryption = int(vote_bits), decryption
        self.spec(1, 1)   # fail now on a sum the clients cannot encode
        self._specs: dict[int, SecureSumSpec] = {}
        self._sum: np.ndarray | None = None
        self._sum_spec: SecureSumSpec | None = None
        self._sum_context: dict[str, np.ndarray] = {}
        self._sum_round: int | None = None
        self._seal: tuple[int, np.ndarray] | None = None
        self._pending: tuple[int, str | tuple[str, ...], float] | None = None
        self._decrypted_by: dict[int, str] = {}
        self._signed: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._partials: tuple[int, list[np.ndarray]] | None = None

    def describe(self) -> list[str]:
        """The key and settings, then the inner lines."""
        bits = self.bits or self.innermost.sum_layout(1).params.get("bits", 8)
        mode = self.decryption if self.cohort is None else (
            f"threshold {self.cohort.threshold} of {self.cohort.key.num_shares}, "
            f"{self.decryptors} decryptors a round")
        return [f"Paillier secure sum: key {self.fingerprint}, {bits}-bit values, "
                f"weights up to {self.vote_bits} bits, decryption {mode}"] \
            + self.inner.describe()

    @property
    def encrypted_sum(self) -> np.ndarray | None:
        """The latest encrypted sum (``uint8``), ``None`` before the first."""
        return self._sum

    @property
    def sum_context(self) -> dict[str, np.ndarray]:
        """The public arrays the latest sum refers to."""
        return dict(self._sum_context)

    def spec(self, server_round: int, cohort: int) -> SecureSumSpec:
        """The secure-sum spec of a round of ``cohort`` clients."""
        layout = self.innermost.sum_layout(server_round)
        noise = None
        if self.dp is not None:
            settings = self.dp.settings
            _, rows = contribution_rows(layout, {t.name: np.zeros(t.shape) for t in layout.terms},
                                        {t.name: np.ones(t.weight_size) for t in layout.terms})
            num_rows = sum(count for _, _, count, _ in rows.pieces)
            share = NoiseShareSettings(settings.noise_multiplier, settings.clip_norm,
                                       max(1, cohort), settings.clip_mode)
            bound = share.norm_bound(num_rows)
            layout = noisy_layout(layout, settings.clip_norm, settings.clip_mode, bound,
                                  share.share_std(num_rows))
            noise = {"noise_multiplier": float(settings.noise_multiplier),
                     "norm_bound": float(bound), "num_clients": int(max(1, cohort))}
        bits = self.bits or int(layout.params.get("bits", 8))
        return SecureSumSpec.for_layout(layout, max(1, cohort), bits=bits,
                                        vote_bits=self.vote_bits, max_examples=self.max_examples,
                                        key_fingerprint=self.fingerprint, noise=noise)

    # ------------------------------------------------------------------ training

    def instructions(self, server_round: int, nodes: Sequence[str]) -> dict[str, Instruction]:
        """The inner instructions, the round's spec and the previous sum (or its seal)."""
        instructions = self.inner.instructions(server_round, nodes)
        spec = self.spec(server_round, len(nodes))
        self._specs[int(server_round)] = spec
        extra: dict[str, np.ndarray] = {}
        config = {wire.SECURE_SPEC: spec.to_json()}
        if self._sum is not None and self.cohort is not None:
            extra = self._threshold_relay(server_round)
            if extra:
                config[wire.RELAYED_SPEC] = self._sum_spec.to_json()
        elif self._sum is not None:
            seal = self._take_seal(server_round)
            extra = context_arrays(self._sum_context)
            if seal is not None:
                extra[wire.SEALED_SUM] = seal
                self._decrypted_by[int(server_round)] = "delegated"
            else:
                extra[wire.ENCRYPTED_SUM] = self._sum
                self._decrypted_by[int(server_round)] = "every_client"
            config[wire.RELAYED_SPEC] = self._sum_spec.to_json()
        for instruction in instructions.values():
            instruction.arrays.update(extra)
            instruction.config.update(config)
        return instructions

    def aggregate(self, server_round: int, replies: Sequence[Reply]) -> Outcome:
        """Check every encrypted share and multiply the valid ones (never decrypts)."""
        spec = self._specs.pop(int(server_round), None) or self.spec(server_round,
                                                                      max(1, len(replies)))
        layout = spec.layout(self.public_key.n.bit_length() - 1)
        aggregator = CiphertextAggregator(self.public_key)
        accepted, rejected, weights, failed = [], {}, {}, 0
        signed: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for reply in sorted(replies, key=lambda r: client_sort_key(r.client_id)):
            failed += int(float(reply.metrics.get(wire.DECRYPT_FAILED_METRIC, 0) or 0) > 0)
            try:
                share = self._share_of(reply)
                if self.cohort is not None:
                    signature = reply.arrays.get(wire.SHARE_SIGNATURE)
                    self.cohort.verify_share(server_round, reply.client_id, share, signature)
                    signed[str(reply.client_id)] = (share, np.asarray(signature, np.uint8))
                vector = one_client_share(share, self.public_key, layout)
                aggregator.add(vector)
            except (SecureSumError, ValueError) as error:
                rejected[reply.client_id] = str(error)
                signed.pop(str(reply.client_id), None)
                continue
            accepted.append(reply.client_id)
            weights[reply.client_id] = float(reply.num_examples) \
                if spec.sum_layout.weighting.startswith("sample_count") else 1.0
        if failed:
            log(WARNING, "round %s: %s client(s) could not decrypt the sum they received (see "
                "their logs); they trained without it", server_round, failed)
        history = {"sum_decryption": self._decrypted_by.pop(int(server_round), None)}
        metrics = {**mean_metrics(replies, accepted, ("train_loss", "kd_loss")),
                   "num-decrypt-failed": float(failed)}
        if not accepted:
            return Outcome(rejected=rejected, metrics=metrics, history=history)
        total = sum(weights.values())
        privacy: dict = {}
        if self.dp is not None:
            realized = realized_noise_multiplier(self.dp.noise_multiplier, spec.max_summands,
                                                 len(accepted))
            privacy = self.dp.record_release(server_round, realized)
        self._sum = aggregator.result().to_array()
        self._signed = signed
        self._sum_spec = spec
        self._sum_context = {k: np.asarray(v) for k, v in
                             self.innermost.sum_context(server_round).items()}
        self._sum_round = int(server_round)
        log(INFO, "round %s: encrypted sum of %s clients (%s ciphertexts, %.1f KiB)",
            server_round, len(accepted), layout.num_ciphertexts, self._sum.nbytes / 1024)
        return Outcome(accepted=accepted, rejected=rejected,
                       weights={c: w / total for c, w in weights.items()}, metrics=metrics,
                       released=True, privacy=privacy, history=history)

    def _share_of(self, reply: Reply) -> np.ndarray:
        """The reply's one encrypted share (plaintext arrays next to it are refused)."""
        others = set(reply.arrays) - {wire.ENCRYPTED_SHARE} - (
            {wire.SHARE_SIGNATURE} if self.cohort is not None else set())
        if others:
            raise ValueError(
                f"the reply carries plaintext arrays {sorted(others)} (discarded, never "
                "aggregated): the client does not encrypt its share (no PaillierMod / "
                "SecureSumNumPyClient step)")
        if wire.ENCRYPTED_SHARE not in reply.arrays:
            raise ValueError(f"the reply has no '{wire.ENCRYPTED_SHARE}' array")
        num_examples = reply.num_examples
        if isinstance(num_examples, bool) or not isinstance(num_examples, (int, float)) \
                or int(num_examples) != num_examples or num_examples <= 0:
            raise ValueError(f"num-examples must be a positive integer, got {num_examples!r}")
        share = np.asarray(reply.arrays[wire.ENCRYPTED_SHARE])
        if share.dtype != np.uint8 or share.ndim != 1:
            raise ValueError(f"the share must be a 1-D uint8 array, got {share.dtype} "
                             f"{share.shape}")
        return share

    def result_arrays(self) -> dict[str, np.ndarray]:
        """The encrypted sum and its context (all the server holds)."""
        if self._sum is None:
            return {}
        return {wire.ENCRYPTED_SUM: self._sum, **context_arrays(self._sum_context)}

    # ------------------------------------------------------------------ delegated decryption

    def evaluate_instructions(self, server_round: int,
                              nodes: Sequence[str]) -> dict[str, Instruction]:
        """The inner requests; one node (rotating) also decrypts the sum for the next round."""
        instructions = self.inner.evaluate_instructions(server_round, nodes)
        last = self.num_rounds is not None and server_round >= self.num_rounds
        self._pending = None
        if self.decryption == "every_client" or last or not nodes or self._sum is None \
                or self._sum_round != int(server_round):
            return instructions
        ordered = sorted(nodes, key=client_sort_key)
        if self.cohort is not None:
            return self._threshold_requests(server_round, ordered, instructions)
        node = ordered[(int(server_round) + 1) % len(ordered)]
        request = instructions.get(node, Instruction()).copy()
        request.arrays.update({wire.ENCRYPTED_SUM: self._sum,
                               **context_arrays(self._sum_context)})
        request.config.update({wire.DECRYPT_REQUEST: True,
                               wire.RELAYED_SPEC: self._sum_spec.to_json()})
        instructions[node] = request
        self._pending = (int(server_round) + 1, str(node), time.perf_counter())
        return instructions

    def aggregate_evaluate(self, server_round: int, replies: Sequence[Reply]) -> list[Reply]:
        """Keep the seal the chosen node made; the inner algorithm gets the rest."""
        replies = list(replies)
        if self._pending is not None and self.cohort is not None:
            self._collect_partials(replies)
        elif self._pending is not None:
            for_round, node, started = self._pending
            self._pending = None
            answer = next((r for r in replies if r.node_id == node), None)
            seal, problem = None, None
            if answer is None:
                problem = "its evaluation failed or did not arrive"
            else:
                seal = answer.arrays.pop(wire.SEALED_REPLY, None)
                if seal is None:
                    problem = str(answer.metrics.get(wire.DECRYPT_ERROR_METRIC,
                                                     "its reply holds no seal (does the client "
                                                     "run the Paillier step?)"))
                elif np.asarray(seal).dtype != np.uint8 or np.asarray(seal).ndim != 1:
                    problem, seal = "its seal is not a 1-D uint8 array", None
            if seal is None:
                log(WARNING, "round %s: node %s did not decrypt the sum for the cohort (%s); "
                    "every client decrypts it instead", for_round, node, problem)
                self._seal = None
            else:
                log(INFO, "round %s: node %s decrypted and sealed the sum for the cohort "
                    "(%.2f s)", for_round, node, time.perf_counter() - started)
                self._seal = (for_round, np.asarray(seal, dtype=np.uint8))
        return self.inner.aggregate_evaluate(server_round, replies)

    # ------------------------------------------------------------------ threshold decryption

    def _threshold_requests(self, server_round: int, ordered: list[str],
                            instructions: dict[str, Instruction]) -> dict[str, Instruction]:
        """Ask ``decryptors`` nodes (rotating) for a partial decryption of the round's sum:
        each gets every signed share, so it can check what it decrypts."""
        count = min(self.decryptors, len(ordered))
        start = int(server_round) % len(ordered)
        chosen = [ordered[(start + k) % len(ordered)] for k in range(count)]
        arrays: dict[str, np.ndarray] = {}
        for client_id, (share, signature) in self._signed.items():
            arrays[wire.SIGNED_SHARE_PREFIX + client_id] = share
            arrays[wire.SHARE_SIGNATURE_PREFIX + client_id] = signature
        for node in chosen:
            request = instructions.get(node, Instruction()).copy()
            request.arrays.update(arrays)
            request.config.update({wire.DECRYPT_REQUEST: True,
                                   wire.RELAYED_SPEC: self._sum_spec.to_json()})
            instructions[node] = request
        self._pending = (int(server_round) + 1, tuple(map(str, chosen)), time.perf_counter())
        return instructions

    def _collect_partials(self, replies: list[Reply]) -> None:
        """Keep the sealed partial decryptions the chosen nodes returned."""
        for_round, nodes, started = self._pending
        self._pending = None
        chosen = set(nodes)
        partials, problems = [], {}
        for reply in replies:
            if str(reply.node_id) not in chosen:
                continue
            sealed = reply.arrays.pop(wire.SEALED_PARTIAL, None)
            if sealed is None or np.asarray(sealed).dtype != np.uint8 \
                    or np.asarray(sealed).ndim != 1:
                problems[reply.client_id] = "no sealed partial decryption in its reply"
                continue
            partials.append(np.asarray(sealed, dtype=np.uint8))
        missing = len(chosen) - len(partials) - len(problems)
        log(INFO if len(partials) >= self.cohort.threshold else WARNING,
            "round %s: %s of %s decryptors returned a sealed partial decryption (%s needed; "
            "%s without one%s) in %.2f s", for_round, len(partials), len(chosen),
            self.cohort.threshold, len(problems) + missing,
            f": {problems}" if problems else "", time.perf_counter() - started)
        self._partials = (for_round, partials)

    def _threshold_relay(self, server_round: int) -> dict[str, np.ndarray]:
        """The sum and its sealed partials for the next cohort, or nothing with fewer than
        ``t`` partials (the clients then train without the sum: nobody can decrypt it)."""
        partials, self._partials = self._partials, None
        if partials is None or partials[0] != int(server_round) \
                or len(partials[1]) < self.cohort.threshold:
            got = 0 if partials is None or partials[0] != int(server_round) else len(partials[1])
            log(WARNING, "round %s: %s sealed partial decryptions of the last sum, %s needed; "
                "the clients train without it", server_round, got, self.cohort.threshold)
            self._decrypted_by[int(server_round)] = "none"
            return {}
        self._decrypted_by[int(server_round)] = "threshold"
        return {wire.ENCRYPTED_SUM: self._sum, **context_arrays(self._sum_context),
                **{f"{wire.SEALED_PARTIAL_PREFIX}{j}": p for j, p in enumerate(partials[1])}}

    def _take_seal(self, server_round: int) -> np.ndarray | None:
        seal, self._seal = self._seal, None
        if seal is None or seal[0] != int(server_round):
            return None
        return seal[1]


__all__ = ["DECRYPTION_MODES", "SecureSum", "context_arrays"]
