import os

# Keep tests single-threaded and quiet; never reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")


import pytest  # noqa: E402

from common.device import keep_freed_memory  # noqa: E402

keep_freed_memory()  # as every `fedonco` process does (FEDONCO_ALLOCATOR; speed only)


@pytest.fixture(scope="session")
def smoke_data(tmp_path_factory):
    """The smoke profile's dataset, built once per test session (every integration module reads
    it; a dataset depends only on the data settings and the seed, not on rounds or timeouts)."""
    from common.config import load_profile
    from common.data.build import build_dataset

    out = tmp_path_factory.mktemp("smoke") / "data"
    build_dataset(load_profile("smoke"), out, workers=1, gallery=False)
    return out


# The seed offset of the statistical tests (a threshold on an AUC or a Dice of a trained model):
# `python bench/perf/margins.py` reruns them with offsets 0-4, natively, under
# ATEN_CPU_CAPABILITY=avx2 and with one torch thread, and reports each check's smallest margin.
SEED = int(os.environ.get("FEDONCO_TEST_SEED", "0"))


@pytest.fixture()
def margin(record_property):
    """``margin(name, value, threshold, above=True)``: assert ``value > threshold`` (or ``<``)
    and record both (pytest --junitxml properties), so the margin over seeds and CPU types is
    measured by bench/perf/margins.py rather than guessed."""

    def check(name: str, value: float, threshold: float, above: bool = True) -> None:
        record_property(f"margin:{name}", f"{float(value):.6f} {'>' if above else '<'} {threshold}")
        ok = value > threshold if above else value < threshold
        assert ok, f"{name} = {value:.4f}, needs {'>' if above else '<'} {threshold}"

    return check


def wait_until(predicate, timeout: float, what: str, interval: float = 0.05) -> None:
    """Poll ``predicate`` until it is true; fail naming ``what`` after ``timeout`` seconds."""
    import time

    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


@pytest.fixture(scope="session")
def local_two_seeds(tmp_path_factory):
    """`fedonco bench --seeds 2` of FedAvg on the smoke profile (audit off) with the local engine,
    run once per test session: the reference that test_bench_seeds.py checks and that the Ray
    engine must reproduce (tests/integration/test_ray_engine.py). Returns (cfg, its config file,
    the run directory)."""
    from benchrun import CONFIG, bench_ok

    from common.config import load_profile, with_overrides

    tmp = tmp_path_factory.mktemp("local-two-seeds")
    cfg = with_overrides(load_profile("smoke"), **{"mia.enabled": False, "fl.methods": ["fedavg"]})
    run_dir = bench_ok(tmp, cfg, "--seeds", "2")
    return cfg, tmp / CONFIG, run_dir


@pytest.fixture(scope="session")
def smoke_bench_dp(tmp_path_factory):
    """`fedonco bench` of the smoke profile's two DP methods, per-site DP-SGD (`dpsgd`) and
    distributed DP (`ddp-sgd`), with the membership-inference audit on, run once per test session:
    a run bundle with both kinds of privacy record and saved audit scores
    (tests/integration/test_verify_bench.py). Returns the run directory."""
    from benchrun import bench_ok

    from common.config import load_profile, with_overrides

    tmp = tmp_path_factory.mktemp("smoke-bench-dp")
    # 5 s heartbeats: DP rounds on 2 loaded cores can starve the 1 s heartbeat
    cfg = with_overrides(
        load_profile("smoke"), **{"fl.methods": ["dpsgd", "ddp-sgd"], "fl.heartbeat_s": 5.0}
    )
    run_dir = bench_ok(tmp, cfg)
    return run_dir
