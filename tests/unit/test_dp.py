"""DP-SGD (common/training/dp/): accounting, clipping, noise, FedProx under DP, budgets, bad input."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("opacus")

from opacus.accountants import PRVAccountant, RDPAccountant  # noqa: E402
from opacus.accountants.analysis import rdp as rdp_analysis  # noqa: E402
from opacus.optimizers import DPOptimizer  # noqa: E402

from common.metrics import seg_loss  # noqa: E402
from common.model import UNet, build_model, get_params, norm_keys, set_params  # noqa: E402
from common.training.dp import (  # noqa: E402
    PUBLIC_METRIC_KEYS,
    DPConfigError,
    DPSettings,
    DPTrainer,
    PrivacyBudgetExhausted,
    SiteAccountant,
    dp_steps_per_epoch,
    dp_train_local,
    grad_sample,  # noqa: E402
    make_grad_sample_module,
    per_sample_backward,
    release_grad_sample_module,
    resolve_noise_multiplier,
    sample_rate_for,
    validate_dp,
)

DELTA = 1e-5


def tiny_model(seed: int = 0) -> UNet:
    return build_model(base=4, norm="group", groups=2, seed=seed)


def tiny_data(
    n: int = 12, size: int = 16, seed: int = 0
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 1, size, size, generator=g)
    masks = (torch.rand(n, 1, size, size, generator=g) > 0.8).float()
    return list(zip(images, masks, strict=True))


def flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def train(model, data, acc, *, seed=0, settings=None, sigma=1.2, **kw):
    settings = settings or DPSettings(accountant=acc.mechanism, adjacency=acc.adjacency)
    opts = {"epochs": 1, "lr": 1e-3, "batch_size": 4} | kw
    return dp_train_local(
        model, data, seed=seed, settings=settings, sigma=sigma, accountant=acc, **opts
    )


def reference_grad_samples(model: nn.Module, data) -> list[torch.Tensor]:
    """Ground truth: each image's own loss, backpropagated alone through an unwrapped model."""
    out = [[] for _ in model.parameters()]
    for x, y in data:
        model.zero_grad(set_to_none=True)
        seg_loss(model(x[None]), y[None]).backward()
        for k, p in enumerate(model.parameters()):
            out[k].append(p.grad.detach().clone())
    model.zero_grad(set_to_none=True)
    return [torch.stack(g) for g in out]


def clipped_sum(grads: list[torch.Tensor], c: float) -> list[torch.Tensor]:
    norms = torch.stack([g.reshape(len(g), -1).norm(dim=1) for g in grads], dim=1).norm(dim=1)
    factor = (c / (norms + 1e-6)).clamp(max=1.0)
    return [torch.einsum("i,i...->...", factor, g) for g in grads], norms


# ----------------------------------------------------------------------------------------------
# accounting
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mechanism", ["rdp", "prv"])
def test_reported_epsilon_equals_opacus_accountant(mechanism):
    """Under add/remove adjacency the reported epsilon is Opacus' (replace-one, the default:
    tests/unit/test_dp_randomness.py)."""
    model, data, acc = tiny_model(), tiny_data(12), SiteAccountant(mechanism, "add-remove")
    for rnd in range(2):
        out = train(model, data, acc, seed=rnd)
    q, steps = 4 / 12, 2 * dp_steps_per_epoch(12, 4)
    assert (out["sample_rate"], out["noise_multiplier"]) == (q, 1.2)
    assert out["steps"] == dp_steps_per_epoch(12, 4) == 3
    assert acc.history == [(1.2, q, steps)]
    reference = RDPAccountant() if mechanism == "rdp" else PRVAccountant()
    reference.history = [(1.2, q, steps)]
    assert out["epsilon"] == pytest.approx(reference.get_epsilon(delta=DELTA), rel=1e-9)
    assert out["accountant"] == mechanism and out["delta"] == DELTA
    if mechanism == "rdp":  # and from the raw RDP analysis, without any accountant object
        orders = RDPAccountant.DEFAULT_ALPHAS
        rdp = rdp_analysis.compute_rdp(q=q, noise_multiplier=1.2, steps=steps, orders=orders)
        eps, _ = rdp_analysis.get_privacy_spent(orders=orders, rdp=rdp, delta=DELTA)
        assert out["epsilon"] == pytest.approx(float(eps), rel=1e-9)


def test_epsilon_grows_and_survives_a_restart():
    data = tiny_data(12)
    # uninterrupted run
    m1, a1 = tiny_model(), SiteAccountant("rdp")
    eps = [train(m1, data, a1, seed=r)["epsilon"] for r in range(3)]
    assert eps[0] > 0 and eps[0] < eps[1] < eps[2]
    # the same run, with the site restarted after round 2 (accountant and weights from disk)
    m2, a2 = tiny_model(), SiteAccountant("rdp")
    for r in range(2):
        train(m2, data, a2, seed=r)
    saved = json.dumps(
        {
            "accountant": a2.state_dict(),
            "params": {k: v.tolist() for k, v in get_params(m2).items()},
        }
    )
    del m2, a2
    state = json.loads(saved)
    restored, m3 = SiteAccountant.from_state_dict(state["accountant"]), tiny_model(seed=7)
    set_params(m3, {k: np.asarray(v, dtype=np.float32) for k, v in state["params"].items()})
    assert restored.epsilon(DELTA) == pytest.approx(eps[1], rel=1e-12)
    out = train(m3, data, restored, seed=2)
    assert out["epsilon"] == pytest.approx(eps[2], rel=1e-12)
    assert restored.history == a1.history
    assert torch.equal(flat(m3), flat(m1))  # and training itself continued exactly
    # a fresh accountant per round would report one round's epsilon: several times smaller
    assert SiteAccountant("rdp").projected_epsilon(DELTA, 1.2, 4 / 12, 3) < eps[2] / 1.4


def test_accountant_state_dict_round_trip_and_garbage():
    acc = SiteAccountant("prv", "add-remove")
    acc.record(1.2, 0.0125, 80)
    acc.record(1.2, 0.0125, 80)  # merged
    acc.record(1.5, 0.0125, 10)
    assert acc.history == [(1.2, 0.0125, 160), (1.5, 0.0125, 10)] and acc.steps == 170
    back = SiteAccountant.from_state_dict(json.loads(json.dumps(acc.state_dict())))
    assert back.mechanism == "prv" and back.history == acc.history
    assert SiteAccountant("rdp").epsilon(DELTA) == 0.0
    for bad in ({}, {"format": "x"}, {**acc.state_dict(), "history": [[1.2, 0.1]]}):
        with pytest.raises(DPConfigError):
            SiteAccountant.from_state_dict(bad)
    with pytest.raises(DPConfigError):
        SiteAccountant("gdp")


@pytest.mark.filterwarnings("ignore:Optimal order")  # the unreachable case at the end
def test_target_epsilon_gives_sigma_whose_final_epsilon_is_the_target():
    data, rounds, batch = tiny_data(16), 3, 4
    settings = DPSettings(noise_multiplier=None, target_epsilon=8.0)
    q = sample_rate_for(len(data), batch)
    steps_total = rounds * 1 * dp_steps_per_epoch(len(data), batch)
    sigma = resolve_noise_multiplier(settings, sample_rate=q, steps_total=steps_total)
    assert 0 < sigma != 1.2
    model, acc = tiny_model(), SiteAccountant("rdp")
    for r in range(rounds):
        out = train(model, data, acc, seed=r, settings=settings, sigma=sigma, batch_size=batch)
    assert out["epsilon"] == pytest.approx(8.0, rel=0.05)
    assert out["epsilon"] <= 8.0
    # PRV too (accounting only)
    prv = DPSettings(
        noise_multiplier=None, target_epsilon=3.0, accountant="prv", adjacency="add-remove"
    )
    s_prv = resolve_noise_multiplier(prv, sample_rate=0.02, steps_total=500)
    acc = SiteAccountant("prv", "add-remove")
    acc.record(s_prv, 0.02, 500)
    assert acc.epsilon(DELTA) == pytest.approx(3.0, rel=0.05)
    # sigma given: returned as is; an unreachable target is a clear error
    assert resolve_noise_multiplier(DPSettings(), sample_rate=0.1, steps_total=10) == 1.2
    with pytest.raises(DPConfigError, match="unreachable"):
        resolve_noise_multiplier(
            DPSettings(noise_multiplier=None, target_epsilon=1e-9),
            sample_rate=1.0,
            steps_total=10**6,
        )


def test_max_epsilon_stops_the_site_before_training():
    data = tiny_data(12)
    probe = SiteAccountant("rdp")
    eps1 = probe.projected_epsilon(DELTA, 1.2, 4 / 12, 3)
    eps2 = probe.projected_epsilon(DELTA, 1.2, 4 / 12, 6)
    settings = DPSettings(max_epsilon=(eps1 + eps2) / 2)
    model, acc = tiny_model(), SiteAccountant("rdp")
    out = train(model, data, acc, settings=settings)
    assert out["epsilon"] == pytest.approx(eps1) and out["epsilon"] <= settings.max_epsilon
    before, history = flat(model).clone(), list(acc.history)
    with pytest.raises(PrivacyBudgetExhausted, match="budget exhausted") as info:
        train(model, data, acc, seed=1, settings=settings)
    assert info.value.epsilon_spent == pytest.approx(eps1)
    assert info.value.epsilon_next == pytest.approx(eps2)
    assert info.value.epsilon_next > settings.max_epsilon
    assert torch.equal(flat(model), before) and acc.history == history  # nothing happened


# ----------------------------------------------------------------------------------------------
# per-sample gradients, clipping, noise
# ----------------------------------------------------------------------------------------------


class OddConvs(nn.Module):
    """Grouped/strided conv with bias and a padded transposed conv with output_padding."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(1, 4, 3, stride=2, padding=1, bias=True)
        self.b = nn.Conv2d(4, 4, 3, padding=2, dilation=2, groups=2, bias=False)
        self.norm = nn.GroupNorm(2, 4)
        self.up = nn.ConvTranspose2d(4, 2, 3, stride=2, padding=1, output_padding=1, groups=2)
        self.head = nn.Conv2d(2, 1, 1)

    def forward(self, x):
        return self.head(torch.relu(self.up(self.norm(self.b(self.a(x))))))


class TiledConvs(nn.Module):
    """Layers whose kernel equals their stride, in channels_last (the fast sampler's one-matmul
    path): a 2x2 stride-2 conv on an odd side (its last row and column are never seen), a 2x2
    stride-2 transposed conv, a 1x1 head with bias; and a 2x2 stride-2 transposed conv with
    output_padding, which is not such a layer (the per-image path)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(1, 3, 3, padding=1, bias=False)
        self.down = nn.Conv2d(3, 4, 2, stride=2, bias=True)
        self.up = nn.ConvTranspose2d(4, 2, 2, stride=2, bias=True)
        self.pad = nn.ConvTranspose2d(4, 2, 2, stride=2, output_padding=1, bias=False)
        self.head = nn.Conv2d(2, 1, 1)
        self.to(memory_format=torch.channels_last)

    def forward(self, x):
        d = torch.relu(self.down(torch.relu(self.a(x))))
        u = nn.functional.pad(self.up(d), (0, 1, 0, 1)) + self.pad(d)
        return self.head(torch.relu(u))


@pytest.mark.parametrize("mode", ["fast", "hooks", "functorch"])
@pytest.mark.parametrize("net", ["unet", "odd", "tiled"])
def test_per_sample_gradients_match_a_per_image_autograd_loop(mode, net, monkeypatch):
    torch.manual_seed(0)
    model = {"unet": tiny_model, "odd": OddConvs, "tiled": TiledConvs}[net]()
    data = tiny_data(5, size=9 if net == "tiled" else 16)
    ref = reference_grad_samples(copy.deepcopy(model), data)
    gsm = make_grad_sample_module(model, mode)
    tiled = []  # the layers the one-matmul path computed
    one_matmul = grad_sample._tiled_weight_grad_sample
    monkeypatch.setattr(
        grad_sample,
        "_tiled_weight_grad_sample",
        lambda x, gy, k, t: tiled.append((k, t)) or one_matmul(x, gy, k, t),
    )
    x, y = torch.stack([d[0] for d in data]), torch.stack([d[1] for d in data])
    loss = per_sample_backward(gsm, x, y)
    expected = {
        "unet": [((1, 1), False), ((2, 2), True), ((2, 2), True)],  # head, the two up-convs
        "odd": [],  # NCHW: grouped convolutions
        "tiled": [((1, 1), False), ((2, 2), True), ((2, 2), False)],
    }[net]
    assert sorted(tiled) == sorted(expected if mode == "fast" else [])
    with torch.no_grad():
        assert float(loss) == pytest.approx(float(seg_loss(gsm(x), y)), rel=1e-5)
    params = list(model.parameters())
    for p, r in zip(params, ref, strict=True):
        assert p.grad_sample.shape == (5, *p.shape)
        torch.testing.assert_close(p.grad_sample, r, rtol=1e-4, atol=1e-6)
    release_grad_sample_module(gsm, params)
    assert not any(hasattr(p, "grad_sample") for p in params)


@pytest.fixture(scope="module")
def paper_size_reference():
    """The paper's U-Net (base 52, GroupNorm 4: its layers and widths), two slices, and their
    ground truth (in float64: float32 kernels of another layout, NCHW for Opacus' stock sampler,
    or of a batch instead of one image, differ from each other by ~3e-6 here). The slices are
    128x128, not the paper's 256x256: the network is the same (sizes are not parameters) and
    every level still has >= 8x8 positions, at a quarter of the float64 reference's cost
    (~30 s of `make test` on a 2-core AVX2 machine)."""
    model = build_model(base=52, norm="group", groups=4, seed=0)
    data = tiny_data(2, size=128)
    data64 = [(x.double(), y.double()) for x, y in data]
    return model, data, reference_grad_samples(copy.deepcopy(model).double(), data64)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["fast", "hooks"])
def test_per_sample_gradients_at_the_paper_model_size(mode, paper_size_reference):
    """At the paper's model size both samplers equal the ground truth."""
    model, data, ref = paper_size_reference
    model = copy.deepcopy(model)
    gsm = make_grad_sample_module(model, mode)
    per_sample_backward(gsm, torch.stack([d[0] for d in data]), torch.stack([d[1] for d in data]))
    params = list(model.parameters())
    for p, r in zip(params, ref, strict=True):
        torch.testing.assert_close(p.grad_sample.double(), r, rtol=1e-3, atol=1e-5)
    release_grad_sample_module(gsm, params)


def test_a_trainer_wrapping_once_gives_the_same_rounds_as_fresh_wrappers():
    """DPTrainer keeps Opacus' wrapper over the rounds: bit-identical to wrapping every round."""
    data, once, fresh = tiny_data(12), tiny_model(), tiny_model()
    acc_once, acc_fresh = SiteAccountant("rdp"), SiteAccountant("rdp")
    trainer = DPTrainer(once, DPSettings())
    for rnd in range(3):
        kw = {"epochs": 1, "lr": 1e-3, "batch_size": 4, "seed": rnd, "sigma": 1.2}
        a = trainer.train_round(data, accountant=acc_once, **kw)
        b = dp_train_local(fresh, data, settings=DPSettings(), accountant=acc_fresh, **kw)
        assert a["epsilon"] == b["epsilon"]
        assert torch.equal(flat(once), flat(fresh))
    trainer.close()
    assert not any(hasattr(p, "grad_sample") for p in once.parameters())


def test_per_sample_gradients_are_clipped_to_c():
    torch.manual_seed(0)
    model, data, c = tiny_model(), tiny_data(6), 0.05
    ref = reference_grad_samples(copy.deepcopy(model), data)
    gsm = make_grad_sample_module(model, "fast")
    opt = DPOptimizer(
        torch.optim.SGD(model.parameters(), lr=1.0),
        noise_multiplier=1.0,
        max_grad_norm=c,
        expected_batch_size=6,
    )
    per_sample_backward(gsm, torch.stack([d[0] for d in data]), torch.stack([d[1] for d in data]))
    norms = torch.stack([p.grad_sample.reshape(6, -1).norm(dim=1) for p in opt.params], 1).norm(
        dim=1
    )
    assert (norms > c).sum() >= 3  # the test must exercise clipping
    factor = (c / (norms + 1e-6)).clamp(max=1.0)
    clipped_norms = norms * factor
    assert (clipped_norms <= c * (1 + 1e-5)).all()
    opt.clip_and_accumulate()  # Opacus' clipping, as in every DP step
    expected, _ = clipped_sum(ref, c)
    for p, e in zip(opt.params, expected, strict=True):
        torch.testing.assert_close(p.summed_grad, e, rtol=1e-4, atol=1e-7)
    release_grad_sample_module(gsm, list(model.parameters()))


def one_full_batch_step(
    sigma: float, *, c: float = 1.0, mu: float = 0.0, global_params=None, seed: int = 0
):
    """One SGD step (lr 1) where Poisson sampling takes every slice (batch = site, q = 1)."""
    model, data, lr = tiny_model(), tiny_data(4), 1.0
    w0 = flat(model).clone()
    ref = reference_grad_samples(copy.deepcopy(model), data)
    out = dp_train_local(
        model,
        data,
        epochs=1,
        lr=lr,
        batch_size=4,
        seed=seed,
        settings=DPSettings(noise_multiplier=sigma, max_grad_norm=c),
        sigma=sigma,
        accountant=SiteAccountant("rdp"),
        optimizer="sgd",  # first momentum step = plain gradient step
        proximal_mu=mu,
        global_params=global_params,
    )
    assert out["steps"] == 1 and out["sample_rate"] == 1.0 and out["batch_size_min"] == 4
    clip, norms = clipped_sum(ref, c)
    return model, w0, flat(model), torch.cat([g.reshape(-1) for g in clip]), norms


@pytest.mark.filterwarnings("ignore:Optimal order")  # sigma ~ 0: epsilon is huge, not the point
def test_dp_step_is_the_clipped_mean_of_per_sample_gradients():
    _, norms = clipped_sum(reference_grad_samples(tiny_model(), tiny_data(4)), 1.0)
    c = float(norms.sort().values[1:3].mean())  # two slices clipped, two not
    _, w0, w1, clip, norms = one_full_batch_step(sigma=1e-7, c=c)
    assert (norms > c).sum() == 2
    torch.testing.assert_close(w0 - w1, clip / 4, rtol=1e-3, atol=1e-7)
    assert float((w0 - w1).norm()) <= c * 4 / 4 * (1 + 1e-4)  # ‖Σ clipped‖ / B <= C


def test_noise_is_gaussian_with_std_sigma_c_over_b():
    _, w0, w1, clip, _ = one_full_batch_step(sigma=1.2)
    noise = (w0 - w1) * 4 - clip  # lr 1, expected batch 4
    assert noise.numel() > 1000
    assert float(noise.std()) == pytest.approx(1.2 * 1.0, rel=0.1)
    assert abs(float(noise.mean())) < 0.1


def test_same_seed_reproduces_other_seed_differs_rng_untouched():
    data = tiny_data(12)
    runs = []
    for seed in (0, 0, 1):
        model = tiny_model()
        train(model, data, SiteAccountant("rdp"), seed=seed)
        runs.append(flat(model))
    assert torch.equal(runs[0], runs[1])
    assert not torch.allclose(runs[0], runs[2])
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    train(tiny_model(), data, SiteAccountant("rdp"), seed=0)
    assert torch.equal(torch.rand(3), expected)  # the caller's global RNG is left as it was


def test_empty_poisson_batches_are_noise_only_steps():
    data = tiny_data(20)
    model, acc = tiny_model(), SiteAccountant("rdp")
    out = train(model, data, acc, batch_size=1, epochs=2)  # q = 0.05: P(empty) ~ 0.36
    assert out["empty_batches"] > 0 and out["batch_size_min"] == 0
    assert acc.steps == out["steps"] == 40  # empty steps are accounted too
    assert torch.isfinite(flat(model)).all() and math.isfinite(out["loss"])


# ----------------------------------------------------------------------------------------------
# FedProx, wrapper prefixes, FedBN
# ----------------------------------------------------------------------------------------------


def test_fedprox_gradient_is_applied_under_dp():
    base = tiny_model()
    anchor = {k: v + 0.5 for k, v in get_params(base).items()}  # global model != start weights
    _, w0, w_plain, _, _ = one_full_batch_step(1.2, mu=0.0, global_params=None)
    _, _, w_prox, _, _ = one_full_batch_step(1.2, mu=0.1, global_params=anchor)
    # same seed, same noise: the only difference is the proximal step lr·mu·(w_g − w)
    pull = torch.cat([torch.as_tensor(anchor[k]).reshape(-1) for k, _ in base.named_parameters()])
    torch.testing.assert_close(w_prox - w_plain, 0.1 * (pull - w0), rtol=1e-4, atol=1e-6)
    assert float((w_prox - pull).norm()) < float((w_plain - pull).norm())  # towards the anchor
    # several Adam steps: the term changes the DP update
    data = tiny_data(12)
    m0, m1 = tiny_model(), tiny_model()
    train(m0, data, SiteAccountant("rdp"), epochs=2)
    out = train(m1, data, SiteAccountant("rdp"), epochs=2, proximal_mu=0.5, global_params=anchor)
    assert not torch.allclose(flat(m0), flat(m1)) and out["prox"] > 0


def test_trained_model_has_plain_keys_and_no_opacus_leftovers():
    model, data = tiny_model(), tiny_data(12)
    keys, before = list(model.state_dict()), flat(model).clone()
    for r in range(2):  # twice on the same object: no "hooks added twice"
        train(model, data, SiteAccountant("rdp"), seed=r)
    assert list(model.state_dict()) == keys
    assert not any(k.startswith("_module.") or "._module." in k for k in model.state_dict())
    assert not torch.equal(flat(model), before)  # the caller's object holds the trained weights
    assert set(get_params(model)) == {k for k in keys}
    for m in model.modules():
        assert not (m._forward_hooks or m._backward_hooks or m._forward_pre_hooks)
        assert not hasattr(m, "activations") and not hasattr(m, "ft_compute_sample_grad")
    for p in model.parameters():
        assert p.grad is None
        assert not any(hasattr(p, a) for a in ("grad_sample", "summed_grad", "_forward_counter"))
    assert not hasattr(model, "autograd_grad_sample_hooks")


def test_fedbn_under_dp_keeps_groupnorm_affine_parameters_local():
    model = tiny_model()
    gn = {n for n, m in model.named_modules() if isinstance(m, nn.GroupNorm)}
    expected = {f"{n}.{p}" for n in gn for p in ("weight", "bias")}
    assert len(gn) == 10
    assert norm_keys(model) == expected  # affine params only: GroupNorm has no buffers
    assert not any(k.endswith(("running_mean", "running_var")) for k in model.state_dict())
    shared = set(get_params(model)) - norm_keys(model)
    assert shared and all(not k.startswith(tuple(gn)) for k in shared)


# ----------------------------------------------------------------------------------------------
# bad input
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"noise_multiplier": 0.0}, "sigma.*> 0"),
        ({"noise_multiplier": -1.0}, "sigma.*> 0"),
        ({"noise_multiplier": float("nan")}, "finite"),
        ({"max_grad_norm": 0.0}, "max_grad_norm"),
        ({"max_grad_norm": -1.0}, "max_grad_norm"),
        ({"delta": 0.0}, "delta"),
        ({"delta": 1.0}, "delta"),
        ({"accountant": "gdp"}, "accountant"),
        ({"target_epsilon": 8.0}, "noise_multiplier=None"),
        ({"noise_multiplier": None}, "target_epsilon"),
        ({"noise_multiplier": None, "target_epsilon": -1.0}, "target_epsilon"),
        ({"max_epsilon": 0.0}, "max_epsilon"),
    ],
)
def test_bad_settings_are_refused(kwargs, match):
    with pytest.raises(DPConfigError, match=match):
        DPSettings(**kwargs)


def test_bad_site_and_batch_are_refused():
    validate_dp(DPSettings(), 1000, 16)
    with pytest.raises(DPConfigError, match="1/N_site"):
        validate_dp(DPSettings(delta=1e-3), 1000, 16)
    with pytest.raises(DPConfigError, match="1/N_site"):
        validate_dp(DPSettings(), 100_000, 16)  # delta 1e-5 == 1/N
    with pytest.raises(DPConfigError, match="larger than the site"):
        validate_dp(DPSettings(), 8, 16)
    with pytest.raises(DPConfigError, match="at least one"):
        validate_dp(DPSettings(), 0, 16)
    with pytest.raises(DPConfigError, match="larger than the site"):
        train(tiny_model(), tiny_data(3), SiteAccountant("rdp"), batch_size=4)
    with pytest.raises(DPConfigError, match="sigma"):
        train(tiny_model(), tiny_data(8), SiteAccountant("rdp"), sigma=0.0)
    with pytest.raises(DPConfigError, match="keep one mechanism"):
        train(
            tiny_model(), tiny_data(8), SiteAccountant("prv", "add-remove"), settings=DPSettings()
        )


def test_batchnorm_and_inplace_models_are_refused():
    bn = build_model(base=4, norm="batch", seed=0)
    with pytest.raises(DPConfigError, match="GroupNorm twin"):
        train(bn, tiny_data(8), SiteAccountant("rdp"))
    inplace = tiny_model()
    inplace.enc1[2] = nn.ReLU(inplace=True)
    with pytest.raises(DPConfigError, match="inplace=False"):
        train(inplace, tiny_data(8), SiteAccountant("rdp"))


def test_public_metrics_are_present():
    out = train(tiny_model(), tiny_data(8), SiteAccountant("rdp"))
    assert set(PUBLIC_METRIC_KEYS) <= set(out)
    assert "loss" not in PUBLIC_METRIC_KEYS  # un-noised: must not go to the server


def test_a_reported_history_round_trips_and_hostile_ones_are_refused():
    from common.training.dp import history_from_text, history_text

    acc = SiteAccountant("rdp")
    acc.record(1.2, 0.25, 3)
    acc.record(1.2, 0.25, 3)
    acc.record(0.9, 0.5, 2)
    assert history_from_text(history_text(acc)) == [(1.2, 0.25, 6), (0.9, 0.5, 2)]
    for bad in (
        None,
        7,
        "nope",
        "{}",
        "[[1.2, 0.25]]",
        "[[0, 0.25, 3]]",
        "[[1.2, 1.5, 3]]",
        "[[1.2, 0.25, 2.5]]",
        "[[1.2, 0.25, true]]",
        '[[1.2, "x", 3]]',
        "[[NaN, 0.25, 3]]",
        "[" + "[1.2,0.25,1]," * 5000 + "]",
    ):
        with pytest.raises(DPConfigError):
            history_from_text(bad)
