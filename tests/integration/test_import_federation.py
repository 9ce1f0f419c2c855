"""A federation trains from an imported dataset (issue 28): real-CT fixtures written from the
phantom (tests/realct.py) go through `fedonco data import`, then `fedonco bench --data` runs a
real server and five site processes over 127.0.0.1 on it; each site trains on exactly its
imported training slices, whose cases (patients) are in no other split."""

import json

import pytest
from realct import CFG, bench_on, phantom_case, write_layout

from common.config import DEFAULT_SITE_NAMES, with_overrides
from common.data.real.importer import import_dataset
from common.data.store import read_manifest

# heavy: ~30 s on a 2-core AVX2 machine; `make test` stays under 15 min there
pytestmark = [pytest.mark.slow, pytest.mark.heavy]
CASES_PER_SITE, N_Z, ROUNDS = 4, 6, 2


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    root = tmp_path_factory.mktemp("import-fed")
    cases = [phantom_case(k, n_z=N_Z, no_tumour=None) for k in range(5 * CASES_PER_SITE)]
    src = write_layout(root, "lits", cases)
    import_dataset(src, root / "data", CFG, gallery=False)
    return root, read_manifest(root / "data")


def test_bench_trains_each_site_on_its_imported_patients(imported):
    root, m = imported
    train = {
        s: [r for e in m["shards"] if (e["split"], e["site"]) == ("train", s) for r in e["samples"]]
        for s in DEFAULT_SITE_NAMES
    }
    # the splits are by patient, and every split the run reads is there
    for site in DEFAULT_SITE_NAMES:
        per = m["cases"][site]
        assert all(per[split] for split in ("train", "holdout", "test")), (site, per)
        ids = [c for split in per.values() for c in split]
        assert len(ids) == len(set(ids)) == CASES_PER_SITE
        assert {r["case"] for r in train[site]} == set(per["train"])
    cfg = with_overrides(
        CFG, **{"train.rounds": ROUNDS, "fl.methods": ["fedavg"], "mia.enabled": False}
    )
    run_dir = bench_on(root, cfg, timeout=300)
    assert (run_dir / "data").resolve() == (root / "data").resolve()  # linked, not copied
    results = json.loads((run_dir / "results.json").read_text())
    assert results["data_generator"] == "import" and results["data_summary"] == m["summary"]
    assert results["methods"]["fedavg"]["rounds"] == ROUNDS
    history = json.loads((run_dir / "fedavg" / "history.json").read_text())
    assert [r["round"] for r in history] == list(range(1, ROUNDS + 1))
    for r in history:
        assert r["failures"] == {}
        fit = r["fit"]["sites"]
        assert {s: int(fit[s]["num_examples"]) for s in fit} == {
            s: len(train[s]) for s in DEFAULT_SITE_NAMES
        }
        assert set(r["eval"]["per_site"]) == set(DEFAULT_SITE_NAMES)
    fedavg = results["methods"]["fedavg"]
    assert fedavg["final_model_sha256"] != fedavg["initial_model_sha256"]
    assert "imported CT" in (run_dir / "results.md").read_text().splitlines()[0]
