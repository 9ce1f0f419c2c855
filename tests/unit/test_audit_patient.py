"""The audit at patient level (issue 28: on imported CT membership is a patient's): each case's
score is the mean of its candidate slices' scores (bench.audit_metrics.patient_level), its report
row, and `fedonco verify`'s recomputation of it from the saved scores and case ids."""

import json

import numpy as np
import pytest

from bench.audit import AUDIT_SCORES, patient_audit, save_audit_scores
from bench.audit_metrics import audit_metrics, case_scores, patient_level
from bench.report import _mia_table
from bench.verify import MISMATCH, MISSING, OK, Report, SeedRun
from common.config import load_profile
from common.io import save_npz


def _cases(n_member: int, n_nonmember: int, slices: int = 3, seed: int = 0, leak: float = 5.0):
    """Slice scores of ``n_member`` member and ``n_nonmember`` non-member cases, ``slices`` each,
    shuffled; a member slice scores ``leak`` higher on average."""
    rng = np.random.default_rng(seed)
    ids = [f"m{i:03d}" for i in range(n_member)] + [f"h{i:03d}" for i in range(n_nonmember)]
    cases = np.repeat(ids, slices)
    member = np.repeat(np.r_[np.ones(n_member, bool), np.zeros(n_nonmember, bool)], slices)
    scores = rng.normal(size=len(cases)) * 0.1 + leak * member
    order = rng.permutation(len(cases))
    return scores[order], member[order], cases[order]


def test_a_case_scores_the_mean_of_its_slices():
    scores = np.array([0.0, 0.9, 0.3, 0.0, 0.3, 0.3])
    member = np.array([1, 1, 0, 1, 0, 0], bool)
    cases = np.array(["a", "a", "b", "a", "b", "b"])
    ids, s, y, n = case_scores(scores, member, cases)
    assert ids.tolist() == ["a", "b"] and y.tolist() == [True, False] and n.tolist() == [3, 3]
    assert s == pytest.approx([0.3, 0.3])  # a: (0 + 0.9 + 0) / 3, not its max


def test_members_scoring_high_give_patient_auc_1_and_tprs_only_where_estimable():
    scores, member, cases = _cases(8, 6)
    p = patient_level(scores, member, cases, n_boot=200, seed=0)
    assert p["auc"] == 1.0 and p["auc_ci95"] == [1.0, 1.0]
    assert (p["n_member_cases"], p["n_nonmember_cases"]) == (8, 6)
    assert (p["n_member_slices"], p["n_nonmember_slices"]) == (24, 18)
    # 6 non-member cases: the smallest non-zero FPR is 1/6, so no TPR at 10%, 1% or 0.1% FPR
    for k in ("tpr_at_10pct_fpr", "tpr_at_1pct_fpr", "tpr_at_0.1pct_fpr"):
        assert p[k] == "n/a (6 non-member cases)" and p["tpr"][k] is None
    assert p["error"] is None and "mean" in p["rule"]
    p = patient_level(*_cases(8, 12), n_boot=200, seed=0)
    assert p["tpr_at_10pct_fpr"] == 1.0 and p["tpr"]["tpr_at_10pct_fpr"]["n_nonmembers"] == 12
    assert p["tpr_at_1pct_fpr"] == "n/a (12 non-member cases)"


def test_shuffled_scores_give_patient_auc_near_half():
    scores, member, cases = _cases(150, 150, leak=0.0, seed=1)
    p = patient_level(scores, member, cases, n_boot=200, seed=0)
    assert abs(p["auc"] - 0.5) < 0.1
    assert p["auc_ci95"][0] < 0.5 < p["auc_ci95"][1]
    # the case level is the slice level's ranks of case means, not the slices' AUC
    assert p["auc"] != audit_metrics(scores, member, n_boot=10)["auc"]


def test_a_case_in_two_splits_or_without_an_id_is_refused():
    scores, member, cases = _cases(4, 4)
    cases = cases.copy()
    cases[np.flatnonzero(~member)[0]] = "m000"  # a holdout slice of a training patient
    with pytest.raises(ValueError, match="m000 have both member .* not split by patient"):
        patient_level(scores, member, cases, n_boot=10)
    cases[0] = ""
    with pytest.raises(ValueError, match="1 candidate slice"):
        patient_level(scores, member, cases, n_boot=10)


def _run(tmp_path):
    """A method's audit on an imported dataset: the saved scores with case ids, and results.json's
    mia as bench.audit writes it."""
    cfg = load_profile("smoke")
    scores, member, cases = _cases(10, 10, seed=2, leak=0.2)
    sites = np.array([f"{'ABCDE'[int(c[1:]) % 5]}" for c in cases])  # a case lies in one site
    rungs = {"lira": scores, "loss": scores[::-1].copy()}
    mdir = tmp_path / "fedavg"
    (mdir / "audit" / "all").mkdir(parents=True)
    save_audit_scores(mdir / "audit" / AUDIT_SCORES, rungs, member, sites, cases)
    save_npz(mdir / "audit" / "all" / "scores.npz", rungs)
    attacks = {
        k: audit_metrics(v, member, sites=sites, n_boot=cfg.mia.bootstrap, seed=cfg.seed)
        for k, v in rungs.items()
    }
    mia = {
        **{
            k: attacks["lira"][k]
            for k in (
                "auc",
                "auc_ci95",
                "tpr_at_10pct_fpr",
                "tpr_at_1pct_fpr",
                "tpr_at_0.1pct_fpr",
                "tpr",
                "dp_ceiling",
            )
        },
        "n_members": int(member.sum()),
        "n_nonmembers": int((~member).sum()),
        "attack": "lira",
        "attacks": attacks,
        "attack_info": {"targets": ["all"]},
        "patient_level": patient_audit(rungs, member, cases, "lira", cfg),
    }
    entry = json.loads(json.dumps({"epsilon": None, "delta": None, "mia": mia}))
    (tmp_path / "config.json").write_text(json.dumps(cfg.model_dump(mode="json")))
    (tmp_path / "results.json").write_text(
        json.dumps({"seed": cfg.seed, "methods": {"fedavg": entry}})
    )
    lines: list[str] = []
    run = SeedRun(tmp_path, Report(lines.append), tmp_path / "cache")
    run.test_ok = False  # no dataset: the fresh draw is the integration test's
    return run, cfg, entry, mdir, lines


def test_verify_recomputes_the_patient_level_audit(tmp_path):
    run, cfg, entry, mdir, lines = _run(tmp_path)
    p = entry["mia"]["patient_level"]
    assert p["attack"] == "lira" and p["n_member_cases"] == p["n_nonmember_cases"] == 10
    run.check_audit("fedavg", entry, mdir, cfg, None)
    assert not run.report.failed, lines
    what = "fedavg mia patient_level (the quoted rung per case)"
    assert {c.what: c.status for c in run.report.checks}[what] == OK
    # a changed patient-level number, a dropped entry, or scores without case ids: not OK
    for change, status in (("auc", MISMATCH), ("drop", MISMATCH), ("no ids", MISSING)):
        run, cfg, entry, mdir, lines = _run(tmp_path / change.replace(" ", "-"))
        if change == "auc":
            entry["mia"]["patient_level"]["auc"] += 0.01
        elif change == "drop":
            del entry["mia"]["patient_level"]
        else:
            z = dict(np.load(mdir / "audit" / AUDIT_SCORES))
            del z["cases"]
            save_npz(mdir / "audit" / AUDIT_SCORES, z)
        run.check_audit("fedavg", entry, mdir, cfg, None)
        got = [c for c in run.report.checks if c.what.startswith("fedavg mia patient_level")]
        assert [c.status for c in got] == [status], (change, lines)


def test_the_report_has_a_patient_level_table(tmp_path):
    entry = _run(tmp_path)[2]
    p = entry["mia"]["patient_level"]
    text = "\n".join(_mia_table([("fedavg", entry["mia"])]))
    assert "Per patient" in text
    row = next(line for line in text.splitlines() if line.startswith("| fedavg | lira | 10 / 10"))
    assert f"{p['auc']:.3f}" in row and row.count("n/a (10 non-member cases)") == 2
    assert "(30 / 30)" in row
