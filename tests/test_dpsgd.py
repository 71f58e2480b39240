"""Record-level DP-SGD in the torch learner (Opacus), on scikit-learn's digits.

One DP-SGD step against a by-hand computation (per-example gradients clipped, summed,
divided by the expected batch), the noise's standard deviation, distillation gradients
on public proxy data added unclipped, the budget that stops private steps, the
accountant's state across save/restore, the calibration, per-example gradients of the
zoo models Opacus has to rewrite, and the label histogram a DP-SGD client does not send.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from opacus.accountants import RDPAccountant
from sklearn.datasets import load_digits

from clients.algorithms.consensus import ConsensusClient
from clients.federated_client import FederatedClient
from clients.learners.base import DistillTarget
from clients.learners.dpsgd import (
    DPSGD,
    STATE_KEY,
    calibrate_noise_multiplier,
    make_private_compatible,
    sample_rate,
    steps_per_epoch,
)
from clients.learners.torch_learner import TorchLearner
from clients.models.zoo import build_model
from flhet_strategies import wire
from flhet_strategies.evaluation import record_privacy_summary


@pytest.fixture(scope="module")
def digits():
    data = load_digits()
    return (data.images / 16.0).astype(np.float32)[:, None], data.target.astype(np.int64)


def _learner(dp, seed=0, lr=0.1, batch_size=64, arch="mlp"):
    return TorchLearner(build_model(arch, (1, 8, 8), 10, seed=seed), lr=lr,
                        batch_size=batch_size, weight_decay=0.0, seed=seed, dp=dp)


def _params(learner):
    return torch.cat([p.detach().flatten().clone() for p in learner.model.parameters()])


def test_one_step_is_clipped_per_example_gradients_summed_over_the_expected_batch(digits):
    x, y = digits[0][:20], digits[1][:20]
    clip = 0.5
    # batch_size = N: sampling rate 1, one step holding all 20 examples; noise negligible
    learner = _learner(DPSGD(noise_multiplier=1e-9, max_grad_norm=clip), batch_size=20)
    model = learner.model
    params = [p for p in model.parameters()]
    clipped = [torch.zeros_like(p) for p in params]
    for i in range(20):
        loss = F.cross_entropy(model(torch.tensor(x[i:i + 1])), torch.tensor(y[i:i + 1]))
        grads = torch.autograd.grad(loss, params)
        norm = torch.sqrt(sum((g ** 2).sum() for g in grads))
        factor = min(1.0, clip / (float(norm) + 1e-6))
        for acc, g in zip(clipped, grads):
            acc += factor * g
    expected = _params(learner) - 0.1 * torch.cat([(c / 20).flatten() for c in clipped])
    metrics = learner.train(x, y, epochs=1)
    assert metrics["dp_steps"] == 1
    np.testing.assert_allclose(_params(learner).numpy(), expected.numpy(), atol=1e-6)
    # The unclipped step differs: the clip was active.
    assert float(torch.sqrt(sum((c ** 2).sum() for c in clipped))) < 20 * clip


def test_noise_has_standard_deviation_sigma_clip_over_expected_batch(digits):
    x, y = digits[0][:20], digits[1][:20]
    sigma, clip = 50.0, 1.0
    learner = _learner(DPSGD(noise_multiplier=sigma, max_grad_norm=clip), batch_size=20, lr=1.0)
    before = _params(learner)
    learner.train(x, y, epochs=1)
    step = (_params(learner) - before).numpy()
    # Signal is at most clip / 20 in L2 over all parameters; the noise is 2.5 per entry.
    assert step.std() == pytest.approx(sigma * clip / 20, rel=0.05)
    assert abs(step.mean()) < 0.1


def test_distillation_on_public_proxy_data_is_added_unclipped_and_unnoised(digits):
    x, y = digits[0][:20], digits[1][:20]
    proxy = digits[0][100:132]           # 32 proxy inputs < batch size: one proxy batch
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(10), size=32).astype(np.float32)
    target = DistillTarget(proxy, probs, weight=3.0, temperature=1.0)
    # Private gradients clipped to ~0 and the noise with them: only the KD term moves.
    learner = _learner(DPSGD(noise_multiplier=1e-9, max_grad_norm=1e-9), batch_size=64)
    model = learner.model
    from flhet_strategies.kd_loss import kd_loss
    kd = 3.0 * kd_loss(model(torch.tensor(proxy)), torch.tensor(probs), 1.0)
    grads = torch.autograd.grad(kd, list(model.parameters()))
    expected = _params(learner) - 0.1 * torch.cat([g.flatten() for g in grads])
    learner.train(x, y, epochs=1, distill=target)      # one step (rate 1: 20 < 64)
    np.testing.assert_allclose(_params(learner).numpy(), expected.numpy(), atol=1e-6)
    assert float(torch.sqrt(sum((g ** 2).sum() for g in grads))) > 1e-3  # far above the clip


def test_budget_stops_private_steps_and_epsilon_stays_below_it(digits):
    x, y = digits
    dp = DPSGD(noise_multiplier=1.0, max_grad_norm=1.0, max_epsilon=1.5)
    learner = _learner(dp)
    first = learner.train(x, y, epochs=3)
    spent = learner.privacy_spent()
    wanted = 3 * steps_per_epoch(sample_rate(64, len(x)))
    assert first["dp_budget_exhausted"] == 1.0 and 0 < first["dp_steps"] < wanted
    assert spent["epsilon"] <= 1.5
    assert spent["epsilon"] > 1.3       # it stopped near the budget, not early
    # Budget spent: a further call takes no private step and, without a public term,
    # leaves the model unchanged.
    before = _params(learner)
    again = learner.train(x, y, epochs=1)
    assert again["dp_steps"] == 0
    assert torch.equal(before, _params(learner))
    assert learner.privacy_spent()["epsilon"] == spent["epsilon"]


def test_epsilon_is_opacus_rdp_of_the_steps_taken_and_survives_a_restore(digits):
    x, y = digits
    dp = DPSGD(noise_multiplier=1.1, max_grad_norm=1.0, delta=1e-5)
    learner = _learner(dp)
    learner.train(x, y, epochs=2)
    rate = sample_rate(64, len(x))
    steps = 2 * steps_per_epoch(rate)
    reference = RDPAccountant()
    reference.history = [(1.1, rate, steps)]
    assert learner.privacy_spent()["steps"] == steps
    assert learner.privacy_spent()["epsilon"] == pytest.approx(reference.get_epsilon(1e-5))
    state = learner.get_state()
    assert state[STATE_KEY].shape == (1, 3)
    restored = _learner(dp, seed=5)
    restored.set_state(state)
    assert restored.privacy_spent() == learner.privacy_spent()
    restored.train(x, y, epochs=1)         # keeps counting from the restored history
    assert restored.privacy_spent()["steps"] == steps + steps_per_epoch(rate)
    with pytest.raises(ValueError, match="DP-SGD"):
        _learner(None).set_state(state)
    with pytest.raises(ValueError, match="DP-SGD"):
        restored.set_state(_learner(None).get_state())


def test_calibrated_noise_spends_the_target_epsilon():
    rate, steps = 64 / 1311, 34 * steps_per_epoch(64 / 1311)
    z = calibrate_noise_multiplier(8.0, 1e-5, rate, steps)
    accountant = RDPAccountant()
    accountant.history = [(z, rate, steps)]
    assert 7.9 <= accountant.get_epsilon(1e-5) <= 8.0
    assert calibrate_noise_multiplier(2.0, 1e-5, rate, steps) > z   # less epsilon, more noise


@pytest.mark.parametrize("arch", ["cnn_wide", "vit_tiny", "resnet18", "mobilenet_v3_small"])
def test_zoo_models_opacus_rewrites_give_exact_per_example_gradients(arch):
    from opacus import GradSampleModule

    # float64: float32 sums in another order (batch of 4 vs 1, thread count) differ by up
    # to 3e-3 on MobileNet; a wrong per-example split is O(1)
    model = make_private_compatible(build_model(arch, (1, 8, 8), 10, seed=0)).double()
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0                 # so one example alone sees the same network
    wrapped = GradSampleModule(model)
    model.train()
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(4, 1, 8, 8, generator=generator, dtype=torch.float64)
    y = torch.randint(0, 10, (4,), generator=generator)
    F.cross_entropy(model(x), y).backward()
    wrapped.disable_hooks()
    params = [p for p in model.parameters() if p.requires_grad]
    alone = torch.autograd.grad(F.cross_entropy(model(x[2:3]), y[2:3]), params)
    for p, g in zip(params, alone):
        torch.testing.assert_close(p.grad_sample[2], g, atol=1e-8, rtol=1e-6)


def _client(learner, digits):
    x, y = digits
    return FederatedClient(learner, x[:200], y[:200], x[200:260], y[200:260], x[300:400], 10)


def test_a_dp_sgd_client_sends_no_label_histogram_and_no_private_loss(digits):
    """(Its class prototypes and counts go through the Gaussian mechanism:
    tests/test_dpsgd_prototypes.py.)"""
    from flhet_strategies.algorithms.consensus import RoundPlan
    from flhet_strategies.algorithms.recipes import DistillationRecipe

    plan = RoundPlan(1, np.arange(20), np.arange(0), np.zeros((0, 10), np.float32))
    recipe = DistillationRecipe(warmup_epochs=0)
    private = _client(_learner(DPSGD(1.0)), digits)
    reply = ConsensusClient.train(plan, recipe, private)
    assert set(reply.arrays) == {wire.LOGITS}
    assert "train_loss" not in reply.metrics     # a mean over private records: not DP
    plain = ConsensusClient.train(plan, recipe, _client(_learner(None), digits))
    assert wire.CLASS_COUNTS in plain.arrays and "train_loss" in plain.metrics
    assert private.privacy_metrics()[wire.RECORD_EPSILON] > 0
    assert plain.arrays and _client(_learner(None), digits).privacy_metrics() == {}


def test_history_summary_of_the_clients_epsilon():
    metrics = {"1": {wire.RECORD_EPSILON: 2.0, wire.RECORD_DELTA: 1e-5},
               "0": {wire.RECORD_EPSILON: 4.0, wire.RECORD_DELTA: 1e-5}, "2": {}}
    summary = record_privacy_summary(metrics)
    assert summary == {"epsilon_per_client": {"0": 4.0, "1": 2.0}, "epsilon_mean": 3.0,
                       "epsilon_max": 4.0, "record_delta": 1e-5}
    assert record_privacy_summary({"0": {"client_accuracy": 0.5}}) == {}


def test_settings_are_validated():
    for bad in ({"noise_multiplier": 0}, {"noise_multiplier": 1, "max_grad_norm": -1},
                {"noise_multiplier": 1, "delta": 1.0}, {"noise_multiplier": 1, "max_epsilon": 0}):
        with pytest.raises(ValueError):
            DPSGD(**bad)


def test_both_faces_reply_path_carries_the_epsilon(digits):
    """The ClientApp and the NumPyClient both answer through ``clients.algorithms.fit`` /
    ``evaluate``, which add the learner's epsilon to the reply metrics."""
    from clients import algorithms
    from flhet_strategies.algorithms.consensus import RoundPlan
    from flhet_strategies.algorithms.recipes import DistillationRecipe
    from flhet_strategies.protocol import Instruction

    client = _client(_learner(DPSGD(1.0)), digits)
    plan = RoundPlan(1, np.arange(20), np.arange(0), np.zeros((0, 10), np.float32))
    config = {**DistillationRecipe(warmup_epochs=0).to_config(), wire.SERVER_ROUND: 1,
              wire.ALGORITHM: "consensus"}
    reply = algorithms.fit(Instruction(plan.to_arrays(), config), client)
    spent = client.learner.privacy_spent()["epsilon"]
    assert reply.metrics[wire.RECORD_EPSILON] == spent > 0
    assert reply.metrics[wire.RECORD_DELTA] == 1e-5
    metrics = algorithms.evaluate(Instruction({}, config), client)
    assert metrics[wire.RECORD_EPSILON] == spent and "client_accuracy" in metrics
