"""The committed generated code in common/wire/rpc/ equals a fresh generation from proto/."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GEN = ROOT / "proto" / "gen.py"
COMMITTED = ROOT / "common" / "wire" / "rpc"
SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def _generated(directory: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(directory.iterdir()) if p.name.endswith(SUFFIXES)}


def test_regeneration_gives_no_diff(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools", reason="grpcio-tools (dev extra) generates the code")
    done = subprocess.run(
        [sys.executable, str(GEN), "--out", str(tmp_path)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    fresh, committed = _generated(tmp_path), _generated(COMMITTED)
    assert fresh, "the generator wrote nothing"
    assert sorted(fresh) == sorted(committed), "generated file set differs: run proto/gen.py"
    stale = [name for name in fresh if fresh[name] != committed[name]]
    assert not stale, (
        f"stale generated code {stale}: run `python proto/gen.py` and commit the result "
        "(or the installed grpcio-tools differs from the one that generated it)"
    )


def test_generated_modules_import_without_warnings() -> None:
    # Protobuf warns (or fails) when the runtime and the gencode versions disagree.
    code = "import common.wire.rpc.types_pb2, common.wire.rpc.federation_pb2, common.wire.rpc.federation_pb2_grpc"
    done = subprocess.run(
        [sys.executable, "-W", "error", "-c", code], capture_output=True, text=True, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr


def test_imports_point_into_common_rpc() -> None:
    for name, text in _generated(COMMITTED).items():
        assert "from fedonco.v1 import" not in text, f"{name} still imports fedonco.v1"
    from common.wire.rpc import federation_pb2, types_pb2

    req = federation_pb2.PushUpdateRequest(site_id="A", run_id="r", round=3)
    req.tensors.append(types_pb2.Tensor(name="w", dtype="float32", shape=[1], data=b"\0" * 4))
    again = federation_pb2.PushUpdateRequest.FromString(req.SerializeToString())
    assert again == req
