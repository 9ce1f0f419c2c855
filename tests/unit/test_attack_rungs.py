"""The newer rungs and their plumbing: views, RMIA, online LiRA, the map CNN, selection on
shadow data, the shadow cache and the auditor (tiny tensors, fixed seeds)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import SEED  # seed offset of the statistical checks (bench/perf/margins.py)

from attacks.calibrated import (
    RMIA_A_GRID,
    calibrate_a,
    lira_offline,
    lira_online,
    rmia_scores,
    rmia_signal,
)
from attacks.ladder import _auc, select_on_shadows
from attacks.maps import map_attack_scores, map_inputs
from attacks.rungs import QUERY_RUNGS
from attacks.views import VIEW_NAMES, apply_view, views_within_budget
from bench.audit import strongest_rung, weaker_rung_warning
from common.config import Config, MIAConfig


def test_views_move_image_and_mask_together_without_wrapping():
    a = np.arange(2 * 5 * 6, dtype=np.int16).reshape(2, 5, 6)
    assert np.array_equal(apply_view("id", a), a)
    assert np.array_equal(apply_view("hflip", apply_view("hflip", a)), a)
    assert np.array_equal(apply_view("vflip", a)[:, 0], a[:, -1])
    right = apply_view("right", a)
    assert right.shape == a.shape
    assert np.array_equal(right[:, :, 2:], a[:, :, :-2])  # moved by SHIFT_PX = 2
    assert np.array_equal(right[:, :, 0], a[:, :, 0])  # padded with the edge, no wrap-around
    up = apply_view("up", a)
    assert np.array_equal(up[:, :-2], a[:, 2:]) and np.array_equal(up[:, -1], a[:, -1])
    with pytest.raises(ValueError, match="unknown view"):
        apply_view("rotate", a)


def test_views_fit_the_query_budget_or_refuse():
    views = ("id", "hflip", "right")
    assert views_within_budget(views, 100, None) == views
    assert views_within_budget(views, 100, 250) == ("id", "hflip")
    with pytest.raises(ValueError, match="below one query per slice"):
        views_within_budget(views, 100, 99)
    for bad in (("hflip", "id"), ("id", "id"), ("id", "spin"), ()):
        with pytest.raises(ValueError):
            MIAConfig(views=bad)
    assert MIAConfig(views=VIEW_NAMES).views == VIEW_NAMES
    with pytest.raises(ValueError, match="even"):
        MIAConfig(auditor_shadows=3)


def test_rmia_by_hand():
    # one reference; offline a = 0.5: Pr(x) = (1.5 Pr_ref + 0.5) / 2
    tx, rx = np.array([0.8, 0.2]), np.array([[0.4, 0.4]])
    tz, rz = np.array([0.5, 0.5, 0.5]), np.array([[0.5, 0.6, 0.3]])
    px = (1.5 * 0.4 + 0.5) / 2
    pz = (1.5 * np.array([0.5, 0.6, 0.3]) + 0.5) / 2
    ratio_x, ratio_z = np.array([0.8, 0.2]) / px, 0.5 / pz
    count = (ratio_x[:, None] / ratio_z[None] > 1.0).sum(axis=1)
    tie_break = 1 / (1 + 1 / ratio_x)  # sigmoid(log ratio_x)
    expect = (count + tie_break) / (3 + 1)
    got = rmia_scores(tx, rx, tz, rz, a=0.5, gamma=1.0)
    assert np.allclose(got, expect) and got[0] > got[1]
    assert (got >= 0).all() and (got <= 1).all()
    # candidates that beat every z (or none) are still ordered by their own ratio
    many = rmia_scores(np.array([0.9, 0.95, 0.01, 0.02]), np.full((1, 4), 0.4), tz, rz, a=0.5)
    assert many[1] > many[0] > many[3] > many[2]
    strict = rmia_scores(tx, rx, tz, rz, a=0.5, gamma=3.0)
    assert (strict <= got).all()  # a larger gamma never raises a score
    with pytest.raises(ValueError, match="gamma"):
        rmia_scores(tx, rx, tz, rz, a=0.5, gamma=0.0)


def _synthetic_signals(rng, n=200, s=4, gap=1.0):
    """Per-candidate difficulty d, references around d, members' target signal shifted by gap."""
    d = rng.normal(0, 2, n)
    member = rng.random(n) < 0.5
    reference = d + rng.normal(0, 0.3, (s, n))
    target = d + gap * member + rng.normal(0, 0.3, n)
    return target, reference, member


def test_lira_online_with_one_in_and_one_out_model_is_monotone_in_the_signal():
    """Two auditor shadows give each candidate one IN and one OUT model: no per-side spread. With
    a tight IN spread and a wide OUT one, two separate fallback variances made the score fall
    for a signal above the IN mean (members scored below non-members: online AUC 0.19-0.83 over
    5 seeds of test_attacks' auditor test); one common variance keeps it rising along
    μ_in − μ_out, for every candidate."""
    rng = np.random.default_rng(0)
    n = 50
    d = rng.normal(0, 3, n)
    inside = np.array([[True] * n, [False] * n])
    reference = np.stack([1.0 + 0.1 * d, d])  # IN values tight across candidates, OUT wide
    mu_in, mu_out = reference
    low, mid, high = (
        lira_online(mu_out + x * (mu_in - mu_out), reference, inside) for x in (0.0, 1.0, 3.0)
    )
    assert (low < mid).all() and (mid < high).all()
    target, refs, member = _synthetic_signals(rng, s=2)
    inside = np.array([[True] * len(member), [False] * len(member)])
    refs = np.where(inside, refs + 1.0, refs)
    assert _auc(lira_online(target, refs, inside), member) > 0.9


def test_lira_offline_beats_raw_signal_and_online_uses_in_models():
    rng = np.random.default_rng(0)
    target, reference, member = _synthetic_signals(rng)
    raw = _auc(target, member)
    offline = _auc(lira_offline(target, reference), member)
    assert offline > 0.9 > raw  # calibration removes the per-candidate difficulty
    inside = np.zeros_like(reference, bool)
    inside[::2] = True  # references 0, 2 are IN for every candidate: shift them like members
    reference_in = np.where(inside, reference + 1.0, reference)
    online = _auc(lira_online(target, reference_in, inside), member)
    assert online > 0.9
    with pytest.raises(ValueError, match="IN and an OUT"):
        lira_online(target, reference, np.zeros_like(inside))
    # views: a (V, N) target against (S, V, N) references averages per-view scores
    two = lira_offline(np.stack([target, target]), np.stack([reference, reference], axis=1))
    assert np.allclose(two, lira_offline(target, reference))


def test_rmia_separates_members_and_a_is_calibrated_on_a_grid():
    rng = np.random.default_rng(1)
    target, reference, member = _synthetic_signals(rng, gap=1.5)
    sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731  (likelihoods in (0, 1))
    z_t, z_r, _ = _synthetic_signals(rng, n=100, gap=0.0)
    kw = {
        "target_x": sig(target),
        "reference_x": sig(reference),
        "target_z": sig(z_t),
        "reference_z": sig(z_r),
    }
    aucs = {a: _auc(rmia_scores(**kw, a=a), member) for a in (0.0, 1.0)}
    assert aucs[1.0] > 0.85 and aucs[0.0] > 0.6  # a = 0 barely uses the references
    assert _auc(rmia_scores(**kw, a=None), member) > 0.85  # online form
    a, table = calibrate_a([(kw, member)], _auc)
    assert a in table and set(table) == {float(x) for x in RMIA_A_GRID}
    assert table[a] == max(table.values())


def _maps(n, member, rng, size=16):
    masks = np.zeros((n, size, size), np.uint8)
    masks[:, 5:10, 5:10] = 1
    p = np.full((n, size, size), 0.1, np.float32)
    p[:, 5:10, 5:10] = 0.6
    # members: the tumour *boundary* is fitted (a spatial pattern, same mean confidence)
    p[member, 5, 5:10] = 0.95
    p[member, 9, 5:10] = 0.95
    p[member, 6:9, 5:10] = 0.45
    p = np.clip(p + rng.normal(0, 0.03, p.shape).astype(np.float32), 0, 1)
    return p, masks


def test_map_attack_learns_a_spatial_pattern_and_is_deterministic(margin):
    rng = np.random.default_rng(2 + SEED)
    y = rng.random(160) < 0.5
    p, masks = _maps(160, y, rng)
    yt = rng.random(80) < 0.5
    pt, mt = _maps(80, yt, rng)
    x, xt = map_inputs(p, masks), map_inputs(pt, mt)
    assert x.shape == (160, 3, 16, 16) and x.dtype == torch.float32
    s1 = map_attack_scores(x, y, xt, seed=3 + SEED)
    margin("map_attack_auc", _auc(s1, yt), 0.9)
    assert np.array_equal(s1, map_attack_scores(x, y, xt, seed=3 + SEED))
    with pytest.raises(ValueError, match="both IN and OUT"):
        map_attack_scores(x, np.ones(160), xt)


def test_select_on_shadows_scores_every_queried_rung(margin):
    rng = np.random.default_rng(4 + SEED)
    n = 120
    members = np.stack([rng.random(n) < 0.5 for _ in range(2)])
    masks = np.zeros((n, 16, 16), np.uint8)
    masks[:, 4:9, 4:9] = 1
    probs = []
    for k in range(2):  # each shadow fits its own members' tumours better
        p = np.full((n, 16, 16), 0.05, np.float32)
        p[:, 4:9, 4:9] = np.where(members[k], 0.9, 0.5)[:, None, None]
        probs.append(np.clip(p + rng.normal(0, 0.05, p.shape).astype(np.float32), 0, 1))
    z = np.flatnonzero(~members.any(axis=0))
    table, a, a_table = select_on_shadows(
        probs, masks, members, z, gamma=1.0, classifier="lr", seed=SEED
    )
    assert set(table) == set(QUERY_RUNGS)
    assert all(0.0 <= v <= 1.0 for v in table.values())
    # bench/perf/margins.py, seeds 0-4, native and avx2: loss and shadow 1.000, LiRA 0.840-0.877
    margin("select_loss_auc", table["loss"], 0.9)
    margin("select_lira_auc", table["lira"], 0.75)
    margin("select_shadow_auc", table["shadow"], 0.9)
    assert a in a_table
    with pytest.raises(ValueError, match="two shadows"):
        select_on_shadows(probs[:1], masks, members[:1], z, gamma=1.0, classifier="lr", seed=0)
    assert rmia_signal(probs[0], masks).max() <= 1.0


def test_strongest_rung_is_chosen_on_shadow_auc_not_target_labels():
    # per target, lira wins the first and rmia the second; over both targets rmia (0.68) wins
    ladders = [
        {"selection": {"loss": 0.6, "lira": 0.7, "rmia": 0.65}, "strongest": "lira"},
        {"selection": {"loss": 0.62, "lira": 0.64, "rmia": 0.71}, "strongest": "rmia"},
    ]
    best, how = strongest_rung(ladders)
    assert best == "rmia" and how == "shadow AUC rmia 0.680, lira 0.670, loss 0.610"
    assert strongest_rung([{"selection": {}, "strongest": "lira"}]) == (
        "lira",
        "fixed order (one shadow)",
    )
    assert strongest_rung([])[0] is None


def _rung(auc, lo, hi):
    return {"auc": auc, "auc_ci95": [lo, hi], "tpr_at_1pct_fpr": 0.02}


def test_a_quoted_rung_weaker_than_another_by_more_than_its_half_width_is_flagged():
    """The issue's standard fedavg run: LiRA 0.682 [0.63, 0.74] quoted (half-width 0.056) while
    RMIA found 0.788: flagged, in results.json and in the report; within the half-width not;
    the blind rung (no queries) never counts."""
    from bench.report import _mia_table

    attacks = {
        "blind": _rung(0.9, 0.85, 0.95),
        "loss": _rung(0.563, 0.50, 0.62),
        "lira": _rung(0.682, 0.625, 0.738),
        "rmia": _rung(0.788, 0.74, 0.834),
    }
    warning = weaker_rung_warning(attacks, "lira")
    assert warning is not None and "rmia 0.788" in warning and "half-width 0.056" in warning
    assert "loss" not in warning and "blind" not in warning
    assert weaker_rung_warning(attacks, "rmia") is None
    attacks["rmia"] = _rung(0.735, 0.69, 0.78)  # 0.735 < 0.682 + 0.0565
    assert weaker_rung_warning(attacks, "lira") is None
    assert weaker_rung_warning(attacks, None) is None and weaker_rung_warning({}, "lira") is None
    mia = {
        "attack": "lira",
        "attacks": {"lira": _rung(0.682, 0.625, 0.738), "rmia": _rung(0.788, 0.74, 0.834)},
        "rung_warning": weaker_rung_warning(
            {"lira": _rung(0.682, 0.625, 0.738), "rmia": _rung(0.788, 0.74, 0.834)}, "lira"
        ),
    }
    table = "\n".join(_mia_table([("fedavg", mia)]))
    assert "⚠ fedavg: the quoted rung lira (AUC 0.682" in table


def test_the_report_gives_each_tpr_its_ci_threshold_and_the_ceiling_test():
    from bench.audit_metrics import audit_metrics
    from bench.report import _mia_table

    rng = np.random.default_rng(0)
    y = np.r_[np.ones(200), np.zeros(200)]
    m = audit_metrics(rng.normal(size=400) + y, y, epsilon=0.5, delta=1e-5, n_boot=100)
    mia = {"attack": "rmia", "attacks": {"rmia": m}, "tpr": m["tpr"], "dp_ceiling": m["dp_ceiling"]}
    table = "\n".join(_mia_table([("dpsgd", mia)]))
    p10 = m["tpr"]["tpr_at_10pct_fpr"]
    lo, hi = p10["tpr_ci95"]
    assert f"{p10['tpr']:.3f} [{lo:.2f}, {hi:.2f}] ({p10['fp']}/200 FP, threshold" in table
    assert "1%: not estimable (needs >= 1,000 non-members at 1.0% FPR, has 200)" in table
    t10 = m["dp_ceiling"]["tests"]["tpr_at_10pct_fpr"]
    assert f"10%: TPR {t10['tpr']:.3f} vs bound {t10['bound']:.3f}" in table
    assert "VIOLATED" in table  # a 1-sd leak against ε 0.5 at 10% FPR


def test_the_standard_profile_selects_its_rung_on_shadow_data():
    """Two shadows or more: the strongest rung is chosen on them, never by a fixed order."""
    from common.config import load_profile

    assert load_profile("standard").mia.n_shadows >= 2


def test_config_round_trip_keeps_the_new_mia_settings():
    cfg = Config(mia=MIAConfig(views=("id", "hflip"), rmia_a=0.3, auditor_shadows=2))
    again = Config.model_validate(cfg.model_dump(mode="json"))
    assert again.mia == cfg.mia


def test_one_rung_table_names_every_rung_once_and_scores_any_evidence():
    """attacks/rungs.py: the ladder, the auditor, the referee and the report read one table;
    each rung's score is a function of Evidence alone (selection and final scoring call it)."""
    from attacks import rungs
    from bench.report import RUNG_ORDER

    assert len(set(rungs.ORDER)) == len(rungs.ORDER) == len(rungs.RUNGS)
    assert RUNG_ORDER == rungs.ORDER and rungs.FALLBACK == "lira"
    assert "blind" in rungs.LADDER and "blind" not in rungs.QUERY_RUNGS
    assert set(rungs.AUDITOR_RUNGS) == {"lira_online", "rmia_online"}
    rng = np.random.default_rng(0)
    n, s, p, v = 6, 2, 8, 1
    probs = rng.random((n, 16, 16)).astype(np.float32)
    masks = rng.random((n, 16, 16)) > 0.8
    ev = rungs.Evidence(
        masks=masks,
        probs=probs,
        loss=rng.random((v, n)),
        lira_t=rng.random((v, n)),
        lira_r=rng.random((s, v, n)),
        rmia_t=rng.random((v, n)),
        rmia_r=rng.random((s, v, n)),
        rmia_tz=rng.random((v, 5)),
        rmia_rz=rng.random((s, v, 5)),
        train_probs=[rng.random((p, 16, 16)).astype(np.float32) for _ in range(s)],
        train_masks=rng.random((p, 16, 16)) > 0.8,
        train_members=np.tile([True, False], (s, 4)),
        images=rng.normal(size=(n, 16, 16)),
        inside=np.array([[True] * n, [False] * n]),
        classifier="lr",
    )
    with pytest.raises(ValueError, match="offline a is not set"):
        rungs.BY_NAME["rmia"].score(ev)
    ev.a = 0.3
    for r in rungs.RUNGS:
        out = r.score(ev)
        assert out.shape == (n,) and np.isfinite(out).all(), r.name
