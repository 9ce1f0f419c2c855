"""Predict throughput of the release service over gRPC on 127.0.0.1 (slices/s), against the same
model called in-process (the baseline, same run), and its latency as a public endpoint sees it:
p50/p99 of batch-1 calls from 8 concurrent callers:
`python bench/perf/perf_release.py [--n 256] [--size 64] [--base 16]` (the quick profile's model)."""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from attacks.remote import RemoteModel
from common.model import build_model, get_params
from common.release import export_release
from common.transforms import predict_probs, to_inputs
from server.inference import serve


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--base", type=int, default=16)
    args = ap.parse_args()
    rows = []
    for size, base, n in ((args.size, args.base, args.n),):
        with tempfile.TemporaryDirectory() as tmp:
            model = build_model(base, "batch", 4, seed=0)
            info = {
                "method": "fedavg",
                "base": base,
                "norm": "batch",
                "groups": 4,
                "image_size": size,
                "window": [-160, 240],
            }
            export_release(Path(tmp) / "rel", get_params(model), info)
            port_file = Path(tmp) / "port"
            threading.Thread(
                target=serve, args=(Path(tmp) / "rel", "127.0.0.1:0", port_file), daemon=True
            ).start()
            while not port_file.exists():
                time.sleep(0.05)
            images = (
                np.random.default_rng(0).integers(-1000, 400, (args.n, size, size)).astype(np.int16)
            )
            remote = RemoteModel(f"127.0.0.1:{port_file.read_text()}")
            remote.predict(images[:8])  # warm up
            t = time.perf_counter()
            remote.predict(images)
            grpc_rate = n / (time.perf_counter() - t)
            model.eval()
            predict_probs(model, to_inputs(images[:8], (-160, 240)))
            t = time.perf_counter()
            predict_probs(model, to_inputs(images, (-160, 240)))
            local_rate = n / (time.perf_counter() - t)
            rows.append((size, base, local_rate, grpc_rate))
            lat = _latency(f"127.0.0.1:{port_file.read_text()}", images, callers=8, calls=40)
    print(
        "\n| image | U-Net base | in-process slices/s (baseline) | Predict over gRPC slices/s | ratio |"
    )
    print("|---|---|---|---|---|")
    for size, base, lr, gr in rows:
        print(f"| {size}² | {base} | {lr:.1f} | {gr:.1f} | {gr / lr:.2f} |")
    p50, p99 = np.percentile(lat, [50, 99])
    print(
        f"\nbatch-1 Predict latency, 8 concurrent callers x 40 calls: p50 {1e3 * p50:.1f} ms, "
        f"p99 {1e3 * p99:.1f} ms"
    )


def _latency(address: str, images: np.ndarray, callers: int, calls: int) -> np.ndarray:
    """Seconds per batch-1 Predict, from ``callers`` threads with their own channels."""
    times: list[float] = []
    lock = threading.Lock()

    def caller(k: int) -> None:
        remote = RemoteModel(address)
        for i in range(calls):
            t = time.perf_counter()
            remote.predict(images[(k * calls + i) % len(images)][None])
            with lock:
                times.append(time.perf_counter() - t)

    threads = [threading.Thread(target=caller, args=(k,)) for k in range(callers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return np.asarray(times)


if __name__ == "__main__":
    main()
