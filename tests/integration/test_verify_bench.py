"""`fedonco verify` on real `fedonco bench` runs of the smoke profile: it agrees with a fresh run,
and names what was changed in a copy of it."""

import json
import shutil
import subprocess

import numpy as np
import pytest

from bench.audit import AUDIT_SCORES
from bench.fleet import fedonco
from common.io import GROUP_READ, load_npz, save_npz

# heavy: ~170 s on a 2-core AVX2 machine; `make test` stays under 15 min there
pytestmark = [pytest.mark.slow, pytest.mark.heavy]


def _verify(run_dir):
    done = subprocess.run(
        fedonco("verify", str(run_dir)), capture_output=True, text=True, timeout=280
    )
    lines = done.stdout.splitlines()
    bad = {
        line[9:].split(": reported")[0].split(" (")[0]
        for line in lines
        if line.startswith(("MISMATCH", "MISSING"))
    }
    return done, lines, bad


def _copy(run_dir, tmp_path):
    return shutil.copytree(run_dir, tmp_path / run_dir.name)


def test_verify_agrees_with_a_fresh_run(smoke_bench_dp):
    done, lines, bad = _verify(smoke_bench_dp)
    assert done.returncode == 0 and not bad, done.stdout[-3000:] + done.stderr[-2000:]
    assert lines[-1].startswith("verify: ") and " 0 MISMATCH, 0 MISSING" in lines[-1]
    ok = {line[9:].split(": reported")[0] for line in lines if line.startswith("OK")}
    for what in (
        "dpsgd dice",
        "dpsgd dice site E",
        "dpsgd epsilon (worst site)",
        "dpsgd dp site A epsilon (replace-one, rdp)",
        "ddp-sgd epsilon (replace-one, ledger)",
        "dpsgd final_model_sha256 (released release/model.npz)",
        "ddp-sgd initial_model_sha256 (rebuilt from the seed)",
        "dpsgd audit labels and sites (a fresh draw of the candidates)",
        "dpsgd mia lira auc",
        "dpsgd mia lira tpr_at_1pct_fpr [Clopper-Pearson 95%]",
        "ddp-sgd mia rmia auc_ci95 (bootstrap)",
        "data test/siteA_000.npz sha256",
    ):
        assert what in ok, what
    for method in ("dpsgd", "ddp-sgd"):
        assert (smoke_bench_dp / method / "audit" / AUDIT_SCORES).is_file()


def test_a_changed_number_in_results_json_is_named(smoke_bench_dp, tmp_path):
    run = _copy(smoke_bench_dp, tmp_path)
    res = json.loads((run / "results.json").read_text())
    dpsgd, ddp = res["methods"]["dpsgd"], res["methods"]["ddp-sgd"]
    dpsgd["dice"] += 0.25
    ddp["epsilon"] *= 1.01
    rung = dpsgd["mia"]["attack"]
    dpsgd["mia"]["attacks"][rung]["auc"] += 0.01
    (run / "results.json").write_text(json.dumps(res, indent=1))
    done, lines, bad = _verify(run)
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-2000:]
    assert bad == {
        "dpsgd dice",
        "ddp-sgd epsilon",
        f"dpsgd mia {rung} auc",
        f"dpsgd mia {rung} every other number",
    }, bad
    assert " 4 MISMATCH, 0 MISSING" in lines[-1]


def test_a_changed_weight_in_a_released_model_is_named(smoke_bench_dp, tmp_path):
    run = _copy(smoke_bench_dp, tmp_path)
    path = run / "dpsgd" / "release" / "model.npz"
    params = load_npz(path)
    params["head.bias"] = params["head.bias"] + np.float32(20.0)  # one weight: every pixel tumour
    save_npz(path, params, mode=GROUP_READ)
    done, lines, bad = _verify(run)
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-2000:]
    assert {
        "dpsgd release release/model.npz sha256",
        "dpsgd final_model_sha256",
        "dpsgd dice",
        "dpsgd dice_global",
        "dpsgd ce_loss",
    } <= bad, bad
    assert all(b.startswith("dpsgd") for b in bad), bad  # nothing else is blamed
    assert "OK       dpsgd final_model_sha256 (final_model.npz)" in "\n".join(lines)


def test_a_run_without_its_dataset_is_checked_on_a_regenerated_one(smoke_bench_dp, tmp_path):
    """The Ray engine keeps only the dataset's manifest (data-manifest.json): verify regenerates
    the dataset from the seed and compares its shards with the recorded sha256."""
    run = _copy(smoke_bench_dp, tmp_path)
    manifest = json.loads((run / "data" / "manifest.json").read_text())
    shutil.rmtree(run / "data")
    (run / "data-manifest.json").write_text(json.dumps(manifest))
    done, lines, bad = _verify(run)
    assert done.returncode == 0 and not bad, done.stdout[-3000:] + done.stderr[-2000:]
    text = "\n".join(lines)
    assert "OK       data test/siteB_000.npz sha256" in text
    assert "SKIP     data attacker/siteA_000.npz sha256" in text
    assert "OK       dpsgd dice:" in text
    entry = next(e for e in manifest["shards"] if e["file"] == "test/siteB_000.npz")
    entry["sha256"] = "0" * 64
    (run / "data-manifest.json").write_text(json.dumps(manifest))
    done, lines, bad = _verify(run)
    assert done.returncode == 1 and bad == {"data test/siteB_000.npz sha256"}, bad
    assert "SKIP     dpsgd Dice (the test split is missing or failed its hash check)" in lines


def test_a_several_seed_run_verifies_every_seed_and_the_summary(local_two_seeds, tmp_path):
    cfg, _path, run_dir = local_two_seeds
    done, lines, bad = _verify(run_dir)
    assert done.returncode == 0 and not bad, done.stdout[-3000:] + done.stderr[-2000:]
    assert f"== seed{cfg.seed} ==" in lines and f"== seed{cfg.seed + 1} ==" in lines
    assert sum(line.startswith("OK       fedavg dice:") for line in lines) == 2
    run = _copy(run_dir, tmp_path)
    summary = json.loads((run / "results.json").read_text())
    summary["methods"]["fedavg"]["dice"]["sd"] += 0.001
    (run / "results.json").write_text(json.dumps(summary))
    done, lines, bad = _verify(run)
    assert done.returncode == 1 and bad == {"summary fedavg"}, bad
    assert any(
        line.startswith("MISMATCH summary fedavg (mean ± sd over seeds) dice.sd") for line in lines
    )
