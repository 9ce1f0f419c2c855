"""docs/results.md's issue-25 tables are `python -m bench.results_doc`'s output on the committed
results files (docs/data/standard-issue25/seed*.json), not typed numbers."""

from pathlib import Path

from bench.results_doc import load_seeds, results_doc

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "docs" / "data" / "standard-issue25"


def test_docs_results_md_holds_the_generated_tables():
    text = results_doc(DATA)
    doc = (ROOT / "docs" / "results.md").read_text()
    missing = [line for line in text.splitlines() if line and line not in doc]
    assert not missing, missing[:5]


def test_the_committed_runs_carry_the_issue_25_records():
    seeds = load_seeds(DATA)
    assert sorted(seeds) == [42, 43, 44]
    for res in seeds.values():
        fedavg = res["methods"]["fedavg"]["mia"]
        assert fedavg["selected_on"].startswith("shadow AUC")  # chosen on shadow data
        assert all(p["tpr_ci95"][0] <= p["tpr"] <= p["tpr_ci95"][1]
                   for p in fedavg["tpr"].values() if p)  # fmt: skip
        dp = res["methods"]["dpsgd-pt"]["dp"]
        assert dp["adjacency"] == "replace-one" and dp["randomness"] == "seeded-simulation"
        assert set(dp["epsilon_by_adjacency"]) == {"replace-one", "add-remove"}
