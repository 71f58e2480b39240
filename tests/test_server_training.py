"""Tests of flhet_strategies.server_training (FedTGP's server-side prototype training)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from flhet_strategies.server_training import (
    PrototypeGenerator,
    TrainablePrototypes,
    acl_loss,
    adaptive_margin,
    class_centers,
    class_gaps,
    load_state_arrays,
    stack_client_prototypes,
    state_arrays,
    train_prototypes,
)


def _client_uploads(num_clients=5, num_classes=4, dim=6, spread=6.0, noise=0.4, seed=0):
    """Well-separated synthetic uploads: every client has every class, near a centre."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(num_classes, dim))
    centres = spread * centres / np.linalg.norm(centres, axis=1, keepdims=True)
    per_client = [{c: centres[c] + noise * rng.normal(size=dim) for c in range(num_classes)}
                  for _ in range(num_clients)]
    return stack_client_prototypes(per_client)


def _nearest_generated(prototypes, generated):
    dist = ((prototypes[:, None, :] - generated[None, :, :]) ** 2).sum(axis=-1)
    return dist.argmin(axis=1)


# --- the generator network ---------------------------------------------------------


def test_trainable_prototypes_shapes_and_layers():
    model = TrainablePrototypes(3, 5, seed=0)
    assert model.hidden_dim == 5
    assert tuple(model.embedding.weight.shape) == (3, 5)
    assert tuple(model.hidden.weight.shape) == (5, 5)
    assert tuple(model.output.weight.shape) == (5, 5)
    out = model(torch.tensor([2, 0]))
    assert tuple(out.shape) == (2, 5)
    all_protos = model.prototypes()
    assert tuple(all_protos.shape) == (3, 5)
    torch.testing.assert_close(all_protos[[2, 0]], out)
    # forward is embedding -> Linear -> ReLU -> Linear
    with torch.no_grad():
        emb = model.embedding.weight[1]
        manual = model.output.weight @ torch.relu(model.hidden.weight @ emb + model.hidden.bias)
        manual = manual + model.output.bias
    torch.testing.assert_close(all_protos[1].detach(), manual)

    wide = TrainablePrototypes(3, 5, hidden_dim=7, seed=0)
    assert tuple(wide.hidden.weight.shape) == (7, 5)
    assert tuple(wide.prototypes().shape) == (3, 5)


def test_seeded_init_is_reproducible_and_leaves_global_rng_alone():
    before = torch.get_rng_state()
    a = TrainablePrototypes(4, 3, seed=7)
    b = TrainablePrototypes(4, 3, seed=7)
    c = TrainablePrototypes(4, 3, seed=8)
    assert torch.equal(torch.get_rng_state(), before)
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key])
    assert not torch.equal(a.embedding.weight, c.embedding.weight)


# --- loss ------------------------------------------------------------------------


def test_acl_loss_matches_hand_computation():
    generated = torch.tensor([[0.0, 0.0], [3.0, 4.0]])
    protos = torch.tensor([[0.0, 1.0], [3.0, 0.0]])
    labels = torch.tensor([0, 1])
    margin = 0.5
    # row 0, class 0: d = (1, sqrt(18)); the true class gets the margin
    d00, d01 = 1.0, math.sqrt(18.0)
    loss0 = -math.log(math.exp(-(d00 + margin))
                      / (math.exp(-(d00 + margin)) + math.exp(-d01)))
    # row 1, class 1: d = (3, 4)
    d10, d11 = 3.0, 4.0
    loss1 = -math.log(math.exp(-(d11 + margin))
                      / (math.exp(-d10) + math.exp(-(d11 + margin))))
    expected = (loss0 + loss1) / 2
    got = acl_loss(protos, labels, generated, margin)
    assert got.item() == pytest.approx(expected, abs=1e-5)
    # the margin matters: without it the loss is different (and smaller)
    no_margin = (math.log(1 + math.exp(d00 - d01)) + math.log(1 + math.exp(d11 - d10))) / 2
    assert acl_loss(protos, labels, generated, 0.0).item() == pytest.approx(no_margin, abs=1e-5)
    assert no_margin < expected


def test_acl_loss_gradient_is_finite_at_zero_distance():
    generated = torch.tensor([[1.0, 2.0], [4.0, -1.0]], requires_grad=True)
    protos = torch.tensor([[1.0, 2.0]])  # exactly on generated[0]
    labels = torch.tensor([0])
    acl_loss(protos, labels, generated, 1.0).backward()
    assert torch.isfinite(generated.grad).all()
    # without the epsilon the sqrt at 0 gives a NaN gradient
    raw = generated.detach().clone().requires_grad_(True)
    acl_loss(protos, labels, raw, 1.0, eps=0.0).backward()
    assert torch.isnan(raw.grad).any()


# --- margin ------------------------------------------------------------------------


def test_margin_on_known_prototypes():
    # class 0 centre (0, 0) from two clients, class 1 centre (3, 0), class 2 at (0, 10)
    protos = np.array([[-1.0, 0.0], [1.0, 0.0], [3.0, 1.0], [3.0, -1.0], [0.0, 10.0]])
    labels = np.array([0, 0, 1, 1, 2])
    centres = class_centers(protos, labels)
    np.testing.assert_allclose(centres[0], [0.0, 0.0])
    np.testing.assert_allclose(centres[1], [3.0, 0.0])
    gaps = class_gaps(protos, labels)
    # nearest other centre: 0 -> 1 (3), 1 -> 0 (3), 2 -> 0 (10, vs sqrt(109) to class 1)
    assert gaps == pytest.approx({0: 3.0, 1: 3.0, 2: 10.0})
    assert adaptive_margin(protos, labels, margin_threshold=100.0) == pytest.approx(10.0)
    assert adaptive_margin(protos, labels, margin_threshold=4.0) == pytest.approx(4.0)
    assert adaptive_margin(protos, labels, margin_threshold=0.0) == 0.0


def test_margin_is_zero_with_fewer_than_two_classes():
    one_class = np.array([[1.0, 2.0], [3.0, 4.0]])
    assert class_gaps(one_class, [5, 5]) == {}
    assert adaptive_margin(one_class, [5, 5]) == 0.0
    assert adaptive_margin(np.zeros((0, 2)), np.zeros((0,), dtype=int)) == 0.0
    assert adaptive_margin([], []) == 0.0
    with pytest.raises(ValueError, match="margin_threshold"):
        adaptive_margin(one_class, [0, 1], margin_threshold=-1.0)


# --- training ----------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_training_separates_classes_and_lowers_the_loss(seed):
    # d = 16 (hidden width 16): with very narrow hidden layers a class whose ReLU units
    # are all inactive gets no gradient (see docs/server_training.md)
    protos, labels = _client_uploads(dim=16, seed=seed)
    gen = PrototypeGenerator(4, 16, epochs=60, batch_size=8, lr=0.05, seed=seed)
    first = gen.fit(protos, labels)
    assert first["margin"] == pytest.approx(adaptive_margin(protos, labels))
    assert first["margin"] > 0
    assert first["epochs"] == 60 and len(first["losses"]) == 60
    assert first["num_prototypes"] == 20 and first["num_classes_seen"] == 4
    assert first["loss"] == first["losses"][-1]
    assert first["losses"][-1] < first["losses"][0]
    generated = gen.prototypes()
    assert generated.shape == (4, 16) and generated.dtype == np.float32
    assert np.array_equal(_nearest_generated(protos, generated), labels)
    # keeps training the same generator: the next round starts from where it stopped
    second = gen.fit(protos, labels)
    assert second["fit"] == 1 and gen.num_fits == 2
    assert second["losses"][0] < first["losses"][0]
    assert np.array_equal(_nearest_generated(protos, gen.prototypes()), labels)


def test_train_prototypes_returns_weighted_epoch_means():
    protos, labels = _client_uploads(num_clients=3, num_classes=3, dim=4)
    model = TrainablePrototypes(3, 4, seed=0)
    with torch.no_grad():
        start = acl_loss(torch.tensor(protos), torch.tensor(labels), model.prototypes(), 1.0)
    # one batch holding everything: the first epoch's loss is the loss before the step
    losses = train_prototypes(model, protos, labels, margin=1.0, epochs=3, batch_size=100,
                              lr=0.01, seed=0)
    assert len(losses) == 3
    assert losses[0] == pytest.approx(start.item(), rel=1e-6)
    assert losses[2] < losses[0]
    # uneven batches (4, 4, 1) and a negligible step: the epoch loss is the mean over
    # the 9 uploads (batch means weighted by batch size), not the mean of batch means
    frozen = TrainablePrototypes(3, 4, seed=0)
    tiny_step = train_prototypes(frozen, protos, labels, margin=1.0, epochs=1, batch_size=4,
                                 lr=1e-12, seed=0)
    assert tiny_step[0] == pytest.approx(start.item(), rel=1e-5)


def test_same_seed_same_prototypes_different_seed_different():
    protos, labels = _client_uploads()
    rng_before = torch.get_rng_state()
    threads_before = torch.get_num_threads()
    results = []
    for seed in (0, 0, 1):
        gen = PrototypeGenerator(4, 6, epochs=5, batch_size=4, seed=seed)
        gen.fit(protos, labels)
        results.append(gen.prototypes())
    assert np.array_equal(results[0], results[1])
    assert not np.allclose(results[0], results[2])
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert torch.get_num_threads() == threads_before


def test_shuffle_seed_changes_the_result_and_is_reproducible():
    protos, labels = _client_uploads()
    out = []
    for seed in (3, 3, 4):
        model = TrainablePrototypes(4, 6, seed=0)
        train_prototypes(model, protos, labels, margin=1.0, epochs=2, batch_size=3, lr=0.05,
                         seed=seed)
        out.append(model.prototypes().detach().numpy())
    assert np.array_equal(out[0], out[1])
    assert not np.allclose(out[0], out[2])


# --- validation --------------------------------------------------------------------


@pytest.mark.parametrize(
    "protos, labels, match",
    [
        (np.zeros((4,)), np.zeros(4, dtype=int), r"shape \(K, d\)"),
        (np.zeros((4, 5)), np.zeros(4, dtype=int), "dimension 5, expected 3"),
        (np.zeros((4, 3)), np.zeros(3, dtype=int), r"labels must have shape \(4,\)"),
        (np.array([[0.0, np.nan, 0.0]]), np.array([0]), "NaN or Inf"),
        (np.array([[0.0, np.inf, 0.0]]), np.array([0]), "NaN or Inf"),
        (np.zeros((2, 3)), np.array([0, -1]), "out of range"),
        (np.zeros((2, 3)), np.array([0, 2]), "out of range"),
        (np.zeros((2, 3)), np.array([0.0, 1.0]), "integers"),
        (np.zeros((2, 3)), np.array([True, False]), "integers"),
        (np.array([["a", "b", "c"]]), np.array([0]), "real numbers"),
        (np.zeros((0, 3)), np.zeros(0, dtype=int), "empty"),
        ([], [], "empty"),
    ],
)
def test_invalid_training_data_raises(protos, labels, match):
    model = TrainablePrototypes(2, 3, seed=0)
    before = state_arrays(model)
    with pytest.raises(ValueError, match=match):
        train_prototypes(model, protos, labels, margin=1.0, epochs=1, batch_size=2, lr=0.1,
                         seed=0)
    after = state_arrays(model)
    assert all(np.array_equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize(
    "settings, match",
    [
        ({"margin": -0.1}, "margin"),
        ({"margin": float("nan")}, "margin"),
        ({"epochs": 0}, "epochs"),
        ({"epochs": 1.5}, "epochs"),
        ({"batch_size": 0}, "batch_size"),
        ({"lr": 0.0}, "lr"),
        ({"lr": float("inf")}, "lr"),
        ({"seed": -1}, "seed"),
    ],
)
def test_invalid_training_settings_raise(settings, match):
    model = TrainablePrototypes(2, 3, seed=0)
    kwargs = {"margin": 1.0, "epochs": 1, "batch_size": 2, "lr": 0.1, "seed": 0, **settings}
    with pytest.raises(ValueError, match=match):
        train_prototypes(model, np.zeros((2, 3)), np.array([0, 1]), **kwargs)


def test_invalid_constructor_arguments_and_empty_fit_raise():
    with pytest.raises(ValueError, match="num_classes"):
        TrainablePrototypes(0, 3)
    with pytest.raises(ValueError, match="feature_dim"):
        TrainablePrototypes(2, 0)
    with pytest.raises(ValueError, match="hidden_dim"):
        TrainablePrototypes(2, 3, hidden_dim=0)
    with pytest.raises(ValueError, match="margin_threshold"):
        PrototypeGenerator(2, 3, margin_threshold=-1.0)
    gen = PrototypeGenerator(2, 3, epochs=1)
    with pytest.raises(ValueError, match="empty"):
        gen.fit(np.zeros((0, 3)), np.zeros(0, dtype=int))
    with pytest.raises(ValueError, match="out of range"):
        gen.fit(np.zeros((1, 3)), np.array([2]))
    assert gen.num_fits == 0


def test_acl_loss_shape_errors():
    with pytest.raises(ValueError, match="must be"):
        acl_loss(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long), torch.zeros(2, 4), 0.0)
    with pytest.raises(ValueError, match="labels"):
        acl_loss(torch.zeros(2, 3), torch.zeros(3, dtype=torch.long), torch.zeros(2, 3), 0.0)


def test_stack_client_prototypes():
    protos, labels = stack_client_prototypes([{1: [1.0, 2.0], 0: [3.0, 4.0]}, {1: [5.0, 6.0]}])
    np.testing.assert_array_equal(protos, [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    np.testing.assert_array_equal(labels, [1, 0, 1])
    assert protos.dtype == np.float32 and labels.dtype == np.int64
    empty_protos, empty_labels = stack_client_prototypes([{}, {}], feature_dim=2)
    assert empty_protos.shape == (0, 2) and empty_labels.shape == (0,)
    with pytest.raises(ValueError, match="expected"):
        stack_client_prototypes([{0: [1.0, 2.0]}, {1: [1.0, 2.0, 3.0]}])
    with pytest.raises(ValueError, match="class id"):
        stack_client_prototypes([{"a": [1.0, 2.0]}])


# --- save / restore ----------------------------------------------------------------


def test_state_arrays_round_trip_is_strict():
    source = TrainablePrototypes(3, 4, seed=1)
    target = TrainablePrototypes(3, 4, seed=2)
    arrays = state_arrays(source)
    assert set(arrays) == set(source.state_dict())
    assert all(isinstance(v, np.ndarray) for v in arrays.values())
    load_state_arrays(target, arrays)
    assert torch.equal(source.prototypes(), target.prototypes())

    other = TrainablePrototypes(3, 4, seed=3)
    kept = state_arrays(other)
    bad_inputs = [
        ({k: v for k, v in arrays.items() if k != "output.bias"}, "missing"),
        ({**arrays, "extra": np.zeros(1)}, "unexpected"),
        ({**arrays, "output.bias": np.zeros(5)}, "shape"),
        ({**arrays, "output.bias": np.full(4, np.nan)}, "NaN"),
    ]
    for bad, match in bad_inputs:
        with pytest.raises(ValueError, match=match):
            load_state_arrays(other, bad)
    after = state_arrays(other)
    assert all(np.array_equal(kept[k], after[k]) for k in kept)


def test_generator_checkpoint_restores_and_continues_identically():
    protos, labels = _client_uploads()
    protos2, labels2 = _client_uploads(seed=1)
    settings = {"epochs": 4, "batch_size": 3, "lr": 0.05, "seed": 5}
    original = PrototypeGenerator(4, 6, **settings)
    original.fit(protos, labels)
    state = original.state_dict()
    assert int(state["num_fits"]) == 1

    restored = PrototypeGenerator(4, 6, **settings)
    restored.load_state_dict(state)
    assert restored.num_fits == 1
    assert np.array_equal(restored.prototypes(), original.prototypes())

    a = original.fit(protos2, labels2)
    b = restored.fit(protos2, labels2)
    assert a["losses"] == b["losses"]
    assert np.array_equal(original.prototypes(), restored.prototypes())

    # restoring only the weights (fit counter reset) would shuffle differently
    weights_only = PrototypeGenerator(4, 6, **settings)
    weights_only.load_state_dict({**state, "num_fits": np.array(0)})
    weights_only.fit(protos2, labels2)
    assert not np.array_equal(weights_only.prototypes(), original.prototypes())


def test_generator_checkpoint_is_strict():
    gen = PrototypeGenerator(2, 3, epochs=1, seed=0)
    state = gen.state_dict()
    kept = gen.prototypes()
    bad_inputs = [
        ({k: v for k, v in state.items() if k != "num_fits"}, "missing"),
        ({**state, "extra": np.zeros(1)}, "unexpected"),
        ({**state, "seed": np.array(1)}, "seed"),
        ({**state, "num_fits": np.array(-1)}, "num_fits"),
        ({**state, "num_fits": np.array([1, 2])}, "num_fits"),
        ({**state, "model.embedding.weight": np.zeros((3, 3))}, "shape"),
    ]
    for bad, match in bad_inputs:
        with pytest.raises(ValueError, match=match):
            gen.load_state_dict(bad)
    assert np.array_equal(gen.prototypes(), kept)
    assert gen.num_fits == 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_generator_on_cuda_starts_from_the_cpu_parameters_and_trains():
    gpu = PrototypeGenerator(4, 16, epochs=60, batch_size=8, seed=0, device="cuda")
    np.testing.assert_allclose(PrototypeGenerator(4, 16, seed=0).prototypes(), gpu.prototypes(),
                               rtol=1e-5, atol=1e-6)
    protos, labels = _client_uploads(dim=16)
    result = gpu.fit(protos, labels)
    assert result["losses"][-1] < result["losses"][0]
    assert np.array_equal(_nearest_generated(protos, gpu.prototypes()), labels)
