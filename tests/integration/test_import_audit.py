"""The membership-inference audit on an imported dataset (issue 28): 40 real-CT fixture cases
(tests/realct.py, the phantom written as LiTS NIfTI), 8 per site so that the importer gives every
site an attacker case beside its train, holdout and test cases; `fedonco bench --data` then runs
FedAvg on the smoke profile with the audit on. results.json reports the audit per slice and per
patient (a case's score: the mean of its candidate slices' scores), with the case counts of the
candidates drawn, and `fedonco verify` recomputes both from the saved scores and case ids."""

import json
import subprocess

import numpy as np
import pytest
from realct import CFG, bench_on, phantom_case, write_layout

from bench.audit import AUDIT_SCORES, load_audit_cases, load_audit_scores
from bench.fleet import fedonco
from common.config import DEFAULT_SITE_NAMES, with_overrides
from common.data.real.importer import import_dataset
from common.data.store import read_manifest

pytestmark = [pytest.mark.slow, pytest.mark.heavy]
CASES_PER_SITE, N_Z = 8, 6  # 8: the fewest with an attacker case per site at the smoke fractions


def test_audit_of_an_imported_dataset_reports_slices_and_patients(tmp_path):
    cases = [phantom_case(k, n_z=N_Z, no_tumour=None) for k in range(5 * CASES_PER_SITE)]
    import_dataset(write_layout(tmp_path, "lits", cases), tmp_path / "data", CFG, gallery=False)
    m = read_manifest(tmp_path / "data")
    for site in DEFAULT_SITE_NAMES:  # train, holdout, test and attacker cases at every site
        assert all(m["cases"][site][split] for split in m["splits"]), m["cases"][site]
    cfg = with_overrides(CFG, **{"fl.methods": ["fedavg"], "mia.enabled": True})
    run_dir = bench_on(tmp_path, cfg, timeout=600)
    mia = json.loads((run_dir / "results.json").read_text())["methods"]["fedavg"]["mia"]
    assert mia["error"] is None and 0.0 <= mia["auc"] <= 1.0 and mia["attack"]
    # the cases of the candidates the audit drew and saved: members train cases, non-members
    # holdout cases of the manifest
    scores, member, _sites = load_audit_scores(run_dir / "fedavg" / "audit" / AUDIT_SCORES)
    ids = load_audit_cases(run_dir / "fedavg" / "audit" / AUDIT_SCORES)
    of = {
        split: {c for s in DEFAULT_SITE_NAMES for c in m["cases"][s][split]}
        for split in m["splits"]
    }
    assert set(ids[member]) <= of["train"] and set(ids[~member]) <= of["holdout"]
    assert (mia["n_members"], mia["n_nonmembers"]) == (int(member.sum()), int((~member).sum()))
    p = mia["patient_level"]
    assert p["attack"] == mia["attack"] and "mean" in p["rule"]
    assert p["n_member_cases"] == len(set(ids[member])) >= 10
    assert p["n_nonmember_cases"] == len(set(ids[~member])) >= 5
    assert (p["n_member_slices"], p["n_nonmember_slices"]) == (
        mia["n_members"],
        mia["n_nonmembers"],
    )
    assert 0.0 <= p["auc"] <= 1.0 and p["auc_ci95"][0] <= p["auc"] <= p["auc_ci95"][1]
    means = [scores[mia["attack"]][ids == c].mean() for c in sorted(set(ids))]
    assert len(means) == p["n_member_cases"] + p["n_nonmember_cases"]
    n0 = p["n_nonmember_cases"]
    assert p["tpr_at_1pct_fpr"] == p["tpr_at_0.1pct_fpr"] == f"n/a ({n0} non-member cases)"
    assert isinstance(p["tpr_at_10pct_fpr"], float) == (n0 >= 10)
    text = (run_dir / "results.md").read_text()
    assert "Per patient" in text and f"| fedavg | {p['attack']} | {p['n_member_cases']} / " in text
    print(
        "slice level:",
        {
            k: mia[k]
            for k in ("attack", "auc", "auc_ci95", "n_members", "n_nonmembers", "tpr_at_10pct_fpr")
        },
    )
    print("patient level:", {k: v for k, v in p.items() if k != "tpr"})
    # fedonco verify recomputes the patient level from the saved scores and case ids
    done = subprocess.run(
        fedonco("verify", str(run_dir)), capture_output=True, text=True, timeout=300
    )
    lines = done.stdout.splitlines()
    bad = [line for line in lines if line.startswith(("MISMATCH", "MISSING"))]
    assert done.returncode == 0 and not bad, (
        "\n".join(bad) + done.stdout[-2000:] + done.stderr[-2000:]
    )
    ok = {line[9:].split(": reported")[0] for line in lines if line.startswith("OK")}
    assert "fedavg mia patient_level (the quoted rung per case)" in ok
    assert "fedavg audit case ids (the fresh draw's sample records)" in ok
    assert np.isfinite(means).all()
