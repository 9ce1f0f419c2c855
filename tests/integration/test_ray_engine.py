"""`fedonco bench --engine ray` on a real local Ray cluster (2 CPUs): the cells give the local
engine's models bit for bit; a failing cell is retried once, then reported, and the others are
kept; Ctrl-C cancels a running cell, whose server and sites stop."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from conftest import wait_until

from bench.engine import pack_dir
from bench.fleet import fedonco, free_port
from common.config import with_overrides

pytestmark = [pytest.mark.slow, pytest.mark.heavy]
pytest.importorskip("ray", reason="the Ray engine's extra: pip install -e '.[ray]'")

RAY = str(Path(sys.executable).with_name("ray"))


@pytest.fixture(scope="module")
def ray_address():
    """A one-node Ray cluster (`ray start --head --block`, 2 CPUs) for this module; stopped by
    terminating that process (its own children go with it; nothing else on the machine is
    touched, unlike `ray stop`). Started as a shell script's `ray start ... &` is, with SIGINT
    ignored (its workers inherit that; the engine must undo it for Ctrl-C to reach a cell), and
    without the tests' OMP_NUM_THREADS (Ray then sets a task's to its CPUs; a cell must run with
    the driver's threads)."""
    tmp = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))  # short: Ray's socket paths must fit
    port, client, agent, metrics = (free_port() for _ in range(4))
    log = tmp / "head.log"
    # no token authentication, whatever ~/.ray holds (a token there turns it on for `ray start`
    # but not for a driver given an address); the drivers of these tests inherit the setting
    mp = pytest.MonkeyPatch()
    mp.setenv("RAY_AUTH_MODE", "disabled")
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    with open(log, "w") as out:
        head = subprocess.Popen(
            [
                RAY,
                "start",
                "--head",
                "--block",
                "--num-cpus",
                "2",
                "--port",
                str(port),
                "--node-ip-address",
                "127.0.0.1",
                "--ray-client-server-port",
                str(client),
                "--dashboard-agent-listen-port",
                str(agent),
                "--metrics-export-port",
                str(metrics),
                "--include-dashboard=false",
                "--disable-usage-stats",
                "--object-store-memory",
                str(200 * 2**20),
                "--temp-dir",
                str(tmp),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
        )
    try:
        wait_until(
            lambda: "block forever" in log.read_text() or head.poll() is not None,
            90,
            "the Ray head to start",
            interval=0.2,
        )
        assert head.poll() is None, log.read_text()[-3000:]
        yield f"127.0.0.1:{port}"
    finally:
        head.terminate()
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            head.kill()
            head.wait()
        shutil.rmtree(tmp, ignore_errors=True)
        mp.undo()


def _hashes(run_dir: Path, seeds) -> dict[int, str]:
    return {
        s: json.loads((run_dir / f"seed{s}" / "results.json").read_text())["methods"]["fedavg"][
            "final_model_sha256"
        ]
        for s in seeds
    }


@pytest.mark.timeout(600)  # with the session's local run and the cluster's start: ~1.5 min alone
def test_ray_cells_give_the_local_engines_models(ray_address, local_two_seeds, tmp_path):
    cfg, config, local = local_two_seeds
    seeds = [cfg.seed, cfg.seed + 1]
    t0 = time.perf_counter()
    done = subprocess.run(
        fedonco(
            "bench",
            "--config",
            str(config),
            "--seeds",
            "2",
            "--out",
            str(tmp_path),
            "--engine",
            "ray",
            "--ray-address",
            ray_address,
            "--cell-cpus",
            "2",
        ),
        capture_output=True,
        text=True,
        timeout=600,
    )
    wall = time.perf_counter() - t0
    assert done.returncode == 0, done.stderr[-3000:]
    (run_dir,) = tmp_path.iterdir()
    print(f"ray engine, 2 cells: {wall:.1f}s; hashes {_hashes(run_dir, seeds)}")
    assert _hashes(run_dir, seeds) == _hashes(local, seeds)
    assert json.loads((run_dir / "results.json").read_text())["seeds"] == seeds
    # the local run's files, but the dataset (regenerated on the node; its manifest is kept) and
    # the checkpoints (the final model is there) -- the report, plots, logs, releases
    want = {
        p.relative_to(local)
        for p in local.rglob("*")
        if p.is_file() and not {"data", "checkpoints"} & set(p.relative_to(local).parts)
    }
    got = {p.relative_to(run_dir) for p in run_dir.rglob("*") if p.is_file()}
    assert want <= got, sorted(want - got)
    for s in seeds:
        assert (run_dir / f"seed{s}" / "fedavg" / "logs" / "cell.log").is_file()
        manifest = json.loads((run_dir / f"seed{s}" / "data-manifest.json").read_text())
        assert manifest == json.loads((local / f"seed{s}" / "data" / "manifest.json").read_text())


def test_a_failing_cell_is_retried_once_then_reported(ray_address, local_two_seeds, tmp_path):
    """A cell function that crashes its worker, then raises, for the second seed; the first
    seed's cell returns the local run's files (no federation: the engine and the report are what
    is tested) and notes the thread settings it ran with. The command's exit status is 1 and what
    succeeded is reported."""
    from bench.cli import _typed, build_parser
    from bench.engine import driver_threads
    from bench.options import BenchOptions
    from bench.run import run_bench

    cfg, config, local = local_two_seeds
    attempts = tmp_path / "attempts"
    attempts.mkdir()

    def cell_fn(cell):  # runs in a Ray worker (pickled by value: a closure)
        with open(attempts / f"seed{cell.seed}", "a") as f:
            f.write("x")
        n = len((attempts / f"seed{cell.seed}").read_text())
        if cell.seed != cfg.seed:
            if n == 1:
                os._exit(3)  # the worker dies: Ray's error, not the cell's
            raise RuntimeError(f"boom in seed {cell.seed}")
        import torch

        (attempts / "threads").write_text(
            json.dumps([torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")])
        )
        mdir = local / f"seed{cell.seed}" / cell.method
        return {
            "result": json.loads((mdir / "result.json").read_text()),
            "manifest": json.loads(
                (local / f"seed{cell.seed}" / "data" / "manifest.json").read_text()
            ),
            "files": pack_dir(mdir),
            "wall_s": 0.1,
        }

    args = build_parser().parse_args(
        [
            "bench",
            "--config",
            str(config),
            "--seeds",
            "2",
            "--out",
            str(tmp_path / "runs"),
            "--engine",
            "ray",
            "--ray-address",
            ray_address,
            "--cell-cpus",
            "2",
        ]
    )
    assert run_bench(_typed(BenchOptions, args), cell_fn=cell_fn) == 1
    threads = json.loads((attempts / "threads").read_text())
    assert tuple(threads) == driver_threads()  # not Ray's OMP_NUM_THREADS=2 for a 2-CPU task
    assert {p.name: len(p.read_text()) for p in attempts.glob("seed*")} == {
        f"seed{cfg.seed}": 1,
        f"seed{cfg.seed + 1}": 2,
    }
    (run_dir,) = (tmp_path / "runs").iterdir()
    (row,) = json.loads((run_dir / "results.json").read_text())["failed_cells"]
    assert (row["seed"], row["cell"], row["attempts"]) == (cfg.seed + 1, "fedavg", 2)
    assert row["error"] == f"RuntimeError: boom in seed {cfg.seed + 1}"
    assert len(row["errors"]) == 2 and "boom" not in row["errors"][0]  # the crash came first
    assert "Failed cells" in (run_dir / "results.md").read_text()
    good = json.loads((run_dir / f"seed{cfg.seed}" / "results.json").read_text())
    assert good["methods"]["fedavg"]["final_model_sha256"] == _hashes(local, [cfg.seed])[cfg.seed]
    bad = json.loads((run_dir / f"seed{cfg.seed + 1}" / "results.json").read_text())
    assert bad["methods"] == {} and bad["failed_cells"] == [row]


def _cell_processes() -> dict[int, str]:
    """pid -> command line of every server or site process that a Ray cell started."""
    out = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if (
                "bench.cli" in cmd
                and "fedonco-cell-" in cmd
                and (" server " in cmd or " client " in cmd)
            ):
                out[int(d.name)] = cmd
    return out


def test_ctrl_c_cancels_a_running_cell_and_stops_its_processes(
    ray_address, local_two_seeds, tmp_path
):
    """A cell of 1,000 rounds (it would run for an hour): Ctrl-C on the driver interrupts it, its
    server and sites stop, and the driver exits 130 long before Ray's cancel would be forced."""
    cfg, _config, _local = local_two_seeds
    config = tmp_path / "long.json"
    config.write_text(
        json.dumps(with_overrides(cfg, **{"train.rounds": 1000}).model_dump(mode="json"))
    )
    driver = subprocess.Popen(
        fedonco(
            "bench",
            "--config",
            str(config),
            "--out",
            str(tmp_path / "runs"),
            "--engine",
            "ray",
            "--ray-address",
            ray_address,
            "--cell-cpus",
            "2",
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        seen: dict[int, str] = {}

        def running() -> bool:  # the cell runs once its server and five sites do
            seen.update(_cell_processes())
            return len(seen) >= 6 or driver.poll() is not None

        wait_until(running, 120, "the cell's server and sites", interval=0.2)
        assert driver.poll() is None, driver.communicate()[1][-3000:]
        t0 = time.monotonic()
        driver.send_signal(signal.SIGINT)
        out, err = driver.communicate(timeout=120)
        stopped = time.monotonic() - t0
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 130, err[-3000:]
    assert "cancelling 1 cell" in out and "Interrupted" in err
    assert stopped < 40, f"{stopped:.0f}s: the cell was not interrupted (forced after 60s)"
    wait_until(lambda: not set(seen) & set(_cell_processes()), 30, "the cell's processes to stop")
    work = {
        m.group(1) for c in seen.values() for m in [re.search(r"(/\S*/fedonco-cell-[^/\s]+)", c)]
    }
    assert work and not [d for d in work if Path(d).exists()]  # its temporary directory is gone
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert not (run_dir / "results.json").exists() and not (run_dir / "fedavg").exists()
