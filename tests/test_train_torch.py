"""Training through the public API against PyTorch: the same weights, data and optimizer give
the same parameters, batch-norm running statistics, losses and learning rates.

    model = cc.compile(spec); model.load_params(torch_net.state_dict())
    model.set_optimizer({...}); model.train_step(x, y) x3; model.params   <->   torch

The net has batch norm, a depthwise and a dilated conv, LRN and both max and average pooling.
Its convs that feed batch norm have no bias: such a bias gets a zero gradient in exact
arithmetic, so Adam would turn each side's rounding noise into a full-size step.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from conftest import needs_torch

torch = pytest.importorskip("torch", reason="PyTorch is not installed")
pytest.importorskip("tvm", reason="the TVM compiler is not installed")

import cnncompiler as cc  # noqa: E402
from cnncompiler.errors import TrainingError  # noqa: E402
from cnncompiler.train import optim  # noqa: E402

nn = torch.nn
F = torch.nn.functional

pytestmark = [needs_torch, pytest.mark.torch, pytest.mark.tvm, pytest.mark.slow]

SPEC = """\
name: torch_twin
input: [3, 12, 12]
layers:
  - {name: conv1, type: conv2d, filters: 8, kernel: 3, padding: 1, bias: false}
  - {name: bn1, type: batchnorm}
  - {name: relu1, type: relu}
  - {name: dw, type: conv2d, filters: 8, kernel: 3, padding: 2, dilation: 2, groups: 8, bias: false}
  - {name: bn2, type: batchnorm, momentum: 0.2}
  - {name: act2, type: tanh}
  - {name: pool1, type: maxpool2d, kernel: 2}
  - {name: lrn, type: lrn, size: 3, alpha: 0.1, beta: 0.75, k: 2.0}
  - {name: conv3, type: conv2d, filters: 12, kernel: 3, dilation: 2, padding: 1}
  - {name: relu3, type: relu}
  - {name: pool2, type: avgpool2d, kernel: 2}
  - {name: flatten, type: flatten}
  - {name: fc, type: dense, units: 10}
train:
  loss: softmax_cross_entropy
  optimizer: {type: sgd, lr: 0.05, momentum: 0.9}
"""
CLASSES = 10
RTOL = 1e-4


class TorchTwin(nn.Module):
    """SPEC written by hand in PyTorch, with the spec's parameter names."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=8, bias=False)
        self.bn2 = nn.BatchNorm2d(8, momentum=0.2)
        self.lrn = nn.LocalResponseNorm(3, alpha=0.1, beta=0.75, k=2.0)
        self.conv3 = nn.Conv2d(8, 12, 3, dilation=2, padding=1)
        self.fc = nn.Linear(12 * 2 * 2, CLASSES)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = F.max_pool2d(torch.tanh(self.bn2(self.dw(x))), 2)
        x = F.avg_pool2d(torch.relu(self.conv3(self.lrn(x))), 2)
        return self.fc(torch.flatten(x, 1))


TORCH_OPTIMIZERS = {
    "sgd": lambda p, c: torch.optim.SGD(p, lr=c["lr"], momentum=c.get("momentum", 0),
                                        dampening=c.get("dampening", 0),
                                        nesterov=c.get("nesterov", False),
                                        weight_decay=c.get("weight_decay", 0)),
    "adam": lambda p, c: torch.optim.Adam(p, lr=c["lr"], betas=tuple(c.get("betas", (0.9, 0.999))),
                                          eps=c.get("eps", 1e-8),
                                          weight_decay=c.get("weight_decay", 0)),
    "adamw": lambda p, c: torch.optim.AdamW(p, lr=c["lr"],
                                            betas=tuple(c.get("betas", (0.9, 0.999))),
                                            eps=c.get("eps", 1e-8),
                                            weight_decay=c.get("weight_decay", 0.01)),
}

CONFIGS = {
    "sgd-momentum": {"type": "sgd", "lr": 0.05, "momentum": 0.9},
    "sgd-nesterov-decay": {"type": "sgd", "lr": 0.05, "momentum": 0.9, "nesterov": True,
                           "weight_decay": 5e-3},
    "sgd-dampening": {"type": "sgd", "lr": 0.1, "momentum": 0.5, "dampening": 0.3},
    "sgd-plain": {"type": "sgd", "lr": 0.1},
    "adam": {"type": "adam", "lr": 1e-2, "weight_decay": 1e-3},
    "adam-betas": {"type": "adam", "lr": 3e-3, "betas": [0.8, 0.95], "eps": 1e-6},
    "adamw": {"type": "adamw", "lr": 1e-2, "weight_decay": 0.1},
}


# -- fixtures --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    """(spec path, artifact directory, the compiled model)."""
    root = tmp_path_factory.mktemp("torch_twin")
    spec = root / "torch_twin.yaml"
    spec.write_text(SPEC)
    model = cc.compile(spec, output_dir=root / "artifact")
    return spec, root / "artifact", model


def fresh_model(artifact):
    """A new model over the compiled artifact: its own trainer, counters and optimizer state."""
    return cc.load(artifact[1])


def twin(seed: int = 0) -> TorchTwin:
    torch.manual_seed(seed)
    net = TorchTwin()
    with torch.no_grad():  # batch-norm affine terms away from 1 and 0, so they matter
        for bn in (net.bn1, net.bn2):
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.3, 0.3)
            bn.running_var.uniform_(0.5, 1.5)
    return net


def batches(count: int, n: int = 16, seed: int = 1):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal((n, 3, 12, 12)).astype(np.float32),
             rng.integers(0, CLASSES, n)) for _ in range(count)]


def torch_step(net, opt, x, y):
    net.train()
    opt.zero_grad()
    loss = F.cross_entropy(net(torch.from_numpy(x)), torch.from_numpy(y).long())
    loss.backward()
    opt.step()
    return loss.item()


def assert_same_state(ours: dict, net: TorchTwin, rtol: float = RTOL) -> None:
    """Every parameter and running statistic within ``rtol`` of PyTorch's, relative to the
    tensor's largest entry."""
    theirs = {k: v.detach().numpy() for k, v in net.state_dict().items()
              if not k.endswith("num_batches_tracked")}
    assert set(ours) == set(theirs)
    bad = []
    for name, want in theirs.items():
        err = float(np.abs(ours[name] - want).max())
        scale = float(np.abs(want).max())
        if err > rtol * scale:
            bad.append(f"{name}: max difference {err:.3g}, {err / scale:.3g} of its largest entry")
    assert not bad, "\n".join(bad)


# -- a few steps through the public API ------------------------------------------------------------

@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_three_steps_match_pytorch(artifact, config):
    cfg = CONFIGS[config]
    model = artifact[2] if config == "sgd-momentum" else fresh_model(artifact)
    net = twin()
    model.load_params(net.state_dict())
    start = model.params
    model.set_optimizer(cfg)
    opt = TORCH_OPTIMIZERS[cfg["type"]](net.parameters(), cfg)
    for x, y in batches(3):
        loss = model.train_step(x, y)
        assert loss == pytest.approx(torch_step(net, opt, x, y), rel=RTOL)
    after = model.params
    assert_same_state(after, net)
    moved = [k for k in start if not np.array_equal(start[k], after[k])]
    assert sorted(moved) == sorted(start), "every parameter and statistic should have moved"


def test_switching_optimizer_family_starts_afresh_like_a_new_torch_optimizer(artifact):
    model = fresh_model(artifact)
    net = twin(seed=2)
    model.load_params(net.state_dict())
    sgd, adam = CONFIGS["sgd-momentum"], CONFIGS["adam"]
    model.set_optimizer(sgd)
    opt = TORCH_OPTIMIZERS["sgd"](net.parameters(), sgd)
    data = batches(4, seed=8)
    for x, y in data[:2]:
        model.train_step(x, y)
        torch_step(net, opt, x, y)
    model.set_optimizer(adam)
    opt = TORCH_OPTIMIZERS["adam"](net.parameters(), adam)
    for x, y in data[2:]:
        model.train_step(x, y)
        torch_step(net, opt, x, y)
    assert_same_state(model.params, net)


def test_predict_after_training_uses_the_new_weights(artifact):
    model = fresh_model(artifact)
    net = twin()
    model.load_params(net.state_dict())
    cfg = CONFIGS["adam"]
    model.set_optimizer(cfg)
    opt = TORCH_OPTIMIZERS["adam"](net.parameters(), cfg)
    for x, y in batches(2):
        model.train_step(x, y)
        torch_step(net, opt, x, y)
    x = batches(1, seed=5)[0][0]
    net.eval()
    with torch.no_grad():
        want = net(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(model.predict(x), want, rtol=RTOL, atol=RTOL * np.abs(want).max())


def test_fit_and_evaluate_match_a_pytorch_loop(artifact):
    model = fresh_model(artifact)
    net = twin(seed=3)
    model.load_params(net.state_dict())
    cfg = CONFIGS["sgd-nesterov-decay"]
    model.set_optimizer(cfg)
    rng = np.random.default_rng(4)
    x = rng.standard_normal((20, 3, 12, 12)).astype(np.float32)
    y = rng.integers(0, CLASSES, 20)
    history = model.fit(x, y, epochs=2, batch_size=8, shuffle=False)

    opt = TORCH_OPTIMIZERS["sgd"](net.parameters(), cfg)
    epoch_losses = []
    for _ in range(2):
        total = 0.0
        for start in range(0, 20, 8):  # batches of 8, 8 and 4
            xb, yb = x[start:start + 8], y[start:start + 8]
            total += torch_step(net, opt, xb, yb) * len(xb)
        epoch_losses.append(total / 20)
    assert_same_state(model.params, net)
    np.testing.assert_allclose(history["loss"], epoch_losses, rtol=RTOL)
    assert history["lr"] == [0.05, 0.05]
    assert model.trainer.step == 6 and model.trainer.epoch == 2

    xv = rng.standard_normal((12, 3, 12, 12)).astype(np.float32)
    yv = rng.integers(0, CLASSES, 12)
    net.eval()
    with torch.no_grad():
        logits = net(torch.from_numpy(xv))
        want_loss = F.cross_entropy(logits, torch.from_numpy(yv).long()).item()
        want_acc = (logits.argmax(1).numpy() == yv).mean()
    got = model.evaluate(xv, yv, batch_size=5)
    assert got["loss"] == pytest.approx(want_loss, rel=RTOL)
    assert got["accuracy"] == want_acc


def test_label_smoothing_matches_pytorch(tmp_path):
    spec = tmp_path / "smooth.yaml"
    spec.write_text(SPEC.replace("  loss: softmax_cross_entropy",
                                 "  loss: softmax_cross_entropy\n  label_smoothing: 0.2"))
    model = cc.compile(spec, output_dir=tmp_path / "artifact")
    net = twin()
    model.load_params(net.state_dict())
    cfg = CONFIGS["sgd-momentum"]
    model.set_optimizer(cfg)
    opt = TORCH_OPTIMIZERS["sgd"](net.parameters(), cfg)
    for x, y in batches(2):
        loss = model.train_step(x, y)
        net.train()
        opt.zero_grad()
        want = F.cross_entropy(net(torch.from_numpy(x)), torch.from_numpy(y).long(),
                               label_smoothing=0.2)
        want.backward()
        opt.step()
        assert loss == pytest.approx(want.item(), rel=RTOL)
    assert_same_state(model.params, net)


# -- learning-rate schedules -----------------------------------------------------------------------

def _torch_lrs(make_scheduler, base: float, count: int) -> list[float]:
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=base)
    scheduler = make_scheduler(opt)
    lrs = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(count):
            lrs.append(opt.param_groups[0]["lr"])
            opt.step()
            scheduler.step()
    return lrs


def _warm(w, f, main):
    """PyTorch's linear warm-up over ``w`` units from ``f * lr``, then ``main``."""
    S = torch.optim.lr_scheduler
    return lambda o: S.SequentialLR(o, [S.LinearLR(o, start_factor=f, end_factor=1.0,
                                                   total_iters=w), main(o)], milestones=[w])


S = torch.optim.lr_scheduler
SCHEDULES = {
    "step": ({"type": "step", "step_size": 3, "gamma": 0.5}, lambda o: S.StepLR(o, 3, 0.5)),
    "multistep": ({"type": "multistep", "milestones": [2, 5, 9], "gamma": 0.3},
                  lambda o: S.MultiStepLR(o, [2, 5, 9], 0.3)),
    "exponential": ({"type": "exponential", "gamma": 0.8}, lambda o: S.ExponentialLR(o, 0.8)),
    "cosine": ({"type": "cosine", "t_max": 12, "eta_min": 0.01},
               lambda o: S.CosineAnnealingLR(o, T_max=12, eta_min=0.01)),
    "polynomial": ({"type": "polynomial", "total": 10, "power": 2.0},
                   lambda o: S.PolynomialLR(o, total_iters=10, power=2.0)),
    "warmup": ({"type": "constant", "warmup": 4, "warmup_factor": 0.1},
               lambda o: S.LinearLR(o, start_factor=0.1, total_iters=4)),
    # the default start is LinearLR's: a third of lr, never 0
    "warmup-default": ({"type": "constant", "warmup": 2},
                       lambda o: S.LinearLR(o, total_iters=2)),
    "warmup-cosine": ({"type": "cosine", "t_max": 8, "warmup": 3, "warmup_factor": 0.25},
                      _warm(3, 0.25, lambda o: S.CosineAnnealingLR(o, T_max=8))),
    "warmup-step": ({"type": "step", "step_size": 2, "gamma": 0.5, "warmup": 2,
                     "warmup_factor": 0.5},
                    _warm(2, 0.5, lambda o: S.StepLR(o, 2, 0.5))),
    "warmup-exponential": ({"type": "exponential", "gamma": 0.9, "warmup": 3,
                            "warmup_factor": 0.2},
                           _warm(3, 0.2, lambda o: S.ExponentialLR(o, 0.9))),
    # like every schedule, multistep counts its milestones from the end of the warm-up
    "warmup-multistep": ({"type": "multistep", "milestones": [2, 5], "gamma": 0.1,
                          "warmup": 3, "warmup_factor": 0.5},
                         _warm(3, 0.5, lambda o: S.MultiStepLR(o, [2, 5], 0.1))),
}


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_schedule_matches_pytorch(name):
    config, make = SCHEDULES[name]
    schedule = optim.schedule_from(config)
    ours = [optim.learning_rate(0.1, schedule, e, None) for e in range(12)]
    np.testing.assert_allclose(ours, _torch_lrs(make, 0.1, 12), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("factor", [0, -0.5, 1.5])
def test_a_warm_up_starting_at_zero_or_above_lr_is_refused(factor):
    with pytest.raises(TrainingError, match=r"warmup_factor.*\(0, 1\]"):
        optim.schedule_from({"type": "constant", "warmup": 1, "warmup_factor": factor})


def test_cosine_and_polynomial_take_their_length_from_the_run():
    cos = optim.schedule_from({"type": "cosine"})
    poly = optim.schedule_from({"type": "polynomial", "power": 1.0})
    want_cos = _torch_lrs(lambda o: S.CosineAnnealingLR(o, T_max=6), 0.1, 6)
    want_poly = _torch_lrs(lambda o: S.PolynomialLR(o, total_iters=6, power=1.0), 0.1, 6)
    np.testing.assert_allclose([optim.learning_rate(0.1, cos, e, 6) for e in range(6)], want_cos)
    np.testing.assert_allclose([optim.learning_rate(0.1, poly, e, 6) for e in range(6)],
                               want_poly)
    with pytest.raises(TrainingError, match="t_max"):
        optim.learning_rate(0.1, cos, 1, None)


def test_fit_follows_an_epoch_schedule_like_pytorch(artifact):
    model = fresh_model(artifact)
    net = twin(seed=5)
    model.load_params(net.state_dict())
    cfg = CONFIGS["sgd-momentum"]
    model.set_optimizer(cfg, schedule={"type": "step", "step_size": 1, "gamma": 0.5,
                                       "warmup": 1, "warmup_factor": 0.5})
    x, y = batches(1, n=12, seed=6)[0]
    history = model.fit(x, y, epochs=3, batch_size=6, shuffle=False)

    opt = TORCH_OPTIMIZERS["sgd"](net.parameters(), cfg)
    scheduler = _warm(1, 0.5, lambda o: S.StepLR(o, 1, 0.5))(opt)
    lrs = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(3):
            lrs.append(opt.param_groups[0]["lr"])
            for start in (0, 6):
                torch_step(net, opt, x[start:start + 6], y[start:start + 6])
            scheduler.step()
    np.testing.assert_allclose(history["lr"], lrs, rtol=1e-12)
    assert_same_state(model.params, net)


def test_a_per_step_schedule_moves_every_step(artifact):
    model = fresh_model(artifact)
    model.set_optimizer({"type": "sgd", "lr": 0.1},
                        schedule={"type": "cosine", "unit": "step", "t_max": 4})
    want = _torch_lrs(lambda o: S.CosineAnnealingLR(o, T_max=4), 0.1, 4)
    got = []
    for x, y in batches(4, n=4):
        got.append(model.trainer.current_lr())
        model.train_step(x, y)
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_changing_lr_or_schedule_needs_no_recompilation(artifact, tmp_path, monkeypatch):
    from cnncompiler.backends import train_build

    monkeypatch.setenv("CNNC_CACHE", str(tmp_path / "cache"))  # a cold cache: a real build
    calls = {"module": 0, "library": 0}
    real_module, real_library = train_build.build_train_module, train_build.build_train_library

    def count_module(*a, **k):
        calls["module"] += 1
        return real_module(*a, **k)

    def count_library(*a, **k):
        calls["library"] += 1
        return real_library(*a, **k)

    monkeypatch.setattr(train_build, "build_train_module", count_module)
    monkeypatch.setattr(train_build, "build_train_library", count_library)

    model = fresh_model(artifact)
    net = twin()
    (x, y), = batches(1)
    model.load_params(net.state_dict())
    model.set_optimizer({"type": "sgd", "lr": 0.1})
    model.train_step(x, y)
    assert calls == {"module": 1, "library": 1}
    base = {k: v for k, v in net.state_dict().items()}
    first = {k: v - base[k].numpy() for k, v in model.params.items() if "running" not in k}

    # the same step at twice the learning rate moves every weight twice as far
    model.load_params(net.state_dict())
    model.set_optimizer({"type": "sgd", "lr": 0.2})
    model.train_step(x, y)
    for k, delta in first.items():
        np.testing.assert_allclose(model.params[k] - base[k].numpy(), 2 * delta,
                                   rtol=1e-3, atol=1e-6, err_msg=k)

    model.set_optimizer({"type": "sgd", "lr": 0.01, "momentum": 0.9, "nesterov": True,
                         "weight_decay": 1e-4},
                        schedule={"type": "cosine", "t_max": 3, "warmup": 1})
    model.fit(x, y, epochs=2, batch_size=8)
    model.set_optimizer(schedule={"type": "exponential", "gamma": 0.5})
    model.fit(x, y, epochs=1, batch_size=8)
    assert calls == {"module": 1, "library": 1}
    assert model.trainer.current_lr() == pytest.approx(0.01 * 0.5 ** 3)

    # another optimizer family has other state: one more build, once
    model.set_optimizer({"type": "adam", "lr": 1e-3})
    model.train_step(x, y)
    model.set_optimizer({"type": "adamw", "lr": 1e-4, "weight_decay": 0.05})
    model.train_step(x, y)
    assert calls == {"module": 2, "library": 2}
    assert all(math.isfinite(float(np.abs(v).max())) for v in model.params.values())


# -- the point-wise layers with their PyTorch twins ------------------------------------------------

ACTIVATION_SPEC = """\
name: activation_twin
input: [3, 8, 8]
layers:
  - {name: conv1, type: conv2d, filters: 6, kernel: 3, padding: 1}
  - {name: act1, type: prelu, num_parameters: 6}
  - {name: conv2, type: conv2d, filters: 6, kernel: 3, padding: 1}
  - {name: act2, type: silu}
  - {name: act3, type: prelu}
  - {name: pool, type: maxpool2d, kernel: 2}
  - {name: act4, type: hardswish}
  - {name: conv3, type: conv2d, filters: 5, kernel: 3}
  - {name: act5, type: gelu}
  - {name: act6, type: gelu, approximate: tanh}
  - {name: flatten, type: flatten}
  - {name: fc1, type: dense, units: 16}
  - {name: act7, type: hardsigmoid}
  - {name: act8, type: relu6}
  - {name: fc, type: dense, units: 4}
"""


class ActivationTwin(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.act1 = nn.Conv2d(3, 6, 3, padding=1), nn.PReLU(6)
        self.conv2, self.act3 = nn.Conv2d(6, 6, 3, padding=1), nn.PReLU()
        self.conv3 = nn.Conv2d(6, 5, 3)
        self.fc1, self.fc = nn.Linear(5 * 2 * 2, 16), nn.Linear(16, 4)

    def forward(self, x):
        x = self.act3(F.silu(self.conv2(self.act1(self.conv1(x)))))
        x = self.conv3(F.hardswish(F.max_pool2d(x, 2)))
        x = F.gelu(F.gelu(x), approximate="tanh")
        return self.fc(F.relu6(F.hardsigmoid(self.fc1(torch.flatten(x, 1)))))


def test_new_activations_train_step_for_step_like_pytorch(tmp_path):
    spec = tmp_path / "activation_twin.yaml"
    spec.write_text(ACTIVATION_SPEC)
    model = cc.compile(spec)
    torch.manual_seed(0)
    net = ActivationTwin()
    with torch.no_grad():  # slopes that differ per channel and from the default
        net.act1.weight.uniform_(-0.3, 0.6)
        net.act3.weight.fill_(0.1)
    model.load_params(net.state_dict())
    cfg = {"type": "sgd", "lr": 0.1, "momentum": 0.9}
    model.set_optimizer(cfg)
    opt = TORCH_OPTIMIZERS["sgd"](net.parameters(), cfg)
    rng = np.random.default_rng(2)
    for _ in range(3):
        x = (2 * rng.standard_normal((8, 3, 8, 8))).astype(np.float32)
        y = rng.integers(0, 4, 8)
        loss = model.train_step(x, y)
        assert loss == pytest.approx(torch_step(net, opt, x, y), rel=RTOL)
    assert_same_state(model.params, net)
