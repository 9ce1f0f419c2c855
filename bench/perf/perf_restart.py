"""A site restarted mid-round under secure aggregation: the round's time against a normal round.

`python bench/perf/perf_restart.py [--repeats 3]`

One secure-aggregation round of the smoke profile (real server, five real ``SiteClient``s in
threads, real gRPC on 127.0.0.1), alternating: a normal round, and a round in which site E
"restarts" right after advertising its keys (its update and keys are gone, as in a new process).
The restarted site declines the stages it cannot serve, the survivors' shares recover the sum, and
the round goes on without waiting for its timeout (issue 15's goal: <= 2x a normal round). Prints
the medians of the round's wall time (``timing_s.round``) and their ratio, measured in one run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path


def secagg_round(cfg, data: Path, work: Path, restart: str | None) -> dict:
    """One round; ``restart``: the site that loses its state when handed the share-keys stage."""
    from client.app import SiteClient
    from server.app import Server
    from server.campaign import serve_campaign

    srv = Server(cfg, "fedavg", data, work / "run", resume=False)
    port_file, box = work / "port", {}

    class Site(SiteClient):
        def secagg_stage(self, task):
            if self.site == restart and task.WhichOneof("stage") == "share_keys":
                self.secagg = self.pending = None  # a new process: this round's update is gone
            return super().secagg_stage(task)

    server = threading.Thread(
        target=lambda: box.setdefault(
            "r", serve_campaign([lambda: srv], "127.0.0.1:0", port_file)[0]
        )
    )
    server.start()
    end = time.monotonic() + 60
    while not port_file.exists():
        if time.monotonic() > end:
            raise TimeoutError("the server did not start")
        time.sleep(0.05)
    address = f"127.0.0.1:{port_file.read_text()}"
    for s in "ABCDE":
        threading.Thread(
            target=Site(cfg, s, address, data, work / "state").run, daemon=True
        ).start()
    server.join(timeout=600)
    return json.loads((work / "run" / "history.json").read_text())[0]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=3, help="rounds of each kind (default 3)")
    args = p.parse_args(argv)
    from common.config import load_profile, with_overrides
    from common.data.build import build_dataset

    cfg = with_overrides(
        load_profile("smoke"),
        **{
            "train.rounds": 1,
            "secagg.enabled": True,
            "fl.round_timeout_s": 60.0,
            "fl.heartbeat_s": 0.5,
        },
    )
    times: dict[str, list[float]] = {"normal": [], "restart": []}
    with tempfile.TemporaryDirectory() as tmp:
        build_dataset(cfg, Path(tmp) / "data", workers=1, gallery=False)
        for i in range(args.repeats):
            for kind, who in (("normal", None), ("restart", "E")):
                rec = secagg_round(cfg, Path(tmp) / "data", Path(tmp) / f"{kind}{i}", who)
                dropped = rec.get("secagg", {}).get("dropouts", {}).get("share_keys")
                assert dropped == ([who] if who else []), (kind, dropped)
                times[kind].append(rec["timing_s"]["round"])
    med = {k: statistics.median(v) for k, v in times.items()}
    print("| round | median s | rounds (s) |\n|---|---|---|")
    for k, v in times.items():
        print(f"| {k} | {med[k]:.2f} | {', '.join(f'{t:.2f}' for t in v)} |")
    print(f"\nrestart / normal: {med['restart'] / med['normal']:.2f}x (goal <= 2x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
