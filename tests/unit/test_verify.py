"""`fedonco verify`'s recomputation of ε and of the audit's numbers, and its input errors, on tiny
hand-made run bundles (the whole command on a real smoke run: tests/integration/test_verify_bench.py)."""

import json

import numpy as np
import pytest

from bench import cli
from bench.audit import AUDIT_SCORES, save_audit_scores
from bench.audit_metrics import audit_metrics
from bench.verify import MISMATCH, OK, Report, SeedRun, VerifyError, tree_diff, verify_run
from common.config import load_profile
from common.io import save_npz
from common.training.dp import SiteAccountant
from common.training.dp.accountant import epsilons_of
from common.training.dp.skellam import epsilon_of

DELTA = 1e-5


def _bundle(tmp_path, methods: dict):
    cfg = load_profile("smoke")
    (tmp_path / "config.json").write_text(json.dumps(cfg.model_dump(mode="json")))
    (tmp_path / "results.json").write_text(json.dumps({"seed": cfg.seed, "methods": methods}))
    lines = []
    run = SeedRun(tmp_path, Report(lines.append), tmp_path / "cache")
    return run, cfg, lines


def _site_record(history, site_delta=DELTA):
    acc = SiteAccountant("rdp", "replace-one")
    for s, q, n in history:
        acc.record(s, q, n)
    return {
        "epsilon": acc.epsilon(site_delta),
        "delta": site_delta,
        "accountant": "rdp",
        "adjacency": "replace-one",
        "steps": acc.steps,
        "history": [list(h) for h in history],
        "epsilon_by_adjacency": epsilons_of(history, site_delta),
    }


def _dpsgd_entry():
    per_site = {
        "A": _site_record([(1.2, 0.25, 8)]),
        "B": _site_record([(1.2, 0.5, 4), (1.0, 0.5, 2)]),
    }
    worst = max(per_site, key=lambda s: per_site[s]["epsilon"])
    return {
        "epsilon": per_site[worst]["epsilon"],
        "delta": DELTA,
        "dp": {**per_site[worst], "worst_site": worst, "per_site": per_site},
    }


def _statuses(run):
    return {c.what: c.status for c in run.report.checks}


def test_dpsgd_epsilon_is_recomputed_from_each_site_history(tmp_path):
    entry = _dpsgd_entry()
    run, cfg, lines = _bundle(tmp_path, {"dpsgd": entry})
    (tmp_path / "dpsgd").mkdir()
    eps = run.check_dp("dpsgd", entry, "dpsgd", tmp_path / "dpsgd", cfg.for_method("dpsgd"))
    assert eps == entry["epsilon"] and entry["dp"]["worst_site"] == "B"
    assert not run.report.failed, lines
    seen = _statuses(run)
    assert seen["dpsgd dp site A epsilon (replace-one, rdp)"] == OK
    assert seen["dpsgd dp site B epsilon_by_adjacency add-remove"] == OK
    assert seen["dpsgd epsilon (worst site)"] == OK
    assert run.report.identical == run.report.floats > 0  # same code, same machine: bit for bit


@pytest.mark.parametrize("where", ["run", "site", "history", "steps"])
def test_a_changed_dp_number_is_a_mismatch_named_by_the_check(tmp_path, where):
    entry = _dpsgd_entry()
    site = entry["dp"]["per_site"]["A"]
    if where == "run":
        entry["epsilon"] *= 1 + 1e-6
    elif where == "site":
        site["epsilon"] += 0.01
    elif where == "history":  # the ε matches the old history no longer
        site["history"][0][2] = 7
    else:
        site["steps"] += 1
    run, cfg, lines = _bundle(tmp_path, {"dpsgd": entry})
    run.check_dp("dpsgd", entry, "dpsgd", tmp_path, cfg.for_method("dpsgd"))
    bad = [c.what for c in run.report.checks if c.status == MISMATCH]
    expect = {
        "run": ["dpsgd epsilon (worst site)"],
        "site": ["dpsgd dp site A epsilon (replace-one, rdp)"],
        "history": [
            "dpsgd dp site A epsilon (replace-one, rdp)",
            "dpsgd dp site A epsilon_by_adjacency replace-one",
            "dpsgd dp site A epsilon_by_adjacency add-remove",
            "dpsgd dp site A steps (sum of the history)",
        ],
        "steps": ["dpsgd dp site A steps (sum of the history)"],
    }[where]
    assert bad == expect, lines


def test_ddp_epsilon_is_recomputed_from_the_privacy_ledger(tmp_path):
    ledger = [{"round": r, "q": 1.0, "mu": 4.0e6, "delta1": 300.0, "delta2": 60.0} for r in (1, 2)]
    by_adj = {a: epsilon_of(ledger, DELTA, a) for a in ("replace-one", "add-remove")}
    entry = {
        "epsilon": by_adj["replace-one"],
        "delta": DELTA,
        "dp": {
            "adjacency": "replace-one",
            "steps_accounted": 2,
            "releases_not_in_history": 0,
            "epsilon_by_adjacency": by_adj,
        },
    }
    mdir = tmp_path / "ddp-sgd"
    mdir.mkdir()
    (mdir / "privacy_ledger.jsonl").write_text("".join(json.dumps(e) + "\n" for e in ledger))
    (mdir / "history.json").write_text(json.dumps([{"ddp": {}}, {"ddp": {}}]))
    run, cfg, lines = _bundle(tmp_path, {"ddp-sgd": entry})
    mcfg = cfg.for_method("ddp-sgd").model_copy(
        update={"dp": cfg.dp.model_copy(update={"delta": DELTA})}
    )
    assert run.check_dp("ddp-sgd", entry, "ddp-sgd", mdir, mcfg) == by_adj["replace-one"]
    assert not run.report.failed, lines
    # a release the ledger holds but results.json's ε left out
    (mdir / "privacy_ledger.jsonl").write_text("".join(json.dumps(e) + "\n" for e in ledger * 2))
    run.report = Report(lines.append)
    run.check_dp("ddp-sgd", entry, "ddp-sgd", mdir, mcfg)
    bad = {c.what for c in run.report.checks if c.status == MISMATCH}
    assert bad == {
        "ddp-sgd dp.steps_accounted (ledger lines)",
        "ddp-sgd dp.releases_not_in_history",
        "ddp-sgd dp.epsilon_by_adjacency replace-one (ledger)",
        "ddp-sgd dp.epsilon_by_adjacency add-remove (ledger)",
        "ddp-sgd epsilon (replace-one, ledger)",
    }


def _audited(tmp_path, cfg, epsilon=None):
    rng = np.random.default_rng(0)
    member = np.r_[np.ones(20, bool), np.zeros(20, bool)]
    sites = np.array(list("ABCDE") * 8)
    scores = {"loss": rng.normal(size=40) + member, "lira": rng.normal(size=40) + 0.5 * member}
    mdir = tmp_path / "fedavg"
    (mdir / "audit" / "all").mkdir(parents=True)
    save_audit_scores(mdir / "audit" / AUDIT_SCORES, scores, member, sites)
    save_npz(mdir / "audit" / "all" / "scores.npz", scores)
    attacks = {
        k: audit_metrics(
            v,
            member,
            sites=sites,
            epsilon=epsilon,
            delta=DELTA,
            n_boot=cfg.mia.bootstrap,
            seed=cfg.seed,
        )
        for k, v in scores.items()
    }
    top = attacks["lira"]
    mia = {
        **{
            k: top[k]
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
        "n_members": 20,
        "n_nonmembers": 20,
        "attack": "lira",
        "attacks": attacks,
        "attack_info": {"targets": ["all"]},
    }
    return json.loads(json.dumps({"epsilon": epsilon, "delta": DELTA, "mia": mia})), mdir


def test_every_audit_number_is_recomputed_from_the_saved_scores(tmp_path):
    cfg = load_profile("smoke")
    entry, mdir = _audited(tmp_path, cfg, epsilon=2.0)
    run, cfg, lines = _bundle(tmp_path, {"fedavg": entry})
    run.test_ok = False  # no dataset here: the labels' fresh draw is the integration test's
    run.check_audit("fedavg", entry, mdir, cfg, 2.0)
    assert not run.report.failed, lines
    seen = _statuses(run)
    assert seen["fedavg mia lira auc"] == OK
    assert seen["fedavg mia loss tpr_at_1pct_fpr [Clopper-Pearson 95%]"] == OK
    assert seen["fedavg audit scores == the attacker's all/scores.npz"] == OK
    assert run.report.identical == run.report.floats > 50


@pytest.mark.parametrize("change", ["auc", "ci", "tpr_ci", "headline", "label", "score"])
def test_a_changed_audit_number_or_file_is_a_mismatch(tmp_path, change):
    cfg = load_profile("smoke")
    entry, mdir = _audited(tmp_path, cfg)
    lira = entry["mia"]["attacks"]["lira"]
    if change == "auc":
        lira["auc"] += 0.001
    elif change == "ci":
        lira["auc_ci95"][0] -= 0.01
    elif change == "tpr_ci":
        lira["tpr"]["tpr_at_10pct_fpr"]["tpr_ci95"][1] = 0.99
    elif change == "headline":
        entry["mia"]["tpr_at_1pct_fpr"] = 0.5
    else:  # the saved file: one label flipped, or one score changed
        path = mdir / "audit" / AUDIT_SCORES
        z = dict(np.load(path))
        key = "is_member" if change == "label" else "score_lira"
        z[key] = z[key].copy()
        z[key][0] = not z[key][0] if change == "label" else z[key][0] + 1.0
        save_npz(path, z)
    run, cfg, lines = _bundle(tmp_path, {"fedavg": entry})
    run.test_ok = False
    run.check_audit("fedavg", entry, mdir, cfg, None)
    bad = [c.what for c in run.report.checks if c.status == MISMATCH]
    expect = {
        "auc": "fedavg mia lira auc",
        "ci": "fedavg mia lira auc_ci95 (bootstrap)",
        "tpr_ci": "fedavg mia lira tpr_at_10pct_fpr [Clopper-Pearson 95%]",
        "headline": "fedavg mia headline (the quoted rung, lira) tpr_at_1pct_fpr",
        "label": "fedavg mia.n_members",
        "score": "fedavg audit scores == the attacker's all/scores.npz",
    }[change]
    assert expect in bad, lines


@pytest.mark.parametrize("change", [None, "auc", "headline", "score"])
def test_the_white_box_audit_is_recomputed_from_its_saved_scores(tmp_path, change):
    from bench.audit import WHITEBOX_SCORES

    cfg = load_profile("smoke")
    entry, mdir = _audited(tmp_path, cfg)
    rng = np.random.default_rng(1)
    member = np.r_[np.ones(20, bool), np.zeros(20, bool)]
    sites = np.array(list("ABCDE") * 8)
    scores = {"wb_gradnorm": rng.normal(size=40) + member, "wb_shadow": rng.normal(size=40)}
    (mdir / "audit-whitebox").mkdir()
    save_audit_scores(mdir / "audit-whitebox" / WHITEBOX_SCORES, scores, member, sites)
    attacks = {
        k: audit_metrics(
            v, member, sites=sites, delta=DELTA, n_boot=cfg.mia.bootstrap, seed=cfg.seed
        )
        for k, v in scores.items()
    }
    top = attacks["wb_gradnorm"]
    wb = {k: top[k] for k in ("auc", "auc_ci95", "tpr_at_1pct_fpr", "tpr_at_10pct_fpr", "tpr")}
    entry["mia"]["whitebox"] = json.loads(
        json.dumps({**wb, "attack": "wb_gradnorm", "attacks": attacks})
    )
    if change == "auc":
        entry["mia"]["whitebox"]["attacks"]["wb_shadow"]["auc"] += 0.001
    elif change == "headline":
        entry["mia"]["whitebox"]["auc"] = 0.99
    elif change == "score":
        path = mdir / "audit-whitebox" / WHITEBOX_SCORES
        z = dict(np.load(path))
        z["score_wb_gradnorm"] = z["score_wb_gradnorm"] + np.r_[1.0, np.zeros(39)]
        save_npz(path, z)
    run, cfg, lines = _bundle(tmp_path, {"fedavg": entry})
    run.test_ok = False
    run.check_audit("fedavg", entry, mdir, cfg, None)
    bad = [c.what for c in run.report.checks if c.status == MISMATCH]
    if change is None:
        assert not run.report.failed, lines
        assert _statuses(run)["fedavg white-box headline (wb_gradnorm)"] == OK
        return
    expect = {
        "auc": "fedavg white-box wb_shadow",
        "headline": "fedavg white-box headline (wb_gradnorm)",
        "score": "fedavg white-box wb_gradnorm",
    }[change]
    assert any(b.startswith(expect) for b in bad), (bad, lines)


def test_tree_diff_compares_floats_within_the_tolerance_and_the_rest_exactly():
    assert tree_diff({"a": [1.0, None, "x"]}, {"a": [1.0 + 1e-12, None, "x"]})[0] == []
    assert tree_diff({"a": 1.0}, {"a": 1.0 + 1e-6})[0] == [(".a", 1.0, 1.0 + 1e-6)]
    assert tree_diff({"n": 3}, {"n": 3.0000001})[0]  # a count is compared as a number, not rounded
    assert tree_diff({"a": True}, {"a": 1})[0]
    assert tree_diff({"a": float("nan")}, {"a": float("nan")})[0] == []
    assert tree_diff({"a": 1}, {"b": 1})[0]


def test_unusable_input_exits_2_with_one_line(tmp_path, capsys):
    def run(path):
        rc = cli.main(["verify", str(path)])
        err = capsys.readouterr().err.strip().splitlines()
        return rc, err

    rc, err = run(tmp_path / "nope")
    assert rc == 2 and len(err) == 1 and "no such directory" in err[0]
    (tmp_path / "file").write_text("x")
    rc, err = run(tmp_path / "file")
    assert rc == 2 and len(err) == 1 and "not a directory" in err[0]
    rc, err = run(tmp_path)
    assert rc == 2 and len(err) == 1 and "results.json: not found: not a run directory" in err[0]
    (tmp_path / "results.json").write_text("{not json")
    rc, err = run(tmp_path)
    assert rc == 2 and len(err) == 1 and "results.json: unreadable" in err[0]
    (tmp_path / "results.json").write_text(json.dumps({"methods": {}}))
    rc, err = run(tmp_path)
    assert rc == 2 and len(err) == 1 and "config.json: not found: not a bench run" in err[0]
    (tmp_path / "config.json").write_text(json.dumps({"train": {"rounds": -1}}))
    rc, err = run(tmp_path)
    assert rc == 2 and len(err) == 1 and "config.json: not a usable config" in err[0]
    (tmp_path / "results.json").write_text(json.dumps({"seeds": [1, 2], "methods": {}}))
    rc, err = run(tmp_path)
    assert rc == 2 and len(err) == 1 and "seed1: not found" in err[0]
    assert "Traceback" not in "".join(err)


def test_an_unreadable_model_file_exits_2_naming_it(tmp_path, capsys):
    cfg = load_profile("smoke")
    (tmp_path / "config.json").write_text(json.dumps(cfg.model_dump(mode="json")))
    entry = {"final_model_sha256": "0" * 64, "initial_model_sha256": "0" * 64}
    (tmp_path / "results.json").write_text(
        json.dumps({"seed": cfg.seed, "methods": {"fedavg": entry}})
    )
    (tmp_path / "fedavg").mkdir()
    (tmp_path / "fedavg" / "final_model.npz").write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(VerifyError, match="final_model.npz: unreadable .npz"):
        verify_run(tmp_path, write=lambda line: None)
    assert cli.main(["verify", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "final_model.npz: unreadable" in err[0]


def test_the_benchmark_thread_count_and_changed_versions_come_from_versions_json(tmp_path):
    import torch

    from bench.verify import bench_threads
    from common.versions import collect_versions

    lines = []
    assert bench_threads(tmp_path, lines.append) == torch.get_num_threads()
    assert lines[-1].startswith("NOTE     no versions.json")
    then = collect_versions()
    assert then["torch_threads"] == torch.get_num_threads()
    then["torch_threads"] = 3
    then["libraries"]["torch"] = "0.0"
    (tmp_path / "versions.json").write_text(json.dumps(then))
    lines.clear()
    assert bench_threads(tmp_path, lines.append) == 3
    assert len(lines) == 1 and "torch 0.0 -> " in lines[0]
    del then["torch_threads"]
    then["libraries"]["torch"] = collect_versions()["libraries"]["torch"]
    (tmp_path / "versions.json").write_text(json.dumps(then))
    lines.clear()
    assert bench_threads(tmp_path, lines.append) == torch.get_num_threads()
    assert len(lines) == 1 and "does not record the benchmark's torch thread count" in lines[0]


def test_a_method_computed_on_a_gpu_is_noted_before_its_cpu_dice(tmp_path):
    from bench.verify import _cuda_devices

    record = {
        "server": {"device": "cuda:0", "gpu": "H200"},
        "sites": {"A": {"device": "cuda:1"}, "B": {"device": "cpu"}},
    }
    assert sorted(_cuda_devices(record)) == ["cuda:0", "cuda:1"]
    assert list(_cuda_devices({"server": {"device": "cpu"}, "sites": {}})) == []
    assert list(_cuda_devices(None)) == []
