"""`fedonco report docs`: the numbers of README.md and docs/results.md and the README's picture
are the command's output on the committed runs (docs/runs/), not typed; runs of one seed merge,
a sweep run gives the frontier."""

import json
import re
import shutil
from pathlib import Path

import pytest

from bench import cli
from bench.results_doc import BLOCK, load_run, merge, render

ROOT = Path(__file__).resolve().parents[2]
RUNS = ROOT / "docs" / "runs" / "standard"
FIXTURES = Path(__file__).parent / "data" / "report_docs"


def committed_rundirs() -> list[str]:
    """The run directories the README's markers name (what the last `fedonco report docs` read)."""
    dirs = {m.group("dirs") for m in BLOCK.finditer((ROOT / "README.md").read_text())}
    assert len(dirs) == 1, dirs
    return dirs.pop().split()


def test_the_committed_docs_are_what_the_command_writes(capsys):
    dirs = committed_rundirs()
    assert "docs/runs/standard" in dirs
    code = cli.main(
        ["report", "docs", *[str(ROOT / d) for d in dirs], "--check", "--root", str(ROOT)]
    )
    assert code == 0, capsys.readouterr().out


def _copy_docs(tmp_path: Path) -> Path:
    for rel in ("README.md", "docs/results.md", "docs/img/dice_vs_auc.png"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / rel, tmp_path / rel)
    return tmp_path


def test_a_number_edited_by_hand_fails_the_check_and_the_command_restores_it(tmp_path, capsys):
    root = _copy_docs(tmp_path)
    dirs = [str(ROOT / d) for d in committed_rundirs()]
    results = root / "docs" / "results.md"
    original = results.read_text()
    cell = re.search(r"\| fedavg \| \d+ \| (0\.\d{3}) ±", original)
    assert cell, "the summary table has a fedavg Dice"
    edited = original[: cell.start(1)] + "0.999" + original[cell.end(1) :]
    results.write_text(edited)
    assert cli.main(["report", "docs", *dirs, "--check", "--root", str(root)]) == 1
    assert "docs/results.md differs" in capsys.readouterr().out
    assert results.read_text() == edited  # --check writes nothing
    assert cli.main(["report", "docs", *dirs, "--root", str(root)]) == 0
    assert results.read_text() == original
    assert cli.main(["report", "docs", *dirs, "--check", "--root", str(root)]) == 0


def test_the_picture_is_the_same_bytes_every_time_and_carries_no_metadata(tmp_path):
    a = render([RUNS], ROOT)[ROOT / "docs/img/dice_vs_auc.png"]
    b = render([RUNS], ROOT)[ROOT / "docs/img/dice_vs_auc.png"]
    assert a == b and a[:8] == b"\x89PNG\r\n\x1a\n"
    assert b"tEXt" not in a and b"matplotlib" not in a.lower()


def test_the_committed_runs_carry_the_issue_25_records():
    run = load_run(RUNS)
    assert {42, 43, 44} <= set(run.results) and not run.sweep
    for res in run.results.values():
        fedavg = res["methods"]["fedavg"]["mia"]
        assert fedavg["selected_on"].startswith("shadow AUC")  # chosen on shadow data
        assert all(
            p["tpr_ci95"][0] <= p["tpr"] <= p["tpr_ci95"][1] for p in fedavg["tpr"].values() if p
        )
        dp = res["methods"]["dpsgd-pt"]["dp"]
        assert dp["adjacency"] == "replace-one" and dp["randomness"] == "seeded-simulation"
        assert set(dp["epsilon_by_adjacency"]) == {"replace-one", "add-remove"}
        assert (RUNS / f"seed{res['seed']}" / "results.md").is_file()


def _one_seed_run(tmp_path: Path, name: str, seed: int, methods: dict, wall_s: float) -> Path:
    d = tmp_path / name
    d.mkdir()
    res = {"profile": "smoke", "seed": seed, "wall_s": wall_s, "methods": methods}
    (d / "results.json").write_text(json.dumps(res))
    return d


def _entry(dice: float, auc: float) -> dict:
    return {
        "dice": dice,
        "epsilon": None,
        "mia": {"auc": auc, "auc_ci95": [auc - 0.05, auc + 0.05]},
    }


def test_runs_of_one_seed_merge_and_a_method_given_twice_differently_is_refused(tmp_path):
    a = _one_seed_run(tmp_path, "a", 7, {"fedavg": _entry(0.5, 0.7)}, 60.0)
    b = _one_seed_run(
        tmp_path, "b", 7, {"fedbn": _entry(0.4, 0.6), "fedavg": _entry(0.5, 0.7)}, 120.0
    )
    seeds = merge([load_run(a), load_run(b)])
    assert list(seeds) == [7] and list(seeds[7].methods) == ["fedavg", "fedbn"]
    # the time of what `make bench` runs is the time of the file holding the profile's methods,
    # never a sum with a run of extra methods
    assert seeds[7].walls == {a / "results.json": 60.0, b / "results.json": 120.0}
    assert seeds[7].bench_wall(["fedavg"]) == (a / "results.json", 60.0)
    assert seeds[7].bench_wall(["fedavg", "fedbn"]) == (b / "results.json", 120.0)
    assert seeds[7].bench_wall(["fedavg", "dpsgd"]) == (None, None)
    assert seeds[7].source["fedbn"] == b / "results.json"
    c = _one_seed_run(tmp_path, "c", 7, {"fedavg": _entry(0.6, 0.7)}, 60.0)
    with pytest.raises(ValueError) as err:
        merge([load_run(a), load_run(c)])
    assert str(a / "results.json") in str(err.value) and str(c / "results.json") in str(err.value)


def test_a_run_of_more_methods_than_the_profile_runs_today_is_not_judged_as_make_bench(
    tmp_path, monkeypatch
):
    """The profile's fl.methods shrank (configs/standard.toml: four rows since the committed
    six-row runs): the time of a committed run that also holds the dropped rows is shown with
    them named, and the time goal is "not measured", never a FAIL of today's `make bench`."""
    from bench import results_doc

    def entry(dice, auc):
        return {**_entry(dice, auc), "dice_per_site": [dice] * 2, "dice_site_mean": dice}

    run = _one_seed_run(
        tmp_path, "a", 7, {"fedavg": entry(0.5, 0.7), "fedbn": entry(0.4, 0.6)}, 1800.0
    )
    seeds = merge([load_run(run)])
    assert seeds[7].beyond(run / "results.json", ["fedavg"]) == ["fedbn"]
    assert seeds[7].beyond(run / "results.json", ["fedavg", "fedbn"]) == []
    monkeypatch.setattr(results_doc, "_profile_methods", lambda profile: ["fedavg"])
    text = results_doc.verdicts(seeds)
    assert "which also ran fedbn, not in the profile's methods today" in text
    goal = next(line for line in text.splitlines() if "all methods and audits" in line)
    assert goal.startswith("- goal: n/a") and "not measured" in goal, goal
    line = next(x for x in results_doc.readme_time(seeds).splitlines() if "seed 7" in x)
    assert "30.0 min" in line and "(fedbn no longer in the profile's methods" in line
    monkeypatch.setattr(results_doc, "_profile_methods", lambda profile: ["fedavg", "fedbn"])
    goal = next(x for x in results_doc.verdicts(seeds).splitlines() if "all methods and" in x)
    assert goal.startswith("- goal: FAIL") and goal.endswith("30.0 min"), goal


def _sweep_copy(tmp_path: Path) -> Path:
    return Path(shutil.copytree(FIXTURES / "sweep", tmp_path / "sweep"))


def test_a_sweep_run_gives_the_frontier_table_from_its_seeds(tmp_path):
    from bench.results_doc import blocks

    sweep = load_run(_sweep_copy(tmp_path))
    assert sweep.sweep and sorted(sweep.results) == [7, 8]
    other = load_run(_one_seed_run(tmp_path, "std", 7, {"fedavg": _entry(0.5, 0.7)}, 60.0))
    made = blocks([other, sweep])
    assert "groupnorm" not in made["summary"]  # the sweep's twin stays in the frontier
    rows = [r for r in made["frontier"].splitlines() if r.startswith("| ") and "seeds" not in r]
    assert [r.split(" | ")[0] for r in rows] == [
        "| groupnorm (no DP)",
        "| dpsgd, target_epsilon = 2",
        "| dpsgd, target_epsilon = 8",
    ]
    # the ε column is each value's mean over the two seeds, from the seed files themselves
    eps = [sweep.results[s]["methods"]["dpsgd-target_epsilon-2"]["epsilon"] for s in (7, 8)]
    assert f"{sum(eps) / 2:.2f} ± " in rows[1] and rows[1].split(" | ")[1] == "2"


def test_a_summary_that_disagrees_with_its_seed_files_is_refused(tmp_path):
    d = _sweep_copy(tmp_path)
    summary = json.loads((d / "results.json").read_text())
    first = next(iter(summary["methods"].values()))
    first["dice"]["mean"] += 0.1
    (d / "results.json").write_text(json.dumps(summary))
    with pytest.raises(ValueError, match="do not match"):
        load_run(d)


def test_a_missing_block_is_named(tmp_path):
    root = _copy_docs(tmp_path)
    readme = root / "README.md"
    readme.write_text(
        re.sub(
            r"<!-- generated by: [^\n]*block: readme-time -->\n.*?<!-- end generated -->",
            "",
            readme.read_text(),
            flags=re.S,
        )
    )
    with pytest.raises(ValueError, match="readme-time"):
        render([RUNS], root)


def test_runs_of_two_profiles_are_not_averaged_together(tmp_path):
    from bench.results_doc import blocks

    smoke = load_run(_one_seed_run(tmp_path, "smoke", 7, {"fedavg": _entry(0.5, 0.7)}, 60.0))
    with pytest.raises(ValueError, match="mix profiles"):
        blocks([smoke, load_run(RUNS)])


def test_the_readme_make_line_comes_from_the_timing_file(tmp_path):
    import json

    from bench.results_doc import readme_make

    assert "not measured yet" in readme_make(tmp_path / "absent.json")
    f = tmp_path / "make-test.json"
    f.write_text(
        json.dumps(
            {
                "target": "test",
                "commit": "0123456789abcdef",
                "rc_venv": 0,
                "venv_s": 165.0,
                "rc": 0,
                "target_s": 390.0,
                "clone_bytes": 1.9e9,
                "venv_bytes": 1.8e9,
                "cpu": "Xeon",
                "cores": 2,
                "date": "2026-12-03",
                "command": "python bench/perf/time_make.py test --out x",
            }
        )
    )
    line = readme_make(f)
    assert "`make venv` 2.8 min (less when" in line
    assert "then `make test` 6.5 min (goal <= 15 min: PASS), passed" in line
    f.write_text(f.read_text().replace('"target_s": 390.0', '"target_s": 934.5'))
    assert "then `make test` 15.6 min (goal <= 15 min: FAIL), passed" in readme_make(f)
    f.write_text(f.read_text().replace('"target_s": 934.5', '"target_s": 390.0'))
    assert "1.9 GB on disk (1.8 GB of it .venv)" in line and "commit 0123456789" in line


@pytest.mark.parametrize(
    "target_s, rc, verdict",
    [
        (1700.0, 0, "exit 0 (goal <= 30 min: PASS)"),
        (1900.0, 0, "exit 0 (goal <= 30 min: FAIL)"),
        (600.0, 2, "FAILED (exit 2) (goal <= 30 min: FAIL)"),
    ],
)
def test_the_readme_threats_line_judges_the_timing_file_against_30_minutes(
    tmp_path, target_s, rc, verdict
):
    import json

    from bench.results_doc import readme_threats

    assert "not measured yet" in readme_threats(tmp_path / "absent.json")
    f = tmp_path / "make-threats.json"
    record = {"target": "threats", "commit": "0123456789abcdef", "rc_venv": 0, "venv_s": 80.0}
    record |= {"rc": rc, "target_s": target_s, "cpu": "EPYC", "cores": 2, "date": "2026-12-06"}
    f.write_text(json.dumps(record | {"command": "python bench/perf/time_make.py threats"}))
    line = readme_threats(f)
    assert f"{target_s / 60:.1f} min after `make venv`, {verdict}" in line
    assert "2 cores, EPYC, commit" in line  # a file of before the capability was recorded
    f.write_text(json.dumps(record | {"torch_cpu": "AVX512", "command": "x"}))
    assert "2 cores, EPYC (AVX512), commit" in readme_threats(f)


def test_the_committed_frontier_sweeps_the_dp_recipe_over_three_seeds():
    """Issue 25: the privacy frontier (`dpsgd-pt` at replace-one ε 1, 2, 4, 8 and its non-DP
    twin) rerun on the current accounting, one `fedonco bench --sweep ...` per seed."""
    run = load_run(ROOT / "docs" / "runs" / "frontier")
    assert run.sweep and {42, 43, 44} <= set(run.results)
    for res in run.results.values():
        swept = {e["sweep"]["target_epsilon"]: e for e in res["methods"].values() if e.get("sweep")}
        assert sorted(swept) == [1.0, 2.0, 4.0, 8.0] and "groupnorm-pt" in res["methods"]
        for eps, e in swept.items():
            assert e["dp"]["adjacency"] == "replace-one" and e["dp"]["epsilon"] <= eps + 1e-6


def test_the_committed_runs_carry_fedprox_and_fedadam_next_to_fedavg():
    """Issue 27: FedProx and FedAdam on the standard profile, three seeds, merged per seed with
    the standard run (docs/runs/standard-fl, read by the same `fedonco report docs`)."""
    assert "docs/runs/standard-fl" in committed_rundirs()
    fl = load_run(ROOT / "docs" / "runs" / "standard-fl")
    assert set(fl.results) == {42, 43, 44} and not fl.sweep
    for seed, res in fl.results.items():
        assert set(res["methods"]) == {"fedprox", "fedadam"}, seed
        assert res["methods"]["fedadam"]["mia"]["selected_on"].startswith("shadow AUC")
    merged = merge([load_run(RUNS), fl])
    assert all({"fedavg", "fedprox", "fedadam"} <= set(m.methods) for m in merged.values())


def test_the_committed_runs_carry_scaffold_next_to_fedavg():
    """Issue 27: SCAFFOLD on the standard profile, three seeds (docs/runs/standard-scaffold:
    `fedonco bench --config configs/standard.toml --methods scaffold --seed N`), merged per seed
    with the standard run and audited like every method."""
    assert "docs/runs/standard-scaffold" in committed_rundirs()
    run = load_run(ROOT / "docs" / "runs" / "standard-scaffold")
    assert set(run.results) == {42, 43, 44} and not run.sweep
    for seed, res in run.results.items():
        assert set(res["methods"]) == {"scaffold"}, seed
        entry = res["methods"]["scaffold"]
        assert entry["mia"]["selected_on"].startswith("shadow AUC") and entry["rounds"] == 10
    merged = merge([load_run(RUNS), run])
    assert all({"fedavg", "scaffold"} <= set(m.methods) for m in merged.values())
