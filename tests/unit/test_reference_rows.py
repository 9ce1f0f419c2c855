"""The pooled and local reference rows: trained in one process, evaluated and released like a
method's, with what federation buys stated in the claims."""

from __future__ import annotations

import numpy as np

from bench.claims import reference_lines
from bench.reference import train_reference
from common.config import load_profile, with_overrides
from common.release import load_release


def _cfg():
    return with_overrides(load_profile("smoke"), **{"train.rounds": 1, "train.local_epochs": 1})


def test_pooled_row_releases_one_model_evaluated_on_every_site(smoke_data, tmp_path):
    r = train_reference(_cfg(), "pooled", smoke_data, tmp_path / "pooled")
    assert r["kind"] == "pooled" and r["evaluated_at"] == "server" and r["rounds"] == 1
    assert set(r["dice_per_site"]) == set("ABCDE") and r["dice_cross"] is None
    model, info = load_release(tmp_path / "pooled" / "release")
    assert info["method"] == "pooled" and info["final_model_sha256"] == r["final_model_sha256"]
    assert (tmp_path / "pooled" / "history.json").read_text() == "[]\n"


def test_local_row_releases_each_sites_own_model_with_the_cross_site_matrix(smoke_data, tmp_path):
    out = tmp_path / "local"
    r = train_reference(_cfg(), "local", smoke_data, out)
    assert r["kind"] == "local" and r["evaluated_at"] == "sites"
    hashes = set()
    for s in "ABCDE":
        _, info = load_release(out / "site-state" / "local" / f"site{s}" / "release")
        assert info["site"] == s and info["final_model_sha256"] == r["site_model_sha256"][s]
        hashes.add(info["final_model_sha256"])
    assert len(hashes) == 5  # five different models
    cross = r["dice_cross"]
    assert set(cross) == set("ABCDE") and all(set(row) == set("ABCDE") for row in cross.values())
    for s in "ABCDE":  # the own-site Dice is the diagonal of the cross matrix
        a, b = cross[s][s], r["dice_per_site"][s]
        assert (np.isnan(a) and np.isnan(b)) or a == b
    again = train_reference(_cfg(), "local", smoke_data, tmp_path / "again" / "local")
    assert again["site_model_sha256"] == r["site_model_sha256"]  # deterministic on CPU


def test_reference_lines_say_what_federation_buys():
    ms = {
        "fedavg": {"dice": 0.6},
        "dpsgd": {"dice": None},
        "local": {"dice": 0.45},
        "pooled": {"dice": 0.65},
    }
    (line,) = reference_lines(ms)
    assert line.startswith("What fedavg buys (Dice 0.600): +0.150 over local (0.450")
    assert "-0.050 against pooled (0.650)" in line
    assert reference_lines({"fedavg": {"dice": 0.6}}) == []
