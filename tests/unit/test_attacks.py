"""Membership-inference ladder and audit metrics on tiny data (32x32 slices, U-Net base 4)."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch
from conftest import SEED  # seed offset of the statistical checks (bench/perf/margins.py)

import common.training.dp
import common.training.local
from attacks.calibrated import lira_offline, lira_signal
from attacks.features import FEATURE_NAMES, IDX, image_features
from attacks.ladder import (
    loss_scores,
    query,
    run_ladder,
    shadow_attack_scores,
)
from attacks.rungs import FALLBACK, LADDER, QUERY_RUNGS, blind_scores
from attacks.shadows import ShadowModel, dataset, train_shadows
from bench.audit_metrics import (
    ALPHA,
    BROKEN_ATTACK,
    audit_metrics,
    clopper_pearson,
    dp_ceiling_test,
    rank_auc,
    roc_plot,
    tpr_point,
)
from common.config import Config, DataConfig, ModelConfig, TrainConfig
from common.data.generate import render_slice
from common.data.sites import REFERENCE
from common.fl.simulate import simulate_federation
from common.model import model_for

SIZE = 32
WINDOW = (-160.0, 240.0)


def _cfg(rounds: int = 4, local_epochs: int = 10, **train) -> Config:
    return Config(
        seed=3,
        data=DataConfig(image_size=SIZE, window=WINDOW),
        model=ModelConfig(base=4, groups=4),
        train=TrainConfig(rounds=rounds, local_epochs=local_epochs, batch_size=8, lr=0.01, **train),
    )


def _blobs(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Noisy HU slices with one faint disc each: hard to generalise, easy to memorise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    images = np.empty((n, SIZE, SIZE), np.int16)
    masks = np.empty((n, SIZE, SIZE), np.uint8)
    for i in range(n):
        cy, cx = rng.uniform(8, SIZE - 8, 2)
        r = rng.uniform(2.5, 6.0)
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        hu = rng.normal(60, 45, (SIZE, SIZE)) - 15.0 * mask
        images[i], masks[i] = np.round(hu).astype(np.int16), mask
    return images, masks


def _model_predict(model):
    return ShadowModel(model, np.zeros(0, bool), WINDOW, "fedavg").predict


# ------------------------------------------------------------------------------------------
# audit metrics


def test_metrics_perfect_separation():
    y = np.r_[np.ones(100), np.zeros(200)]
    s = np.r_[np.linspace(2, 3, 100), np.linspace(0, 1, 200)]
    m = audit_metrics(s, y, n_boot=200)
    assert m["auc"] == 1.0 and m["auc_ci95"] == [1.0, 1.0]
    assert m["tpr_at_1pct_fpr"] == 1.0 and m["advantage"] == 1.0
    assert m["tpr_at_0.1pct_fpr"] is None  # 200 non-members: not estimable
    assert (m["n_members"], m["n_nonmembers"], m["error"], m["dp_ceiling"]) == (
        100,
        200,
        None,
        None,
    )


def test_metrics_identical_distributions_cover_chance():
    rng = np.random.default_rng(0)
    s = rng.normal(size=2000)
    y = np.r_[np.ones(800), np.zeros(1200)]
    m = audit_metrics(s, y, n_boot=300, seed=1)
    assert abs(m["auc"] - 0.5) < 0.04
    lo, hi = m["auc_ci95"]
    assert lo < 0.5 < hi and hi - lo < 0.1
    assert m["tpr_at_0.1pct_fpr"] is not None and m["tpr_at_1pct_fpr"] < 0.05
    assert m["error"] is None


def test_metrics_inverted_scores_are_an_error_not_privacy():
    rng = np.random.default_rng(1)
    y = np.r_[np.ones(300), np.zeros(300)]
    s = rng.normal(size=600) - 1.0 * y  # members score LOWER: a flipped attack
    m = audit_metrics(s, y, n_boot=300)
    assert m["auc"] < 0.3 and m["auc_ci95"][1] < 0.5
    assert m["error"] is not None and m["error"].startswith(BROKEN_ATTACK)
    # Below 0.5 but indistinguishable from chance is not an error.
    s2 = rng.normal(size=40)
    assert audit_metrics(s2, np.r_[np.ones(20), np.zeros(20)], n_boot=300)["error"] is None


def test_metrics_match_sklearn_and_split_per_site():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(2)
    y = rng.random(400) < 0.5
    s = rng.normal(size=400) + 0.8 * y
    s[:50] = np.round(s[:50])  # ties
    sites = np.array(list("ABCDE"))[np.arange(400) % 5]
    m = audit_metrics(s, y, sites=sites, n_boot=100)
    assert math.isclose(m["auc"], roc_auc_score(y, s)) and math.isclose(rank_auc(s, y), m["auc"])
    assert sorted(m["per_site"]) == list("ABCDE")
    a = m["per_site"]["A"]
    sel = sites == "A"
    assert math.isclose(a["auc"], roc_auc_score(y[sel], s[sel]))
    assert a["n_members"] + a["n_nonmembers"] == 80
    assert m["auc_ci95"][0] < m["auc"] < m["auc_ci95"][1]


def test_metrics_reject_bad_input():
    with pytest.raises(ValueError, match="both members and non-members"):
        audit_metrics(np.arange(5.0), np.ones(5))
    with pytest.raises(ValueError, match="NaN"):
        audit_metrics(np.array([0.1, np.nan]), np.array([1, 0]))
    with pytest.raises(ValueError, match="same length"):
        audit_metrics(np.arange(3.0), np.array([1, 0]))


def test_dp_ceiling_formula():
    y = np.r_[np.ones(50), np.zeros(50)]
    s = np.r_[np.ones(50), np.zeros(50)]
    m = audit_metrics(s, y, epsilon=1.0, delta=1e-5, n_boot=50)
    c = m["dp_ceiling"]
    assert math.isclose(c["tpr_at_1pct_fpr"], min(1.0, math.e * 0.01 + 1e-5))
    assert c["tpr_at_0.1pct_fpr"] is None  # not estimable with 50 non-members
    assert abs(c["auc"] - 0.73) < 0.01  # the AUC bound of an (1, 1e-5)-DP mechanism
    big = audit_metrics(s, y, epsilon=12.0, delta=1e-5, n_boot=50)["dp_ceiling"]
    assert big["tpr_at_1pct_fpr"] == 1.0 and big["auc"] > 0.999  # vacuous at the paper's ε
    # the binomial test needs >= 10 / FPR non-members: none with 50; with 100 at 10% FPR only,
    # where perfect separation violates ε 1; at ε 12 the bound is 1 and nothing can violate it
    assert not c["tests"]["tpr_at_10pct_fpr"]["estimable"]
    y, s = np.r_[np.ones(50), np.zeros(100)], np.r_[np.ones(50), np.zeros(100)]
    tests = audit_metrics(s, y, epsilon=1.0, delta=1e-5, n_boot=50)["dp_ceiling"]["tests"]
    assert tests["tpr_at_10pct_fpr"]["estimable"] and tests["tpr_at_10pct_fpr"]["violates"]
    assert not tests["tpr_at_1pct_fpr"]["estimable"]
    assert "needs >= 1,000 non-members" in tests["tpr_at_1pct_fpr"]["reason"]
    assert tests["tpr_at_0.1pct_fpr"] is None
    big = audit_metrics(s, y, epsilon=12.0, delta=1e-5, n_boot=50)["dp_ceiling"]["tests"]
    assert not big["tpr_at_10pct_fpr"]["violates"] and big["tpr_at_10pct_fpr"]["p_value"] == 1.0


def test_clopper_pearson_known_values():
    # exact intervals, from the Beta quantiles (e.g. R's binom.test)
    assert clopper_pearson(0, 10) == pytest.approx((0.0, 0.30849710781876294), abs=1e-9)
    assert clopper_pearson(5, 10) == pytest.approx((0.18708602844740, 0.81291397155260), abs=1e-9)
    assert clopper_pearson(10, 10) == pytest.approx((0.69150289218124, 1.0), abs=1e-9)
    assert clopper_pearson(1, 20) == pytest.approx((0.0012650895, 0.2487327628), abs=1e-9)
    lo, hi = clopper_pearson(2, 200)
    assert lo < 2 / 200 < hi and hi == pytest.approx(0.0356547, abs=1e-6)
    with pytest.raises(ValueError):
        clopper_pearson(3, 2)


def test_clopper_pearson_equals_scipy_binomtest_exact_interval():
    """The closed form (beta quantiles) against scipy's root-finding one, every k of small n and
    a spread of k for the audit's sizes (measured: at most 5e-13 apart), at two levels."""
    from scipy.stats import binomtest

    for n in (1, 2, 3, 10, 40, 200, 1000):
        for k in sorted({*range(min(n, 6) + 1), *range(0, n + 1, max(1, n // 8)), n}):
            for level in (0.95, 0.99):
                ci = binomtest(k, n).proportion_ci(confidence_level=level, method="exact")
                lo, hi = clopper_pearson(k, n, level)
                assert abs(lo - ci.low) < 1e-11 and abs(hi - ci.high) < 1e-11, (k, n, level)


def test_tpr_point_is_the_roc_point_with_its_threshold_and_false_positives():
    """Against sklearn's full ROC (no dropped points), with ties; the recorded threshold lets
    through exactly the recorded true and false positives, and the CI is exact over the members."""
    from sklearn.metrics import roc_curve

    rng = np.random.default_rng(5)
    for _ in range(50):
        y = rng.random(300) < 0.5
        s = np.round(rng.normal(size=300) + y, 1)  # many ties
        fprs, tprs, _ = roc_curve(y, s, drop_intermediate=False)
        for x in (0.1, 0.01, 0.001):
            p = tpr_point(s, y, x)
            assert p["tpr"] == pytest.approx(tprs[fprs <= x + 1e-12].max())
            assert p["fp"] <= p["k_allowed"] == math.floor(x * (~y).sum())
            if p["threshold"] is not None:
                assert (s[~y] >= p["threshold"]).sum() == p["fp"]
                assert (s[y] >= p["threshold"]).sum() == p["tp"]
            assert p["tpr_ci95"] == list(clopper_pearson(p["tp"], int(y.sum())))
            assert p["fpr_realised"] == p["fp"] / (~y).sum()
    m = audit_metrics(s, y, n_boot=50)
    assert m["tpr"]["tpr_at_10pct_fpr"]["tpr"] == m["tpr_at_10pct_fpr"]
    assert m["tpr"]["tpr_at_0.1pct_fpr"] is None and m["tpr_at_0.1pct_fpr"] is None


def _ceiling_rates(shift, eps, seeds, n1=200, n0=200, fpr=0.1, ties=False):
    """Fraction of seeds flagged by the binomial test, and by the old point comparison
    TPR > e^ε·FPR (what the audit did before)."""
    flagged = naive = 0
    for seed in seeds:
        rng = np.random.default_rng(seed)
        s = np.r_[rng.normal(size=n1) + shift, rng.normal(size=n0)]
        s = np.round(s, 1) if ties else s
        y = np.r_[np.ones(n1, bool), np.zeros(n0, bool)]
        p = tpr_point(s, y, fpr)
        flagged += dp_ceiling_test(p, eps, 0.0)["violates"]
        naive += p["tpr"] > math.exp(eps) * fpr
    return flagged / len(seeds), naive / len(seeds)


@pytest.mark.parametrize("block", range(5))
def test_ceiling_test_does_not_flag_a_no_signal_attack_at_eps_zero(block):
    """A no-signal attack at ε → 0 respects every DP ceiling: flagged in at most α of the seeds.
    Measured over 5 blocks of 300 seeds: 0-0.7% at 10% FPR with 200 / 200 (the point
    comparison of before: 49-52%), so α = 5% leaves a wide margin; 0-1% at 1% FPR with 1,000
    non-members and with tied scores."""
    seeds = range(300 * block, 300 * (block + 1))
    flagged, naive = _ceiling_rates(0.0, 0.0, seeds)
    assert flagged <= ALPHA and naive > 0.3  # the old check was no test
    assert _ceiling_rates(0.0, 1e-3, seeds[:100], ties=True)[0] <= ALPHA
    assert _ceiling_rates(0.0, 0.0, seeds[:100], n0=1000, fpr=0.01)[0] <= ALPHA


def test_ceiling_test_flags_a_strong_leak_at_small_eps():
    """Members 2 sd above non-members (TPR ~0.75 at 10% FPR) against ε = 0.5 (bound ~0.25 at the
    threshold's FPR upper limit): flagged on every one of 10 seeds (measured: 2,000 of 2,000);
    at ε = 8 the bound is 1 and nothing is flagged."""
    assert _ceiling_rates(2.0, 0.5, range(10)) == (1.0, 1.0)
    assert _ceiling_rates(2.0, 8.0, range(10))[0] == 0.0


def test_roc_plot_writes_png(tmp_path):
    rng = np.random.default_rng(3)
    y = np.r_[np.ones(100), np.zeros(100)]
    path = tmp_path / "plots" / "roc.png"
    roc_plot({"loss": (rng.normal(size=200) + y, y), "blind": (rng.normal(size=200), y)}, path)
    assert path.stat().st_size > 1000


# ------------------------------------------------------------------------------------------
# features


def test_image_features_shape_and_known_values():
    _, masks = _blobs(4, 0)
    masks[3] = 0  # one tumor-free slice
    perfect = masks.astype(np.float32)
    wrong = 1.0 - perfect
    f_good, f_bad = image_features(perfect, masks), image_features(wrong, masks)
    assert f_good.shape == (4, len(FEATURE_NAMES)) and np.isfinite(f_good).all()
    assert np.isfinite(f_bad).all()
    assert np.allclose(f_good[:, IDX["bce"]], 0, atol=1e-5)
    assert np.allclose(f_good[:, IDX["hard_dice"]], 1)
    assert (f_bad[:, IDX["seg_loss"]] > f_good[:, IDX["seg_loss"]] + 1).all()
    assert (f_good[:, IDX["phi"]] > 10).all() and (f_bad[:, IDX["phi"]] < -10).all()
    assert list(f_good[:, IDX["has_tumor"]]) == [1, 1, 1, 0]
    assert f_good[3, IDX["bce_tumor"]] == 0 and f_good[3, IDX["bce_boundary"]] == 0
    with pytest.raises(ValueError, match="probabilities"):
        image_features(perfect * 2, masks)


# ------------------------------------------------------------------------------------------
# attack rungs: sanity


@pytest.fixture(scope="module")
def overfit():
    """A U-Net overfit on 16 member slices; 48 non-members from the same distribution."""
    cfg = _cfg(rounds=25, local_epochs=10)
    images, masks = _blobs(64, 10 + SEED)
    member = np.zeros(64, bool)
    member[:16] = True
    fed = simulate_federation(
        cfg, "fedavg", {"A": dataset(images[:16], masks[:16], WINDOW)}, seed=5 + SEED
    )
    model = fed.model(cfg, "fedavg")
    return cfg, _model_predict(model), images, masks, member


def test_loss_attack_on_overfit_model_is_well_above_chance(overfit, margin):
    _, predict, images, masks, member = overfit
    m = audit_metrics(loss_scores(query(predict, images), masks), member, n_boot=200)
    margin("loss_auc", m["auc"], 0.8)
    assert m["error"] is None


def test_loss_attack_on_untrained_model_is_near_chance():
    cfg = _cfg()
    images, masks = _blobs(96, 11)
    member = np.arange(96) % 2 == 0
    predict = _model_predict(model_for(cfg, "fedavg"))
    m = audit_metrics(loss_scores(query(predict, images), masks), member, n_boot=300)
    assert abs(m["auc"] - 0.5) < 0.15 and m["auc_ci95"][0] < 0.5 < m["auc_ci95"][1]


def _rendered(split: str, n: int, spec=REFERENCE) -> tuple[np.ndarray, np.ndarray]:
    slices = [render_slice(0, 0, split, i, spec, SIZE, 12.0) for i in range(n)]
    return np.stack([s.image for s in slices]), np.stack([s.mask for s in slices])


def test_blind_baseline_near_chance_on_proper_split_and_flags_a_biased_one():
    from dataclasses import replace

    mem, non = _rendered("train", 150), _rendered("holdout", 150)
    y = np.r_[np.ones(150), np.zeros(150)]
    images, masks = np.concatenate([mem[0], non[0]]), np.concatenate([mem[1], non[1]])
    auc = audit_metrics(blind_scores(images, masks), y, n_boot=200)["auc"]
    assert abs(auc - 0.5) < 0.1
    # Non-members from a site without tumors: the blind rung must see the split bias.
    other = _rendered("holdout", 150, replace(REFERENCE, prevalence=0.0))
    images_b, masks_b = np.concatenate([mem[0], other[0]]), np.concatenate([mem[1], other[1]])
    auc_b = audit_metrics(blind_scores(images_b, masks_b), y, n_boot=200)["auc"]
    assert abs(auc_b - 0.5) > 0.15


# ------------------------------------------------------------------------------------------
# shadows


def test_shadow_training_reuses_train_local(monkeypatch):
    calls = []
    real = common.training.local.train_local

    def counting(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(common.training.local, "train_local", counting)
    cfg = _cfg(rounds=3, local_epochs=1)
    images, masks = _blobs(12, 4)
    shadows = train_shadows(cfg, "fedprox", images, masks, n_shadows=2, seed=0)
    assert len(calls) == 2 * 3
    assert all(c["epochs"] == 1 and c["lr"] == 0.01 and c["proximal_mu"] == 0.01 for c in calls)
    assert [int(s.member_mask.sum()) for s in shadows] == [6, 6]
    assert not np.array_equal(shadows[0].member_mask, shadows[1].member_mask)
    probs = shadows[0].predict(images)
    assert probs.shape == images.shape and probs.dtype == np.float32


def test_dp_target_gets_a_dp_shadow(monkeypatch):
    calls = []
    real = common.training.dp.DPTrainer.train_round

    def counting(self, *args, **kwargs):
        calls.append(kwargs)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(common.training.dp.DPTrainer, "train_round", counting)
    monkeypatch.setattr(
        common.training.local,
        "train_local",
        lambda *a, **k: pytest.fail("DP shadow used train_local"),
    )
    cfg = _cfg(rounds=2, local_epochs=1)
    images, masks = _blobs(16, 6)
    (shadow,) = train_shadows(cfg, "dpsgd", images, masks, n_shadows=1, seed=1)
    assert len(calls) == 2 and calls[0]["batch_size"] == 8
    assert calls[0]["accountant"] is calls[1]["accountant"]  # one accountant over the rounds
    assert calls[1]["accountant"].steps == 2 * 1  # 2 rounds x ceil(8 / 8) steps
    assert isinstance(shadow.model.enc1[1], torch.nn.GroupNorm)


def test_shadow_attack_and_lira_run_end_to_end(overfit, margin):
    cfg, predict, images, masks, member = overfit
    pool = _blobs(32, 12 + SEED)
    shadows = train_shadows(cfg, "fedavg", *pool, n_shadows=2, seed=SEED)
    probs = query(predict, images)
    s = shadow_attack_scores(shadows, probs, masks, *pool)
    lira = lira_offline(
        lira_signal(probs, masks),
        np.stack([lira_signal(sh.predict(images), masks) for sh in shadows]),
    )
    for scores in (s, lira):
        assert scores.shape == (64,) and np.isfinite(scores).all()
    margin("shadow_auc", audit_metrics(s, member, n_boot=100)["auc"], 0.6)
    margin("lira_offline_auc", audit_metrics(lira, member, n_boot=100)["auc"], 0.6)


def test_run_ladder_all_rungs(overfit, margin):
    cfg, predict, images, masks, member = overfit
    queried = []

    def counting_predict(x):
        queried.append(len(x))
        return predict(x)

    start = time.perf_counter()
    result = run_ladder(
        counting_predict,
        cfg,
        "fedavg",
        _blobs(32, 13 + SEED),
        (images, masks),
        n_shadows=1,
        seed=2 + SEED,
    )
    elapsed = time.perf_counter() - start
    scores = result.scores
    assert set(scores) == set(LADDER)
    # once per candidate and per population sample (the pool half no shadow trained on)
    assert sum(queried) == len(images) + 16 == result.info["queries"]
    assert result.info["strongest"] == FALLBACK and not result.info["selection"]
    aucs = {k: audit_metrics(v, member, n_boot=100)["auc"] for k, v in scores.items()}
    margin("ladder_blind_auc_off_chance", abs(aucs["blind"] - 0.5), 0.25, above=False)
    margin("ladder_loss_auc", aucs["loss"], 0.8)
    print(f"run_ladder: {elapsed:.1f}s, AUCs {aucs}")


def test_lira_signal_reads_the_tumour_and_its_ring_or_the_whole_empty_slice():
    from attacks.calibrated import LIRA_RING_PX

    masks = np.zeros((2, SIZE, SIZE), np.uint8)
    masks[0, 10:14, 10:14] = 1  # slice 0 has a tumour, slice 1 none
    probs = np.full((2, SIZE, SIZE), 0.2, np.float32)
    base = lira_signal(probs, masks)
    far = probs.copy()
    far[:, 30, 30] = 0.9  # a background pixel far from the tumour
    moved = lira_signal(far, masks)
    assert moved[0] == base[0] and moved[1] < base[1]  # ignored with a tumour, counted without
    ring = probs.copy()
    ring[0, 10 - LIRA_RING_PX, 12] = 0.9  # inside the ring: counted
    assert lira_signal(ring, masks)[0] < base[0]
    outside = probs.copy()
    outside[0, 10 - LIRA_RING_PX - 1, 12] = 0.9  # just outside the ring: not counted
    assert lira_signal(outside, masks)[0] == base[0]


def test_shadows_are_cached_by_recipe_and_reloaded_bit_identical(tmp_path, monkeypatch):
    from common.training.pretrain import CACHE_ENV

    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    cfg = _cfg(rounds=2, local_epochs=1)
    images, masks = _blobs(12, 4)
    sites = np.array(list("AABBCCAABBCC"))
    (first,) = train_shadows(cfg, "fedbn", images, masks, 1, seed=0, pool_sites=sites)
    assert len(list(tmp_path.glob("shadow-*.npz"))) == 1 and not first.metrics["cached"]
    real = common.training.local.train_local
    monkeypatch.setattr(
        common.training.local,
        "train_local",
        lambda *a, **k: pytest.fail("a cached shadow was trained again"),
    )
    (again,) = train_shadows(cfg, "fedbn", images, masks, 1, seed=0, pool_sites=sites)
    assert again.metrics["cached"] and np.array_equal(again.member_mask, first.member_mask)
    assert set(again.site_models) == set(first.site_models)  # FedBN: every site's own model
    for site in (None, *first.site_models):
        assert np.array_equal(again.predict(images, site=site), first.predict(images, site=site))
    monkeypatch.setattr(common.training.local, "train_local", real)
    (other,) = train_shadows(
        _cfg(rounds=3, local_epochs=1), "fedbn", images, masks, 1, seed=0, pool_sites=sites
    )
    assert not other.metrics["cached"]  # another recipe: another shadow
    assert len(list(tmp_path.glob("shadow-*.npz"))) == 2


def test_shadows_trained_side_by_side_in_processes_equal_those_trained_here(monkeypatch):
    """Worker processes (one per shadow, the cores split) give the very weights that training
    the shadows one after the other in this process gives, and the per-site models (FedBN)."""
    import attacks.shadows as shadows_mod

    cfg = _cfg(rounds=2, local_epochs=1)
    images, masks = _blobs(12, 4)
    sites = np.array(list("AABBCCAABBCC"))
    monkeypatch.setattr(shadows_mod.os, "cpu_count", lambda: 2)
    here = train_shadows(cfg, "fedbn", images, masks, 2, seed=0, pool_sites=sites)  # tiny: here
    monkeypatch.setattr(shadows_mod, "PARALLEL_MIN_WORK", 0)
    calls = []
    real = shadows_mod._run_jobs
    monkeypatch.setattr(
        shadows_mod, "_run_jobs", lambda jobs, workers: calls.append(workers) or real(jobs, workers)
    )
    apart = train_shadows(cfg, "fedbn", images, masks, 2, seed=0, pool_sites=sites)
    assert calls == [2]  # two worker processes
    for a, b in zip(here, apart, strict=True):
        assert np.array_equal(a.member_mask, b.member_mask)
        assert set(a.site_models) == set(b.site_models) == {"A", "B", "C"}
        for site in (None, *a.site_models):
            assert np.array_equal(a.predict(images, site=site), b.predict(images, site=site))


def test_the_shadow_cache_key_follows_proximal_mu_and_secure_aggregation():
    from attacks.shadows import _cache_key
    from common.config import with_overrides

    cfg, cpu = _cfg(), torch.device("cpu")
    key = _cache_key(cfg, "fedprox", 0, 0, "d", cpu)
    assert key == _cache_key(cfg, "fedprox", 0, 0, "d", cpu)
    for change in (
        {"fl.proximal_mu": 0.5},
        {"secagg.threshold": 4, "fl.min_fit_sites": 4},
        {"secagg.clip": 8.0},
    ):
        assert _cache_key(with_overrides(cfg, **change), "fedprox", 0, 0, "d", cpu) != key, change


def test_shadow_threads_split_the_cores_whatever_is_cached():
    from attacks.shadows import shadow_threads

    assert shadow_threads(2, cpus=2) == 1 and shadow_threads(1, cpus=2) == 2
    assert shadow_threads(2, cpus=16) == 8 and shadow_threads(64, cpus=16) == 1
    assert shadow_threads(3, cpus=1) == 1


def test_auditor_trains_online_shadows_on_half_the_candidates_each(overfit, margin):
    from attacks.auditor import run_auditor, train_auditor_shadows
    from attacks.rungs import AUDITOR_RUNGS

    cfg, predict, images, masks, member = overfit
    pool_images, pool_masks = _blobs(32, 14 + SEED)
    pool = (pool_images, pool_masks, np.array(["A", "B"] * 16))
    cand_sites = np.array(["A", "B"] * 32)
    quick = _cfg(rounds=8, local_epochs=5)
    shadows = train_auditor_shadows(
        quick, "fedavg", pool, (images, masks, cand_sites), 2, seed=1 + SEED
    )
    inside = np.stack([sh.extra_member for sh in shadows])
    assert inside.shape == (2, 64) and (inside.sum(axis=0) == 1).all()  # IN for exactly one of 2
    result = run_auditor(predict, quick, pool, (images, masks), shadows, inside, seed=1 + SEED)
    assert set(result.scores) == set(AUDITOR_RUNGS)
    for s in result.scores.values():
        assert s.shape == (64,) and np.isfinite(s).all()
    rmia = result.scores["rmia_online"]
    assert (rmia >= 0).all() and (rmia <= 1).all()
    aucs = {k: audit_metrics(v, member, n_boot=100)["auc"] for k, v in result.scores.items()}
    # measured 0.927-0.995 (LiRA) and 1.000 (RMIA) over seeds 0-4, native and avx2
    margin("lira_online_auc", aucs["lira_online"], 0.7)
    margin("rmia_online_auc", aucs["rmia_online"], 0.7)
    with pytest.raises(ValueError, match="even"):
        train_auditor_shadows(quick, "fedavg", pool, (images, masks, cand_sites), 3)


def test_ladder_with_views_two_shadows_and_a_budget(overfit, margin):
    from common.config import MIAConfig

    cfg, predict, images, masks, member = overfit
    cfg = cfg.model_copy(update={"mia": MIAConfig(views=("id", "hflip", "right"), population=10)})
    pool = _blobs(32, 13 + SEED)
    shadows = train_shadows(cfg, "fedavg", *pool, n_shadows=2, seed=2 + SEED)
    z = int((~(shadows[0].member_mask | shadows[1].member_mask)).sum())
    n_z = min(z, 10)
    budget = 2 * (64 + n_z) + 5  # room for two of the three views
    seen = []

    def counting(x):
        seen.append(len(x))
        return predict(x)

    result = run_ladder(
        counting,
        cfg,
        "fedavg",
        pool,
        (images, masks),
        shadows=shadows,
        seed=2 + SEED,
        query_budget=budget,
    )
    info = result.info
    assert info["views"] == ["id", "hflip"] and sum(seen) == info["queries"] == 2 * (64 + n_z)
    assert info["n_population"] == n_z and info["queries"] <= budget
    assert set(info["selection"]) == set(QUERY_RUNGS)
    assert info["strongest"] == max(info["selection"], key=info["selection"].get)
    assert info["rmia_a_calibrated"] and info["rmia_a"] in info["rmia_a_table"]
    aucs = {k: audit_metrics(v, member, n_boot=100)["auc"] for k, v in result.scores.items()}
    # bench/perf/margins.py, seeds 0-4, native and ATEN_CPU_CAPABILITY=avx2 (identical values):
    # loss 0.926-0.987, RMIA 0.947-1.000, offline LiRA with two shadows 0.682-0.982 (it was
    # asserted > 0.7 and failed at seed 3: hence 0.6 for LiRA)
    margin("views_loss_auc", aucs["loss"], 0.8)
    margin("views_rmia_auc", aucs["rmia"], 0.8)
    margin("views_lira_auc", aucs["lira"], 0.6)


def test_methods_with_the_same_recipe_share_cached_shadows(tmp_path, monkeypatch):
    from common.config import ModelConfig
    from common.training.pretrain import CACHE_ENV

    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    cfg = _cfg(rounds=2, local_epochs=1).model_copy(
        update={"model": ModelConfig(base=4, groups=4, norm="group")}
    )
    images, masks = _blobs(12, 4)
    (a,) = train_shadows(cfg, "fedavg", images, masks, 1, seed=0)  # GroupNorm by the profile
    (b,) = train_shadows(cfg, "groupnorm", images, masks, 1, seed=0)  # GroupNorm by the method
    assert not a.metrics["cached"] and b.metrics["cached"]
    (c,) = train_shadows(cfg, "fedprox", images, masks, 1, seed=0)  # a proximal term: its own
    assert not c.metrics["cached"] and len(list(tmp_path.glob("shadow-*.npz"))) == 2
