"""Generate the Python code for the wire contract into common/wire/rpc/.

    python proto/gen.py            # regenerate common/wire/rpc/*_pb2*.py(i)
    python proto/gen.py --check    # exit 1 if the committed files differ from a fresh generation
    python proto/gen.py --out DIR  # write somewhere else (the freshness test uses this)

The .proto files live under proto/fedonco/v1/ (package fedonco.v1), so protoc writes imports such as
``from fedonco.v1 import types_pb2``. We place the output in the ``common.wire.rpc`` package instead and
rewrite exactly those import lines; nothing else in the generated files is touched. The output
depends on the grpcio-tools version (it bundles protoc): regenerate with the pinned dev version.
"""

from __future__ import annotations

import argparse
import difflib
import logging
import re
import subprocess
import sys
import tempfile
from pathlib import Path

log = logging.getLogger("proto.gen")

PROTO_ROOT = Path(__file__).resolve().parent
REPO_ROOT = PROTO_ROOT.parent
PROTO_PACKAGE_DIR = Path("fedonco") / "v1"
TARGET_DIR = REPO_ROOT / "common" / "wire" / "rpc"
TARGET_PACKAGE = "common.wire.rpc"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")

# "from fedonco.v1 import types_pb2 as ..." -> "from common.wire.rpc import types_pb2 as ..."
_IMPORT_RE = re.compile(r"^(\s*)from fedonco\.v1 import ", re.MULTILINE)
_SERVICE_RE = re.compile(r"^class \w+Stub\b", re.MULTILINE)


def _proto_files() -> list[str]:
    files = sorted((PROTO_ROOT / PROTO_PACKAGE_DIR).glob("*.proto"))
    if not files:
        raise FileNotFoundError(f"no .proto files under {PROTO_ROOT / PROTO_PACKAGE_DIR}")
    return [f.relative_to(PROTO_ROOT).as_posix() for f in files]


def generate(out_dir: Path) -> list[Path]:
    """Run protoc on every proto file and write the import-fixed output into ``out_dir``."""
    import grpc_tools  # dev dependency; imported here so --help works without it

    well_known = Path(grpc_tools.__file__).resolve().parent / "_proto"
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            "-I.",
            f"-I{well_known}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            f"--grpc_python_out={tmp}",
            *_proto_files(),
        ]
        done = subprocess.run(cmd, cwd=PROTO_ROOT, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"protoc failed ({done.returncode}):\n{done.stderr}")
        for stale in generated_files(out_dir):  # a deleted .proto must not leave code behind
            (out_dir / stale).unlink()
        written = []
        for src in sorted((Path(tmp) / PROTO_PACKAGE_DIR).iterdir()):
            if not src.name.endswith(GENERATED_SUFFIXES):
                continue
            text = _IMPORT_RE.sub(rf"\1from {TARGET_PACKAGE} import ", src.read_text())
            if src.name.endswith("_pb2_grpc.py") and not _SERVICE_RE.search(text):
                continue  # a file without services gets an empty gRPC module: skip it
            dst = out_dir / src.name
            dst.write_text(text)
            written.append(dst)
    log.info("generated %d files into %s", len(written), out_dir)
    return written


def generated_files(directory: Path) -> dict[str, str]:
    """Name -> text of the generated files in ``directory`` (hand-written files excluded)."""
    return {
        p.name: p.read_text()
        for p in sorted(directory.iterdir())
        if p.is_file() and p.name.endswith(GENERATED_SUFFIXES)
    }


def diff_against(directory: Path) -> list[str]:
    """Regenerate into a temporary folder; return a unified diff against ``directory``."""
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        fresh = generated_files(Path(tmp))
    committed = generated_files(directory)
    lines: list[str] = []
    for name in sorted(set(fresh) | set(committed)):
        a = committed.get(name, "").splitlines(keepends=True)
        b = fresh.get(name, "").splitlines(keepends=True)
        lines += difflib.unified_diff(a, b, f"committed/{name}", f"fresh/{name}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=TARGET_DIR, help="output folder")
    parser.add_argument("--check", action="store_true", help="fail if --out is not fresh")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    if args.check:
        diff = diff_against(args.out)
        if diff:
            sys.stderr.writelines(diff)
            log.error("generated code in %s is stale: run `python proto/gen.py`", args.out)
            return 1
        log.info("generated code in %s is fresh", args.out)
        return 0
    generate(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
