"""Tests for the heterogeneous model zoo (clients.models)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.datasets import load_digits

from clients.models import (
    ALL_MODELS,
    ARCHITECTURES,
    SKLEARN_MODELS,
    build_model,
    build_sklearn_model,
    count_parameters,
    describe,
    full_class_proba,
)

SHAPES = [(1, 28, 28), (3, 32, 32)]
NUM_CLASSES = 10


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("input_shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("name", ARCHITECTURES)
def test_logits_shape_and_backward(name: str, input_shape: tuple[int, int, int]) -> None:
    model = build_model(name, input_shape, NUM_CLASSES, seed=0)
    images = torch.randn(2, *input_shape, generator=torch.Generator().manual_seed(1))
    logits = model(images)
    assert logits.shape == (2, NUM_CLASSES)
    assert torch.isfinite(logits).all()
    targets = torch.tensor([0, 9])
    torch.nn.functional.cross_entropy(logits, targets).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    # After one step (vit_tiny's head starts at zero, as in torchvision, which blocks the
    # very first backward), every parameter tensor, the rebuilt input stems included, learns.
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    model.zero_grad()
    torch.nn.functional.cross_entropy(model(images), targets).backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert no_grad == []


@pytest.mark.parametrize(
    "name", ["cnn_small", "cnn_wide", "mlp", "vit_tiny", "shufflenet_v2", "lenet5"]
)
def test_digits_sized_inputs(name: str) -> None:
    model = build_model(name, (1, 8, 8), NUM_CLASSES)
    assert model(torch.rand(2, 1, 8, 8)).shape == (2, NUM_CLASSES)


@pytest.mark.parametrize("name", ["cnn_small", "vit_tiny", "mobilenet_v3_small", "lenet5"])
def test_same_seed_same_init_different_seed_different_init(name: str) -> None:
    first = _state(build_model(name, (1, 28, 28), NUM_CLASSES, seed=7))
    again = _state(build_model(name, (1, 28, 28), NUM_CLASSES, seed=7))
    other = _state(build_model(name, (1, 28, 28), NUM_CLASSES, seed=8))
    assert first.keys() == again.keys() == other.keys()
    assert all(torch.equal(first[k], again[k]) for k in first)
    float_keys = [k for k, v in first.items() if v.is_floating_point() and v.std() > 0]
    assert float_keys and all(not torch.equal(first[k], other[k]) for k in float_keys)


def test_build_leaves_global_rng_untouched() -> None:
    torch.manual_seed(123)
    expected = torch.rand(5)
    torch.manual_seed(123)
    build_model("resnet18", (3, 32, 32), NUM_CLASSES, seed=99)
    assert torch.equal(torch.rand(5), expected)


@pytest.mark.parametrize("input_shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_parameter_counts_differ_across_architectures(input_shape: tuple[int, int, int]) -> None:
    counts = {
        name: count_parameters(build_model(name, input_shape, NUM_CLASSES))
        for name in ARCHITECTURES
    }
    assert len(set(counts.values())) == len(ARCHITECTURES), counts
    assert 50_000 <= counts["cnn_small"] <= 100_000
    assert 80_000 <= counts["cnn_wide"] <= 120_000  # 32-64-128 channels with batch norm
    assert counts["resnet18"] > 10 * counts["cnn_wide"]


def test_count_parameters_matches_layer_arithmetic() -> None:
    mlp = build_model("mlp", (1, 28, 28), NUM_CLASSES)
    expected = (784 * 256 + 256) + (256 * 128 + 128) + (128 * NUM_CLASSES + NUM_CLASSES)
    assert count_parameters(mlp) == expected
    lenet = build_model("lenet5", (3, 32, 32), NUM_CLASSES)
    expected = (
        (3 * 25 * 6 + 6) + (6 * 25 * 16 + 16) + (400 * 120 + 120) + (120 * 84 + 84)
        + (84 * NUM_CLASSES + NUM_CLASSES)
    )
    assert count_parameters(lenet) == expected


def test_torchvision_stems_are_adapted_to_small_inputs() -> None:
    resnet = build_model("resnet18", (1, 28, 28), NUM_CLASSES).body
    assert resnet.conv1.in_channels == 1 and resnet.conv1.stride == (1, 1)
    assert isinstance(resnet.maxpool, torch.nn.Identity)
    mobilenet = build_model("mobilenet_v3_small", (1, 28, 28), NUM_CLASSES).body
    assert mobilenet.features[0][0].in_channels == 1
    assert mobilenet.features[0][0].stride == (1, 1)
    shufflenet = build_model("shufflenet_v2", (3, 32, 32), NUM_CLASSES).body
    assert shufflenet.conv1[0].stride == (1, 1)
    assert isinstance(shufflenet.maxpool, torch.nn.Identity)
    vit = build_model("vit_tiny", (1, 28, 28), NUM_CLASSES).body
    assert vit.conv_proj.in_channels == 1


def test_unknown_architecture_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="valid names") as error:
        build_model("resnet1000", (1, 28, 28), NUM_CLASSES)
    for name in ARCHITECTURES:
        assert name in str(error.value)


def test_sklearn_name_to_build_model_points_to_build_sklearn_model() -> None:
    with pytest.raises(ValueError, match="build_sklearn_model"):
        build_model("logreg", (1, 28, 28), NUM_CLASSES)


@pytest.mark.parametrize(
    ("name", "input_shape", "message"),
    [
        ("cnn_small", (28, 28), "three integers"),
        ("cnn_small", (1, 28, 28, 1), "three integers"),
        ("mlp", (1.0, 28, 28), "three integers"),
        ("mlp", None, "three integers"),
        ("cnn_small", (0, 28, 28), "positive"),
        ("resnet18", (3, 4, 4), "at least 8x8"),
        ("vit_tiny", (1, 28, 32), "square"),
        ("vit_tiny", (1, 29, 29), "patch"),
    ],
)
def test_bad_input_shape_raises_clear_error(name: str, input_shape: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_model(name, input_shape, NUM_CLASSES)  # type: ignore[arg-type]


@pytest.mark.parametrize("num_classes", [0, 1, 2.5, True])
def test_bad_num_classes_raises(num_classes: object) -> None:
    with pytest.raises(ValueError, match="num_classes"):
        build_model("mlp", (1, 8, 8), num_classes)  # type: ignore[arg-type]


def test_vit_patch_sizes_follow_the_spec() -> None:
    assert build_model("vit_tiny", (1, 28, 28), NUM_CLASSES).body.patch_size == 7
    assert build_model("vit_tiny", (3, 32, 32), NUM_CLASSES).body.patch_size == 4
    assert build_model("vit_tiny", (1, 8, 8), NUM_CLASSES).body.patch_size == 2


@settings(max_examples=15, deadline=None)
@given(
    channels=st.integers(1, 3),
    height=st.integers(4, 20),
    width=st.integers(4, 20),
    num_classes=st.integers(2, 12),
)
def test_small_nets_accept_any_reasonable_shape(
    channels: int, height: int, width: int, num_classes: int
) -> None:
    for name in ("cnn_small", "mlp", "lenet5"):
        model = build_model(name, (channels, height, width), num_classes)
        assert model(torch.zeros(2, channels, height, width)).shape == (2, num_classes)


def test_lenet5_layers_follow_lecun_1998() -> None:
    model = build_model("lenet5", (1, 28, 28), NUM_CLASSES)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size, c.padding) for c in convs] == [
        (6, (5, 5), (2, 2)),
        (16, (5, 5), (2, 2)),
    ]
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [
        (400, 120),
        (120, 84),
        (84, NUM_CLASSES),
    ]
    assert model.head is linears[-1] and model.feature_dim == 84
    assert describe("lenet5") == {"architecture": "lenet5", "family": "cnn", "framework": "pytorch"}
    assert ARCHITECTURES[-1] == "lenet5"  # appended: the older members keep their order
    # 4x4 is the smallest image it takes; smaller ones are rejected with a clear message.
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, NUM_CLASSES)
    assert build_model("lenet5", (3, 4, 4), 3)(torch.zeros(2, 3, 4, 4)).shape == (2, 3)
    with pytest.raises(ValueError, match="at least 4x4"):
        build_model("lenet5", (1, 3, 3), NUM_CLASSES)


def test_lenet5_trains_on_a_separable_task() -> None:
    # Class 0: bright left half, class 1: bright right half, plus noise.
    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(64) % 2
    images = 0.3 * torch.randn(64, 1, 12, 12, generator=gen)
    images[labels == 0, :, :, :6] += 1.0
    images[labels == 1, :, :, 6:] += 1.0
    model = build_model("lenet5", (1, 12, 12), 2, seed=0)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    losses = []
    for _ in range(40):
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.2 * losses[0]
    with torch.no_grad():
        assert (model(images).argmax(1) == labels).float().mean() == 1.0


def test_describe_every_model() -> None:
    families = {describe(name)["family"] for name in ALL_MODELS}
    assert families == {"cnn", "resnet", "mobilenet", "shufflenet", "transformer", "mlp", "linear"}
    assert describe("vit_tiny") == {
        "architecture": "vit_tiny",
        "family": "transformer",
        "framework": "pytorch",
    }
    assert describe("logreg")["framework"] == "scikit-learn"
    with pytest.raises(ValueError, match="valid names"):
        describe("gpt")


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    features, labels = load_digits(return_X_y=True)
    return features[:300] / 16.0, labels[:300]


@pytest.mark.parametrize("name", SKLEARN_MODELS)
def test_sklearn_fit_with_sample_weight_and_predict_proba(
    name: str, digits: tuple[np.ndarray, np.ndarray]
) -> None:
    features, labels = digits
    model = build_sklearn_model(name, seed=0)
    model.fit(features, labels, sample_weight=np.ones(len(labels)))
    proba = model.predict_proba(features)
    assert proba.shape == (len(labels), 10)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    assert (proba.argmax(axis=1) == labels).mean() > 0.8
    assert count_parameters(model) == 64 * 10 + 10

    # Sample weights are honoured: down-weighting class 0 lowers its predicted probability.
    weights = np.where(labels == 0, 0.01, 1.0)
    down = build_sklearn_model(name, seed=0).fit(features, labels, sample_weight=weights)
    is_zero = labels == 0
    assert down.predict_proba(features[is_zero])[:, 0].mean() < proba[is_zero, 0].mean()


def test_sklearn_seed_reproducible(digits: tuple[np.ndarray, np.ndarray]) -> None:
    features, labels = digits
    first = build_sklearn_model("sgd_logreg", seed=3).fit(features, labels)
    again = build_sklearn_model("sgd_logreg", seed=3).fit(features, labels)
    np.testing.assert_array_equal(first.coef_, again.coef_)


def test_sklearn_unknown_and_unfitted() -> None:
    with pytest.raises(ValueError, match="logreg, sgd_logreg"):
        build_sklearn_model("svm")
    with pytest.raises(ValueError, match="not fitted"):
        count_parameters(build_sklearn_model("logreg"))
    with pytest.raises(TypeError, match="torch.nn.Module"):
        count_parameters("cnn_small")


def test_full_class_proba_fills_unseen_classes(digits: tuple[np.ndarray, np.ndarray]) -> None:
    features, labels = digits
    seen = np.isin(labels, [1, 3, 7])
    model = build_sklearn_model("logreg").fit(features[seen], labels[seen])
    full = full_class_proba(model, features[:20], num_classes=10)
    assert full.shape == (20, 10)
    np.testing.assert_allclose(full.sum(axis=1), 1.0)
    assert np.all(full[:, [0, 2, 4, 5, 6, 8, 9]] == 0)
    np.testing.assert_allclose(full[:, [1, 3, 7]], model.predict_proba(features[:20]))
    with pytest.raises(ValueError, match=r"\[0, 5\)"):
        full_class_proba(model, features[:20], num_classes=5)
    with pytest.raises(ValueError, match="not fitted"):
        full_class_proba(build_sklearn_model("logreg"), features[:20], num_classes=10)


def test_mobilenet_batch_norm_statistics_follow_a_few_dozen_steps() -> None:
    """A client trains a few dozen steps a round: with torchvision's BN momentum 0.01 the
    eval-mode model would predict one class long after it trains well."""
    from torch import nn

    model = build_model("mobilenet_v3_small", (1, 28, 28), 10, seed=0)
    momenta = {m.momentum for m in model.modules() if isinstance(m, nn.BatchNorm2d)}
    assert momenta == {0.1}
