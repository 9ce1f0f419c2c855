"""`fedonco bench --device cpu` (smoke): the same model as without the flag, and what it records."""

import json
import subprocess

import pytest

from bench.fleet import fedonco

# heavy: ~95 s (two smoke benchmarks) on a 2-core AVX2 machine; `make test` stays under 15 min there
pytestmark = [pytest.mark.slow, pytest.mark.heavy]


def test_device_cpu_gives_the_same_model_and_records_the_cpu(local_two_seeds, tmp_path):
    cfg, path, reference = local_two_seeds  # the session's run without --device (conftest.py)
    done = subprocess.run(
        fedonco("bench", "--config", str(path), "--device", "cpu", "--out", str(tmp_path / "runs")),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (run_dir,) = (tmp_path / "runs").iterdir()
    ours = json.loads((run_dir / "results.json").read_text())["methods"]["fedavg"]
    before = json.loads((reference / f"seed{cfg.seed}" / "results.json").read_text())
    assert ours["final_model_sha256"] == before["methods"]["fedavg"]["final_model_sha256"]
    # where it ran: every process on the CPU, and no GPU name anywhere
    assert ours["device"]["server"] == {"device": "cpu"}
    assert ours["device"]["sites"] and set(ours["device"]["sites"]) <= set("ABCDE")
    assert all(d == {"device": "cpu"} for d in ours["device"]["sites"].values())
    versions = json.loads((run_dir / "versions.json").read_text())
    assert versions["device"] == "cpu" and "gpu" not in versions
    assert json.loads((run_dir / "config.json").read_text())["train"]["device"] == "cpu"
