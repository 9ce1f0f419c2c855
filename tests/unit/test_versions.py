"""versions.json says whether the environment is the locked one (issue 26)."""

from importlib import metadata

from common.versions import LOCK, collect_versions, lock_status


def test_the_committed_lock_pins_every_dependency_with_hashes():
    pins = [
        line for line in LOCK.read_text().splitlines() if "==" in line and not line.startswith("#")
    ]
    names = {line.split("==")[0].lower() for line in pins}
    assert {"numpy", "scipy", "grpcio", "protobuf", "opacus", "scikit-learn", "pytest"} <= names
    assert "torch" not in names  # torch comes from TORCH_SPEC (CPU or CUDA build), not the lock
    assert all(line.rstrip().endswith("\\") for line in pins)  # each pin is followed by its hashes


def test_a_package_at_another_version_than_locked_is_reported(tmp_path):
    numpy = metadata.version("numpy")
    lock = tmp_path / "lock.txt"
    lock.write_text(
        f"numpy=={numpy} \\\n    --hash=sha256:00\n"
        "scipy==0.0.1 \\\n    --hash=sha256:00\n"
        "not-a-real-package-fedonco==1.0 \\\n"
    )
    status = lock_status(lock)
    assert status["file"] == "lock.txt" and len(status["sha256"]) == 64
    assert status["mismatches"] == {
        "scipy": {"locked": "0.0.1", "installed": metadata.version("scipy")},
        "not-a-real-package-fedonco": {"locked": "1.0", "installed": None},
    }


def test_a_checkout_without_a_lock_records_null(tmp_path):
    assert lock_status(tmp_path / "absent.txt") == {
        "file": None,
        "sha256": None,
        "mismatches": None,
    }
    assert collect_versions()["lock"]["sha256"] is not None
