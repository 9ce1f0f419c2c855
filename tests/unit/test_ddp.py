"""Distributed DP-SGD (common/training/ddp.py) and its accountant (common/training/dp/skellam.py):
the noise shares, the sensitivity of what a site sends, the gradient, the accounting."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from scipy import stats
from test_secagg import CHI2_CRIT, _chi2_bytes, run_round

from common.model import build_model, get_params
from common.training.ddp import (
    DDPSite,
    ServerAdam,
    ddp_step,
    from_ring_sum,
    make_plan,
    skellam,
    to_ring,
    wrap_free,
)
from common.training.dp.skellam import (
    ORDERS,
    epsilon_from_rdp,
    epsilon_of,
    noise_for_epsilon,
    round_rdp,
    sensitivities,
)


def test_noise_shares_sum_to_the_target_skellam():
    """Five sites each add Skellam(mu/t) with t = 3: the sum is Skellam of variance 5 mu / 3 —
    checked against the exact distribution (chi-square over bins with >= 20 expected counts;
    fixed seed, so the test is deterministic and a failure is a real mismatch)."""
    mu, t, sites, n = 30.0, 3, 5, 200_000
    rng = np.random.default_rng(2021)
    total = sum(skellam(rng, mu / t, n) for _ in range(sites))
    target = stats.skellam(sites * mu / t / 2, sites * mu / t / 2)
    values, counts = np.unique(total, return_counts=True)
    expected = target.pmf(values) * n
    keep = expected >= 20
    obs = np.append(counts[keep], counts[~keep].sum())
    exp = np.append(expected[keep], n - expected[keep].sum())
    chi = float(((obs - exp) ** 2 / exp).sum())
    assert chi < stats.chi2.ppf(1 - 1e-4, len(obs) - 1)
    # the variance, within 5 standard errors of the sample variance (kurtosis of a Skellam ~ 3)
    var = sites * mu / t
    assert abs(total.var() - var) < 5 * var * math.sqrt(2 / n)
    assert total.dtype == np.int64


def test_skellam_accounting_is_the_gaussians_for_large_noise_and_never_below():
    """For Delta2 >> 1 the Skellam RDP tends to the Gaussian's (Opacus, q = 1: within 1e-6); with
    subsampling, the general bound is an upper bound of the exact sampled-Gaussian RDP. Under
    replace-one (the default) q = 1 is the Gaussian with the sensitivity doubled (sigma / 2), and
    q < 1 bounds the replace-one sampled Gaussian (common.training.dp.adjacency) from above."""
    from opacus.accountants.analysis.rdp import compute_rdp

    from common.training.dp.adjacency import ORDERS as GAUSS_ORDERS
    from common.training.dp.adjacency import replace_one_rdp

    d1, d2 = sensitivities(50 * math.sqrt(10_000), 1.0, 10_000)
    ar = {"adjacency": "add-remove"}
    for sigma in (0.8, 2.0, 6.0):
        mu = (sigma * d2) ** 2
        gauss = compute_rdp(q=1.0, noise_multiplier=sigma, steps=1, orders=list(ORDERS))
        np.testing.assert_allclose(round_rdp(1.0, mu, d1, d2, **ar), gauss, rtol=1e-6)
        doubled = compute_rdp(q=1.0, noise_multiplier=sigma / 2, steps=1, orders=list(ORDERS))
        np.testing.assert_allclose(round_rdp(1.0, mu, d1, d2), doubled, rtol=1e-6)
        for q in (0.05, 0.4):
            exact = compute_rdp(q=q, noise_multiplier=sigma, steps=1, orders=list(ORDERS))
            assert np.all(round_rdp(q, mu, d1, d2, **ar) >= exact * (1 - 1e-9))
            ro = dict(zip(GAUSS_ORDERS, replace_one_rdp(q, sigma), strict=True))
            ro_exact = np.array([ro[float(a)] for a in ORDERS if float(a) in ro])
            ro_bound = np.array(
                [v for a, v in zip(ORDERS, round_rdp(q, mu, d1, d2), strict=True) if float(a) in ro]
            )
            assert np.all(ro_bound >= ro_exact * (1 - 1e-6))


def test_epsilon_from_the_records_matches_the_papers_formula():
    """ε of recorded rounds, recomputed here from Theorem 3.5 of Agarwal et al. (q = 1) and the
    RDP -> (ε, δ) conversion, independently of the module's subsampling code."""
    from opacus.accountants.analysis.rdp import get_privacy_spent

    d1, d2 = sensitivities(1000.0, 1.0, 400)
    rounds = [{"q": 1.0, "mu": mu, "delta1": d1, "delta2": d2} for mu in (4e7, 6e7, 4e7)]
    rdp = np.zeros(len(ORDERS))
    for r in rounds:
        a = np.array(ORDERS, float)
        rdp += a * d2**2 / (2 * r["mu"]) + np.minimum(
            ((2 * a - 1) * d2**2 + 6 * d1) / (4 * r["mu"] ** 2), 3 * d1 / (2 * r["mu"])
        )
    want, _ = get_privacy_spent(orders=list(ORDERS), rdp=rdp, delta=1e-5)
    assert epsilon_of(rounds, 1e-5, "add-remove") == pytest.approx(float(want), rel=1e-12)
    assert epsilon_of([], 1e-5) == 0.0
    # replace-one (the default): the same formula with both sensitivities doubled
    rdp = np.zeros(len(ORDERS))
    for r in rounds:
        a, e1, e2 = np.array(ORDERS, float), 2 * d1, 2 * d2
        rdp += a * e2**2 / (2 * r["mu"]) + np.minimum(
            ((2 * a - 1) * e2**2 + 6 * e1) / (4 * r["mu"] ** 2), 3 * e1 / (2 * r["mu"])
        )
    want, _ = get_privacy_spent(orders=list(ORDERS), rdp=rdp, delta=1e-5)
    assert epsilon_of(rounds, 1e-5) == pytest.approx(float(want), rel=1e-12)
    # more noise in a round (a dropout-free round realises 5/3 of the target): less ε
    louder = [{**r, "mu": r["mu"] * 5 / 3} for r in rounds]
    assert epsilon_of(louder, 1e-5) < epsilon_of(rounds, 1e-5)


def test_noise_for_a_target_epsilon_meets_it_tightly():
    d1, d2 = sensitivities(2000.0, 1.0, 2500)
    for (q, steps, target), adj in itertools.product(
        ((1.0, 25, 4.0), (0.3, 50, 2.0)), ("replace-one", "add-remove")
    ):
        mu = noise_for_epsilon(target, 1e-5, q, steps, d1, d2, adj)
        eps = epsilon_from_rdp(round_rdp(q, mu, d1, d2, adjacency=adj) * steps, 1e-5)
        assert eps <= target
        quieter = (math.sqrt(mu) * 0.98) ** 2  # 2% less noise: over the target
        assert epsilon_from_rdp(round_rdp(q, quieter, d1, d2, adjacency=adj) * steps, 1e-5) > target


def test_plan_shares_the_noise_for_the_worst_surviving_set():
    plan = make_plan(
        q=1.0, clip=1.0, dim=10_000, threshold=3, rounds=10, delta=1e-5, noise_multiplier=1.5
    )
    assert plan.scale * plan.clip == pytest.approx(50 * math.sqrt(10_000))
    assert plan.delta2 == pytest.approx(plan.scale * plan.clip + 50)  # rounding: sqrt(d)/2
    assert plan.noise_multiplier == pytest.approx(1.5)
    assert plan.mu_share * 3 == pytest.approx(plan.mu)  # any 3 sites carry the target noise
    assert wrap_free(plan.scale, plan.clip, 1000, 5 * plan.mu_share)
    assert not wrap_free(plan.scale, plan.clip, 10**6, 5 * plan.mu_share)
    with pytest.raises(ValueError, match="exactly one"):
        make_plan(q=1.0, clip=1.0, dim=10, threshold=3, rounds=1, delta=1e-5)


def _sites(n_sites=3, per_site=5, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_sites):
        images = torch.randn(per_site, 1, size, size, generator=g)
        masks = (torch.rand(per_site, 1, size, size, generator=g) > 0.8).float()
        out.append(list(zip(images, masks, strict=True)))
    return out


def test_without_noise_and_clipping_the_step_is_fedsgd_on_the_union():
    """sigma -> 0, C -> inf: the unmasked sum / (q * sum n_k) is the full-batch gradient of the
    mean loss over the union of the sites' slices, up to the rounding (<= 1/(2s) per value)."""
    from common.metrics import seg_loss

    model = build_model(4, "group", 2, seed=0)
    keys = sorted(k for k, _ in model.named_parameters())
    sites = _sites()
    scale, clip = 1e5, 1e9
    site = DDPSite(model)
    try:
        ring = np.zeros(sum(p.numel() for p in model.parameters()), np.uint32)
        for i, data in enumerate(sites):
            vec, metrics = site.noisy_sum(
                data, keys, q=1.0, clip=clip, scale=scale, mu_share=0.0, seed=i, chunk=2
            )
            assert vec.dtype == np.uint32 and metrics["num_examples"] == len(data)
            ring += vec
        got = from_ring_sum(ring, scale) / sum(len(d) for d in sites)
    finally:
        site.close()
    union = [it for d in sites for it in d]
    x = torch.stack([it[0] for it in union])
    y = torch.stack([it[1] for it in union])
    model.zero_grad()
    seg_loss(model(x), y, reduction="none").mean().backward()
    named = dict(model.named_parameters())
    want = torch.cat([named[k].grad.reshape(-1) for k in keys]).numpy()
    np.testing.assert_allclose(got, want, atol=0.5 / scale + 1e-5 * np.abs(want).max())


def test_one_slice_moves_the_sum_by_at_most_the_sensitivity():
    """Adding one slice changes a site's integer sum by one rounded clipped scaled gradient:
    its L2 norm is at most Delta2 = s*C + sqrt(d)/2 and its L1 norm at most Delta1."""
    model = build_model(4, "group", 2, seed=1)
    keys = sorted(k for k, _ in model.named_parameters())
    dim = sum(p.numel() for p in model.parameters())
    clip = 0.01  # a small C: every slice is clipped
    scale = 50 * math.sqrt(dim) / clip  # as ddp_scale: s*C >> sqrt(d), rounding costs ~1%
    d1, d2 = sensitivities(scale, clip, dim)
    data = _sites(1, 4, seed=3)[0]
    site = DDPSite(model)
    try:
        base, _ = site.noisy_sum(
            data[:3], keys, q=1.0, clip=clip, scale=scale, mu_share=0.0, seed=0
        )
        more, _ = site.noisy_sum(data, keys, q=1.0, clip=clip, scale=scale, mu_share=0.0, seed=0)
    finally:
        site.close()
    diff = more.view(np.int32).astype(np.int64) - base.view(np.int32).astype(np.int64)
    assert np.abs(diff).sum() <= d1 and np.linalg.norm(diff) <= d2
    assert np.linalg.norm(diff) > 0.9 * scale * clip  # it was clipped to C, not zeroed


def test_secure_aggregation_reveals_only_the_noisy_sum():
    """The sites' integer vectors (noise shares included) go through the real secure-aggregation
    round: every masked vector looks uniform, the unmasked total is exactly the sum modulo 2**32,
    and with E dropping after the shares the sum (and its noise: 4 shares >= t) is the others'."""
    model = build_model(4, "group", 2, seed=2)
    keys = sorted(k for k, _ in model.named_parameters())
    names = list("ABCDE")
    site = DDPSite(model)
    try:
        vecs = {
            s: site.noisy_sum(d, keys, q=1.0, clip=1.0, scale=1e3, mu_share=1e4, seed=i)[0]
            for i, (s, d) in enumerate(zip(names, _sites(5, 3, seed=4), strict=True))
        }
    finally:
        site.close()
    assert all(_chi2_bytes(v) > CHI2_CRIT for v in vecs.values())  # a site's sum is not uniform
    h = run_round(vecs, t=3)
    assert all(_chi2_bytes(v) < CHI2_CRIT for v in h.masked.values())
    want = np.zeros_like(vecs["A"])
    for v in vecs.values():
        want += v
    np.testing.assert_array_equal(h.total, want)
    h = run_round(vecs, t=3, drop={"after_shares": ["E"]})
    assert h.surv == list("ABCD")
    np.testing.assert_array_equal(h.total, sum(vecs[s] for s in "ABCD"))


def test_ring_round_trip_and_server_step():
    v = np.array([-3, 0, 7, -(2**31) + 1, 2**31 - 1], np.int64)
    assert np.array_equal(from_ring_sum(to_ring(v), 1.0), v.astype(float))
    params = {"w": np.ones(3, np.float32)}
    grads = {"w": np.array([2.0, -2.0, 0.0]) * 10}
    a, b = ServerAdam(0.1), ServerAdam(0.1)
    one = ddp_step(a, params, grads, total_examples=10, q=1.0)
    np.testing.assert_allclose(one["w"], [0.9, 1.1, 1.0], atol=1e-6)  # Adam's first step: lr
    two = ddp_step(a, one, grads, 10, 1.0)
    b.load_state_dict(ServerAdam(0.1).state_dict())
    ddp_step(b, params, grads, 10, 1.0)
    c = ServerAdam(0.1)
    c.load_state_dict(b.state_dict())  # a resumed server takes the same step
    np.testing.assert_array_equal(ddp_step(c, one, grads, 10, 1.0)["w"], two["w"])
    with pytest.raises(ValueError, match="positive"):
        ddp_step(a, params, grads, 0, 1.0)


def test_sites_draw_their_noise_and_sample_from_their_round_seed():
    model = build_model(4, "group", 2, seed=0)
    keys = sorted(get_params(model))
    data = _sites(1, 6, seed=5)[0]
    site = DDPSite(model)
    try:
        runs = [
            site.noisy_sum(data, keys, q=0.5, clip=1.0, scale=1e3, mu_share=100.0, seed=s)[0]
            for s in (11, 11, 12)
        ]
    finally:
        site.close()
    assert np.array_equal(runs[0], runs[1]) and not np.array_equal(runs[0], runs[2])


def test_a_site_refuses_round_parameters_out_of_range():
    """q, C, s and the noise share come from the server: a NaN, a zero or an absurd value is
    refused with a message before any gradient is computed."""
    from common.training.dp.settings import DPConfigError

    model = build_model(4, "group", 2, seed=0)
    keys = sorted(get_params(model))
    data = _sites(1, 2, seed=6)[0]
    good = {"q": 1.0, "clip": 1.0, "scale": 1e3, "mu_share": 10.0}
    site = DDPSite(model)
    try:
        for key, bad in (
            ("q", 0.0),
            ("q", float("nan")),
            ("clip", -1.0),
            ("scale", math.inf),
            ("mu_share", -1.0),
            ("mu_share", float("nan")),
            ("mu_share", 1e30),
        ):
            with pytest.raises(DPConfigError, match="out of range"):
                site.noisy_sum(data, keys, **{**good, key: bad}, seed=0)
        site.noisy_sum(data, keys, **good, seed=0)  # and the sane ones work
    finally:
        site.close()
