"""Body/head split of the zoo models and the projection adapter (clients.models.split).

The split must not change a default model at all: the pre-split networks are rebuilt
here inline, under the same seed, and compared bitwise.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torchvision import models

from clients.models import (
    ARCHITECTURES,
    ProjectionAdapter,
    SplitModel,
    build_model,
    native_feature_dim,
)
from clients.models.split import split_off_head, split_sequential

NUM_CLASSES = 10
SHAPES = [(1, 28, 28), (3, 32, 32), (1, 8, 8)]
NATIVE_WIDTHS = {
    "cnn_small": 128,
    "cnn_wide": 128,
    "mlp": 128,
    "resnet18": 512,
    "mobilenet_v3_small": 1024,
    "shufflenet_v2": 1024,
    "vit_tiny": 64,
    "lenet5": 84,
}


def _shape_id(shape: tuple[int, int, int]) -> str:
    return "x".join(map(str, shape))


# --- the networks as the zoo built them before the body/head split --------------------


def _conv_bn_relu(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(True)]


def _fan_out(conv: nn.Conv2d) -> nn.Conv2d:
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    return conv


def _reference(name: str, shape: tuple[int, int, int], k: int) -> nn.Module:
    """The unsplit network of ``name``, written out independently of clients.models."""
    c, h, _ = shape
    if name == "cnn_small":
        return nn.Sequential(
            nn.Conv2d(c, 16, 3, padding=1), nn.ReLU(True), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(True), nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(4), nn.Flatten(),
            nn.Linear(512, 128), nn.ReLU(True), nn.Linear(128, k),
        )
    if name == "cnn_wide":
        return nn.Sequential(
            *_conv_bn_relu(c, 32), nn.MaxPool2d(2), *_conv_bn_relu(32, 64), nn.MaxPool2d(2),
            *_conv_bn_relu(64, 128), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, k),
        )
    if name == "mlp":
        return nn.Sequential(
            nn.Flatten(), nn.Linear(math.prod(shape), 256), nn.ReLU(True),
            nn.Linear(256, 128), nn.ReLU(True), nn.Linear(128, k),
        )
    if name == "lenet5":
        return nn.Sequential(
            nn.Conv2d(c, 6, 5, padding=2), nn.ReLU(True), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5, padding=2), nn.ReLU(True), nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(5), nn.Flatten(),
            nn.Linear(400, 120), nn.ReLU(True), nn.Linear(120, 84), nn.ReLU(True),
            nn.Linear(84, k),
        )
    if name == "resnet18":
        model = models.resnet18(weights=None, num_classes=k)
        model.conv1 = _fan_out(nn.Conv2d(c, 64, 3, stride=1, padding=1, bias=False))
        model.maxpool = nn.Identity()
        return model
    if name == "mobilenet_v3_small":
        model = models.mobilenet_v3_small(weights=None, num_classes=k)
        model.features[0][0] = _fan_out(nn.Conv2d(c, 16, 3, stride=1, padding=1, bias=False))
        for module in model.modules():   # the zoo's batch norms use momentum 0.1
            if isinstance(module, nn.BatchNorm2d):
                module.momentum = 0.1
        return model
    if name == "shufflenet_v2":
        model = models.shufflenet_v2_x0_5(weights=None, num_classes=k)
        model.conv1[0] = nn.Conv2d(c, 24, 3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
        return model
    if name == "vit_tiny":
        patch = {28: 7, 32: 4, 8: 2}[h]
        model = models.VisionTransformer(
            image_size=h, patch_size=patch, num_layers=2, num_heads=4, hidden_dim=64,
            mlp_dim=128, num_classes=k,
        )
        conv_proj = nn.Conv2d(c, 64, kernel_size=patch, stride=patch)
        nn.init.trunc_normal_(conv_proj.weight, std=math.sqrt(1 / (c * patch * patch)))
        nn.init.zeros_(conv_proj.bias)
        model.conv_proj = conv_proj
        return model
    raise AssertionError(f"no reference for {name}")


def _build_reference(name: str, shape: tuple[int, int, int], k: int, seed: int) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _reference(name, shape, k)


def _outputs(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list]:
    """Eval logits, train-mode logits (fixed dropout seed) and the train-mode gradients."""
    model.eval()
    with torch.no_grad():
        evaluated = model(x)
    model.train()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        trained = model(x)
    model.zero_grad()
    trained.square().sum().backward()
    return evaluated, trained.detach(), [p.grad.clone() for p in model.parameters()]


def test_every_architecture_has_a_reference() -> None:
    assert set(ARCHITECTURES) == set(NATIVE_WIDTHS)


@pytest.mark.parametrize(("shape", "seed", "k"), [((1, 28, 28), 0, 10), ((3, 32, 32), 5, 7)],
                         ids=["1x28x28-seed0", "3x32x32-seed5"])
@pytest.mark.parametrize("name", ARCHITECTURES)
def test_default_split_model_is_bitwise_the_pre_split_network(
    name: str, shape: tuple[int, int, int], seed: int, k: int
) -> None:
    model = build_model(name, shape, k, seed=seed)
    reference = _build_reference(name, shape, k, seed)
    assert isinstance(model, SplitModel)
    params, ref_params = list(model.parameters()), list(reference.parameters())
    assert [p.shape for p in params] == [p.shape for p in ref_params]
    assert all(torch.equal(a, b) for a, b in zip(params, ref_params))
    buffers, ref_buffers = list(model.buffers()), list(reference.buffers())
    assert len(buffers) == len(ref_buffers)
    assert all(torch.equal(a, b) for a, b in zip(buffers, ref_buffers))
    # The state dict holds the same tensors, only under body./head. names.
    assert len(model.state_dict()) == len(reference.state_dict())
    assert all(key.startswith(("body.", "head.")) for key in model.state_dict())
    x = torch.randn(3, *shape, generator=torch.Generator().manual_seed(11))
    got, want = _outputs(model, x), _outputs(reference, x)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    assert all(torch.equal(a, b) for a, b in zip(got[2], want[2]))
    # The head is the network's own last linear layer.
    assert isinstance(model.head, nn.Linear) and model.head.out_features == k
    assert torch.equal(model.head.weight, ref_params[-2]) and torch.equal(model.head.bias,
                                                                          ref_params[-1])


@pytest.mark.parametrize("shape", SHAPES, ids=_shape_id)
@pytest.mark.parametrize("name", ARCHITECTURES)
def test_body_width_is_the_native_feature_dim(name: str, shape: tuple[int, int, int]) -> None:
    model = build_model(name, shape, NUM_CLASSES).eval()
    x = torch.rand(2, *shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        features = model.body(x)
        assert torch.equal(model.head(features), model(x))
    assert features.shape == (2, NATIVE_WIDTHS[name])
    assert native_feature_dim(name, shape) == model.feature_dim == NATIVE_WIDTHS[name]
    assert model.head.in_features == NATIVE_WIDTHS[name]


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_feature_dim_adds_a_projection_into_the_common_space(name: str) -> None:
    shape = (1, 8, 8)
    default = build_model(name, shape, NUM_CLASSES, seed=4)
    x = torch.rand(3, *shape, generator=torch.Generator().manual_seed(0))
    for d in (32, NATIVE_WIDTHS[name]):
        model = build_model(name, shape, NUM_CLASSES, seed=4, feature_dim=d).eval()
        native_body, adapter = model.body
        assert isinstance(adapter, ProjectionAdapter)  # there even when d is the native width
        assert (adapter.in_features, adapter.out_features) == (NATIVE_WIDTHS[name], d)
        assert type(model.head) is nn.Linear
        assert (model.head.in_features, model.head.out_features) == (d, NUM_CLASSES)
        assert model.feature_dim == d
        with torch.no_grad():
            assert model.body(x).shape == (3, d)
            assert model(x).shape == (3, NUM_CLASSES)
        # The native body is the default model's body, same seed, same values.
        assert all(torch.equal(a, b) for a, b in
                   zip(native_body.parameters(), default.body.parameters()))
        # The native last layer is gone: the parameters are body, adapter and new head only.
        expected = sum(p.numel() for p in default.body.parameters()) + (
            NATIVE_WIDTHS[name] * d + d) + (d * NUM_CLASSES + NUM_CLASSES)
        assert sum(p.numel() for p in model.parameters()) == expected


def test_feature_dim_gives_cnns_and_transformers_one_feature_space() -> None:
    cnn = build_model("cnn_small", (1, 28, 28), NUM_CLASSES, feature_dim=48)
    vit = build_model("vit_tiny", (1, 28, 28), NUM_CLASSES, feature_dim=48)
    assert cnn.head.weight.shape == vit.head.weight.shape == (NUM_CLASSES, 48)
    vit.head.load_state_dict(cnn.head.state_dict())  # a head moves between architectures
    features = torch.randn(4, 48)
    assert torch.equal(vit.head(features), cnn.head(features))


def test_feature_dim_build_is_seeded_and_leaves_global_rng_alone() -> None:
    torch.manual_seed(1)
    expected = torch.rand(3)
    torch.manual_seed(1)
    a = build_model("cnn_wide", (1, 8, 8), NUM_CLASSES, seed=2, feature_dim=16)
    assert torch.equal(torch.rand(3), expected)
    b = build_model("cnn_wide", (1, 8, 8), NUM_CLASSES, seed=2, feature_dim=16)
    c = build_model("cnn_wide", (1, 8, 8), NUM_CLASSES, seed=3, feature_dim=16)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not torch.equal(a.body[1].weight, c.body[1].weight)


@pytest.mark.parametrize("feature_dim", [0, -3, 2.5, True, "64"])
def test_bad_feature_dim_raises(feature_dim: object) -> None:
    with pytest.raises(ValueError, match="feature_dim"):
        build_model("mlp", (1, 8, 8), NUM_CLASSES, feature_dim=feature_dim)  # type: ignore


def test_native_feature_dim_validates_like_build_model() -> None:
    with pytest.raises(ValueError, match="valid names"):
        native_feature_dim("resnet1000", (1, 28, 28))
    with pytest.raises(ValueError, match="build_sklearn_model"):
        native_feature_dim("logreg", (1, 28, 28))
    with pytest.raises(ValueError, match="square"):
        native_feature_dim("vit_tiny", (1, 28, 32))


def test_projection_adapter_is_a_default_initialised_linear_map() -> None:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        adapter = ProjectionAdapter(6, 4)
        torch.manual_seed(0)
        linear = nn.Linear(6, 4)
    assert torch.equal(adapter.weight, linear.weight) and torch.equal(adapter.bias, linear.bias)
    x = torch.randn(5, 6)
    assert torch.allclose(adapter(x), x @ adapter.weight.T + adapter.bias)
    for bad in [(0, 4), (6, -1), (2.5, 4)]:
        with pytest.raises(ValueError, match="positive integer"):
            ProjectionAdapter(*bad)  # type: ignore[arg-type]


def test_split_model_infers_or_needs_feature_dim() -> None:
    body, head = nn.Flatten(), nn.Linear(12, 3)
    model = SplitModel(body, head)
    assert model.feature_dim == 12
    x = torch.randn(2, 3, 2, 2)
    assert torch.equal(model(x), head(body(x)))
    assert SplitModel(nn.Identity(), nn.Sequential(nn.Linear(5, 2)), feature_dim=5).feature_dim == 5
    with pytest.raises(ValueError, match="pass feature_dim"):
        SplitModel(nn.Identity(), nn.Sequential(nn.Linear(5, 2)))
    with pytest.raises(ValueError, match="positive integer"):
        SplitModel(nn.Identity(), head, feature_dim=0)


def test_split_helpers_reject_a_non_linear_head() -> None:
    with pytest.raises(TypeError, match="ends in an nn.Linear"):
        split_sequential(nn.Sequential(nn.Linear(3, 3), nn.ReLU()))
    with pytest.raises(TypeError, match="not an nn.Linear"):
        split_off_head(nn.Sequential(nn.Linear(3, 3), nn.ReLU()), "1")
    model = nn.Sequential(nn.Flatten(), nn.Sequential(nn.Linear(4, 5), nn.Linear(5, 2)))
    split = split_off_head(model, "1.1")
    assert isinstance(model[1][1], nn.Identity) and split.feature_dim == 5
    assert split.body(torch.randn(3, 4)).shape == (3, 5)
