"""Every key that flhet's server halves, client halves and Flower faces share.

One module for the wire format: record keys, config keys, metric keys and array names.
Flower-free. Record keys follow Flower's own FedAvg (``"arrays"``, ``"config"``,
``"metrics"``), so a flhet message looks like any Flower message.
"""

from __future__ import annotations

# --- records of a Message (Message API) ----------------------------------------------------
ARRAYS = "arrays"
"""ArrayRecord of an instruction (server -> client) or a reply (client -> server)."""
CONFIG = "config"
"""ConfigRecord of an instruction."""
METRICS = "metrics"
"""MetricRecord of a reply."""

# --- config keys of every instruction ------------------------------------------------------
SERVER_ROUND = "server-round"
"""The round the instruction belongs to (1-based)."""
PHASE = "flhet-phase"
"""Name of the run; clients keep one model per phase, so one federation hosts several runs."""
ALGORITHM = "flhet-algorithm"
"""Name of the client half that must answer (``"consensus"``, ``"fedproto"``, ...)."""
FINAL_ROUND = "final-round"
"""True in the last round of a run (a client half may personalise after replying)."""
EVALUATE = "flhet-evaluate"
"""False in an evaluation message that only carries a task for a client step (no scoring)."""
ARRAY_NAMES = "flhet-arrays"
"""Compat API: comma-separated names of the ``Parameters`` arrays, in order (both ways)."""

# --- metric keys of every reply ------------------------------------------------------------
CLIENT_ID = "client-id"
"""A client's stable id (its partition id), else the server uses the node id."""
NUM_EXAMPLES = "num-examples"
"""Private training examples of the client (Flower's convention)."""
CLIENT_ACCURACY = "client_accuracy"
"""Accuracy on the client's own test split (HtFLlib / FedTGP convention)."""
GLOBAL_ACCURACY = "global_accuracy"
"""Accuracy on the shared global test set (FedDF convention)."""
ARRAY_METRIC_PREFIX = "flhet-array:"
"""Compat API: an evaluation reply's array travels as ``.npy`` bytes under this prefix."""

# --- logit consensus (FedMD / DS-FL) -------------------------------------------------------
PROXY_INDICES = "proxy_indices"
"""Instruction: proxy samples the client must predict on this round."""
CONSENSUS_INDICES = "consensus_indices"
"""Instruction: proxy samples the consensus rows refer to."""
CONSENSUS = "consensus"
"""Instruction: soft targets ``(len(consensus_indices), num_classes)``."""
LOGITS = "logits"
"""Reply: logits on the instruction's proxy samples."""
CLASS_COUNTS = "class_counts"
"""Reply: label histogram of the client's training data."""

# --- prototypes (FedProto / FedTGP) --------------------------------------------------------
GLOBAL_PROTOTYPES = "global_prototypes"
"""Instruction: global class prototypes ``(num_classes, feature_dim)``."""
PROTOTYPE_MASK = "prototype_mask"
"""Instruction: which classes have a global prototype (uint8, ``num_classes``)."""
PROTOTYPES = "prototypes"
"""Reply: the client's per-class mean features (zero rows for classes it lacks)."""

# --- shared heads (LG-FedAvg / FedGH) -------------------------------------------------------
GLOBAL_HEAD = "global_head"
"""Instruction: the global head ``(num_classes, feature_dim + 1)``, its weight with the bias
as the last column."""
HEAD = "head"
"""Reply (LG-FedAvg): the client's trained head, laid out as :data:`GLOBAL_HEAD`."""

# --- FedDF (one model per architecture group) ------------------------------------------------
MODEL_PREFIX = "model/"
"""Instruction and reply: a group model's array is ``model/<architecture>/<state_dict key>``
(the architecture travels in the names: Flower's metrics hold numbers only)."""
PREDICTIONS_ONLY = "predictions"
"""The architecture of a client that cannot share weights (it replies with proxy logits)."""


def model_key(architecture: str, name: str) -> str:
    """The instruction array name of a group model's state entry ``name``."""
    return f"{MODEL_PREFIX}{architecture}/{name}"


def group_models(arrays) -> dict[str, dict]:
    """``{architecture: {state key: array}}`` from the :func:`model_key` arrays among ``arrays``."""
    out: dict[str, dict] = {}
    for key, value in arrays.items():
        if isinstance(key, str) and key.startswith(MODEL_PREFIX) and "/" in key[len(MODEL_PREFIX):]:
            arch, name = key[len(MODEL_PREFIX):].split("/", 1)
            out.setdefault(arch, {})[name] = value
    return out


# --- differential privacy -------------------------------------------------------------------
DP_NOISE_MULTIPLIER = "dp-noise-multiplier"
"""Config: ``z``, noise std on the sum of the cohort's clipped replies over their bound."""
DP_CLIP_NORM = "dp-clip-norm"
"""Config: the clipping parameter (the bound flat, the row bound per row)."""
DP_CLIP_MODE = "dp-clip-mode"
"""Config: ``"flat"`` or ``"per-row"``."""
DP_NUM_CLIENTS = "dp-num-clients"
"""Config: ``n``, the replies whose noise shares make up the sum."""
DP_LAYOUT = "dp-sum-layout"
"""Config: JSON of the weighted sum a distributed-DP client noises."""
DP_RECORD = "dp"
"""Reply ConfigRecord describing the noise a client added."""
NOISY_PROBABILITIES = "noisy_probabilities"
"""Reply: the consensus term under distributed DP (clipped probabilities + noise share)."""
NOISE_STD_METRIC = "dp-noise-std"
"""Reply metric: std of the noise share the client added per entry."""
RECORD_EPSILON = "record-epsilon"
"""Train and evaluate reply metric: the client's record-level (DP-SGD) epsilon so far."""
RECORD_DELTA = "record-delta"
"""Train and evaluate reply metric: the delta :data:`RECORD_EPSILON` is reported at."""

# --- Paillier secure sum ---------------------------------------------------------------------
SECURE_SPEC = "secure-sum-spec"
"""Config: JSON of the round's public secure-sum spec."""
RELAYED_SPEC = "secure-relayed-spec"
"""Config: JSON of the spec the relayed (encrypted or sealed) sum was made under."""
SUM_CONTEXT_PREFIX = "sum-context:"
"""Instruction: public arrays a relayed sum refers to (e.g. its proxy indices)."""
ENCRYPTED_SUM = "encrypted_sum"
"""Instruction: the previous round's encrypted weighted sum (uint8)."""
SEALED_SUM = "sealed_sum"
"""Instruction: the same sum, decrypted by one client and sealed for the cohort (uint8)."""
ENCRYPTED_SHARE = "encrypted_share"
"""Reply: one client's encrypted share (uint8)."""
DECRYPT_REQUEST = "secure-decrypt-request"
"""Config (evaluation): True when this client must decrypt the sum for the cohort."""
SEALED_REPLY = "sealed_reply"
"""Evaluation reply: the seal made for the cohort (uint8)."""
SHARE_SIGNATURE = "share_signature"
"""Reply (threshold key): the client's Ed25519 signature of its encrypted share (uint8)."""
SIGNED_SHARE_PREFIX = "signed-share:"
"""Evaluation instruction (threshold): ``signed-share:<client id>``, a share of the sum."""
SHARE_SIGNATURE_PREFIX = "share-signature:"
"""Evaluation instruction (threshold): ``share-signature:<client id>``, its signature."""
SEALED_PARTIAL = "sealed_partial"
"""Evaluation reply (threshold): a partial decryption sealed for the cohort (uint8)."""
SEALED_PARTIAL_PREFIX = "sealed-partial:"
"""Instruction (threshold): ``sealed-partial:<j>``, the partials relayed with the sum."""
DECRYPT_FAILED_METRIC = "secure-decrypt-failed"
"""Reply metric: 1 when the consensus the client received did not decrypt."""
DECRYPT_ERROR_METRIC = "secure-decrypt-error"
"""Evaluation reply metric (1.0) of a client that could not decrypt for the cohort."""
CLIPPED_METRIC = "secure-clipped-values"
"""Reply metric: values a client clipped to the public bound of the secure sum."""
KEY_PATH_NODE_CONFIG = "paillier-key-path"
"""Node-config key naming the private key file of a client."""

# --- Paillier FedAvg around Flower's FedAvg (the user's own ClientApp) ---------------------
FEDAVG_SPEC = "secure-fedavg-spec"
"""Config: JSON of the secure FedAvg spec."""
FEDAVG_SUM = "secure-fedavg-sum"
"""Array: the encrypted weighted model sum the server relays."""
FEDAVG_SHARE = "secure-fedavg-share"
"""Array: one client's encrypted model share."""
FEDAVG_ENCRYPTED_FLAG = "secure-fedavg-encrypted"
"""Compat config: True when the parameters are the encrypted sum."""
FEDAVG_ARRAYS_KEY = "secure-fedavg-arrays-key"
"""Config: the ArrayRecord key the user's model travels under."""
FEDAVG_WEIGHT_KEY = "secure-fedavg-weight-key"
"""Config: the MetricRecord key of the user's example count."""


def join_names(names) -> str:
    """Array names as one config value (compat API, :data:`ARRAY_NAMES`)."""
    names = [str(n) for n in names]
    bad = [n for n in names if "," in n or not n]
    if bad:
        raise ValueError(f"array names must be non-empty and contain no comma: {bad}")
    return ",".join(names)


def split_names(value: object) -> list[str]:
    """Inverse of :func:`join_names` (an empty value: no arrays)."""
    text = str(value or "")
    return text.split(",") if text else []
