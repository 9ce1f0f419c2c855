import os

# Keep tests single-threaded and quiet; never reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def smoke_data(tmp_path_factory):
    """The smoke profile's dataset, built once per test session (every integration module reads
    it; a dataset depends only on the data settings and the seed, not on rounds or timeouts)."""
    from common.config import load_profile
    from common.data.build import build_dataset

    out = tmp_path_factory.mktemp("smoke") / "data"
    build_dataset(load_profile("smoke"), out, workers=1, gallery=False)
    return out


def wait_until(predicate, timeout: float, what: str, interval: float = 0.05) -> None:
    """Poll ``predicate`` until it is true; fail naming ``what`` after ``timeout`` seconds."""
    import time

    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)
