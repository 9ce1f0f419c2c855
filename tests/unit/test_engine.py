"""The engines' plumbing without a cluster (bench/engine.py; the Ray engine itself runs in
tests/integration/test_ray_engine.py): cells and their names, the tar of a method directory, the
choice of engine, a cell no node can hold, failed cells in the report."""

import io
import json
import tarfile

import pytest

from bench.engine import Cell, LocalEngine, RayEngine, make_engine, pack_dir, unpack_dir
from bench.report import note_failed_cells
from bench.run import plan_cells
from common.config import load_config, load_profile


def test_cells_of_a_sweep_follow_the_serial_run(tmp_path):
    cfg = load_profile("standard")
    dirs = {cfg.seed: tmp_path / "a", cfg.seed + 1: tmp_path / "b"}
    cells = plan_cells(cfg, dirs, ("target_epsilon", [1.0, 2.0], "dpsgd-pt"), cpus=3)
    assert [(c.seed, c.name) for c in cells] == [
        (s, n)
        for s in dirs
        for n in ("groupnorm-pt", "dpsgd-pt-target_epsilon-1", "dpsgd-pt-target_epsilon-2")
    ]
    twin, eps1 = cells[0], cells[1]
    assert (twin.config_file, twin.run_subdir, twin.cpus) == ("config.json", "", 3)
    assert (eps1.config_file, eps1.run_subdir) == (
        "config-dpsgd-pt-target_epsilon-1.json",
        "dpsgd-pt-target_epsilon-1",
    )
    # what a cell carries is the file its processes read, seed included
    assert eps1.config == (dirs[cfg.seed] / eps1.config_file).read_text()
    c = load_config(dirs[cfg.seed + 1] / cells[4].config_file)
    assert c.seed == cfg.seed + 1 and c.for_method("dpsgd-pt").dp.target_epsilon == 1.0
    assert (dirs[cfg.seed] / "versions.json").is_file()


def test_a_method_directory_crosses_as_a_tar_without_checkpoints(tmp_path):
    src = tmp_path / "fedavg"
    for rel in ("result.json", "logs/server.log", "release/model.npz", "checkpoints/r.npz"):
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_text(rel)
    unpack_dir(pack_dir(src), tmp_path / "out")
    got = sorted(
        str(p.relative_to(tmp_path / "out")) for p in (tmp_path / "out").rglob("*") if p.is_file()
    )
    assert got == ["logs/server.log", "release/model.npz", "result.json"]
    assert (tmp_path / "out" / "logs" / "server.log").read_text() == "logs/server.log"


def test_a_tar_member_outside_the_directory_is_refused(tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo("../escape.txt")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    with pytest.raises((tarfile.TarError, ValueError)):
        unpack_dir(buf.getvalue(), tmp_path / "out")
    assert not (tmp_path / "escape.txt").exists()


def test_the_engine_options(monkeypatch):
    from bench.cli import _typed, build_parser
    from bench.options import BenchOptions

    def args(*argv):
        return _typed(BenchOptions, build_parser().parse_args(["bench", *argv]))

    assert isinstance(make_engine(args()), LocalEngine)
    with pytest.raises(ValueError, match="--ray-address, --cell-cpus: only with --engine ray"):
        make_engine(args("--ray-address", "h:1", "--cell-cpus", "2"))
    pytest.importorskip("ray")
    monkeypatch.setenv("RAY_ADDRESS", "head:6379")
    assert make_engine(args("--engine", "ray")).address == "head:6379"
    assert make_engine(args("--engine", "ray", "--ray-address", "x:1")).address == "x:1"


def test_without_ray_the_error_names_the_extra(monkeypatch, capsys, tmp_path):
    import sys

    from bench.cli import main

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    assert main(["bench", "--engine", "ray", "--out", str(tmp_path / "runs")]) == 2
    assert "--engine ray needs Ray: pip install -e '.[ray]'" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()  # before the run directory


class FakeRay:
    def __init__(self, cpus):
        self.cpus = cpus

    def nodes(self):
        return [{"Alive": True, "Resources": {"CPU": c}} for c in self.cpus] + [
            {"Alive": False, "Resources": {"CPU": 1000}}
        ]


def test_a_cell_no_node_can_hold(caplog):
    RayEngine._check_fits(FakeRay([2, 8]), 6, 0, local=True)  # the larger node holds it
    with pytest.raises(ValueError, match="a cell reserves 6 CPUs but the largest node has 2"):
        RayEngine._check_fits(FakeRay([2]), 6, 0, local=True)  # a local Ray will not grow
    RayEngine._check_fits(FakeRay([2]), 6, 0, local=False)  # a cluster may: a warning
    assert "wait until such a node joins" in caplog.text
    with pytest.raises(ValueError, match="1 GPUs .* has 0"):
        RayEngine._check_fits(FakeRay([8]), 1, 1, local=True)


def test_the_local_engine_stops_at_an_error():
    def fn(cell):
        raise RuntimeError(cell.name)

    with pytest.raises(RuntimeError, match="fedavg"):
        list(LocalEngine().run([Cell(7, "fedavg", "{}"), Cell(7, "fedbn", "{}")], fn))


def test_failed_cells_join_the_report(tmp_path):
    row = {
        "seed": 8,
        "cell": "fedbn",
        "method": "fedbn",
        "sweep": None,
        "attempts": 2,
        "error": "RuntimeError: a | b\nmore",
        "errors": ["x", "RuntimeError: a | b\nmore"],
    }
    (tmp_path / "results.json").write_text(json.dumps({"methods": {"fedavg": {}}}))
    (tmp_path / "results.md").write_text("# results\n\n| table |\n")
    note_failed_cells(tmp_path, [row])
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["methods"] == {"fedavg": {}} and res["failed_cells"] == [row]
    md = (tmp_path / "results.md").read_text()
    assert md.startswith("# results") and "| 8 | fedbn | 2 | RuntimeError: a \\| b |" in md
    empty = tmp_path / "none"
    empty.mkdir()
    note_failed_cells(empty, [row], profile="smoke", seed=8)  # nothing succeeded
    assert json.loads((empty / "results.json").read_text()) == {
        "profile": "smoke",
        "seed": 8,
        "methods": {},
        "failed_cells": [row],
    }
