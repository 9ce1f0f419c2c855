"""A federation of a roster that is not A-E (issue 27): seven sites with their own names, one
following preset E, one with a hospital-issued certificate name, generated, trained and
evaluated by the real `fedonco server` and seven `fedonco client` processes over mutual TLS on
127.0.0.1. A certificate of the default naming for a site whose roster names another CN is
refused."""

from __future__ import annotations

import json

import grpc
import pytest

from bench.fleet import fedonco, spawn, stop, wait_for_port
from common.config import load_profile, parse_config
from common.data.build import build_dataset
from common.data.sites import resolve_sites
from common.data.store import read_manifest
from common.wire.channel import create_channel
from common.wire.rpc import federation_pb2 as pb
from common.wire.rpc import federation_pb2_grpc as pb_grpc
from common.wire.tls import channel_credentials, make_certs

# heavy: ~25 s on a 2-core AVX2 machine; `make test` stays under 15 min there
pytestmark = [pytest.mark.slow, pytest.mark.heavy]

ROSTER = [
    {"name": "north"},
    {"name": "south", "preset": "E"},
    {"name": "east"},
    {"name": "west"},
    {"name": "central", "cert_name": "ct.central-hospital.example"},
    {"name": "S6"},
    {"name": "S7"},
]


@pytest.fixture(scope="module")
def roster_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("roster")
    data = load_profile("smoke").model_dump(mode="json")
    data["sites"] = ROSTER
    data["train"] |= {"rounds": 1, "local_epochs": 2}
    data["data"] |= {"train_total": 56, "attacker_size": 14}
    data["fl"] |= {"heartbeat_s": 0.5, "wait_for_sites_s": 120.0, "min_fit_sites": 4}
    data["secagg"]["threshold"] = 4  # a majority of seven (common/config.py)
    data["mia"]["enabled"] = False
    cfg = parse_config(data)
    (root / "config.json").write_text(json.dumps(cfg.model_dump(mode="json")))
    build_dataset(cfg, root / "data", workers=1, gallery=False)
    # every roster site's certificate, and one more from the same CA with the CN that the default
    # naming would give "central" (its roster names another CN)
    make_certs(
        root / "certs",
        [*cfg.site_names, "impostor"],
        common_names=cfg.site_certs | {"impostor": "site-central"},
    )
    return cfg, root


def _register(address: str, site: str, tls_dir) -> grpc.StatusCode | None:
    channel = create_channel(address, credentials=channel_credentials(tls_dir))
    try:
        pb_grpc.FederationStub(channel).RegisterSite(
            pb.RegisterSiteRequest(site_id=site), timeout=10
        )
        return None
    except grpc.RpcError as err:
        return err.code()
    finally:
        channel.close()


def test_a_seven_site_roster_trains_over_mtls_and_refuses_the_default_cn(roster_run):
    cfg, root = roster_run
    names = cfg.site_names
    manifest = read_manifest(root / "data")
    assert manifest["site_names"] == names
    assert [s["name"] for s in manifest["sites"]] == names
    assert all(row["n_train"] > 0 and row["n_test"] > 0 for row in manifest["summary"])
    # "south" follows preset E (E's scanner and patients, not B's), "north" its position's, A
    presets = resolve_sites(cfg.data)  # the default roster: the presets A-E at this severity
    for got, want in ((manifest["sites"][1], presets[4]), (manifest["sites"][0], presets[0])):
        assert (got["dose"], got["prevalence"]) == (want.dose, want.prevalence)
    logs, run_dir = root / "logs", root / "run"
    procs = []
    try:
        server = spawn(
            fedonco(
                "server",
                "--config",
                str(root / "config.json"),
                "--method",
                "fedavg",
                "--data",
                str(root / "data"),
                "--run-dir",
                str(run_dir),
                "--address",
                "127.0.0.1:0",
                "--port-file",
                str(root / "port"),
                "--tls-dir",
                str(root / "certs" / "server"),
                "--threads",
                "1",
            ),
            logs / "server.log",
        )
        procs.append(server)
        address = f"localhost:{wait_for_port(root / 'port', server, logs / 'server.log')}"
        certs = root / "certs"
        # a CA-signed certificate whose CN is the default naming's, not central's roster CN
        assert _register(address, "central", certs / "site-impostor") == (
            grpc.StatusCode.PERMISSION_DENIED
        )
        # another roster site's certificate claiming central
        assert _register(address, "central", certs / "site-north") == (
            grpc.StatusCode.PERMISSION_DENIED
        )
        for s in names:
            procs.append(
                spawn(
                    fedonco(
                        "client",
                        "--config",
                        str(root / "config.json"),
                        "--site",
                        s,
                        "--server",
                        address,
                        "--data",
                        str(root / "data"),
                        "--state-dir",
                        str(root / "state"),
                        "--tls-dir",
                        str(certs / f"site-{s}"),
                    ),
                    logs / f"site-{s}.log",
                )
            )
        for p in procs:
            assert p.wait(timeout=240) == 0, (
                p.args[3:5],
                (logs / "server.log").read_text()[-2000:],
            )
    finally:
        stop(procs)
    history = json.loads((run_dir / "history.json").read_text())
    assert len(history) == 1 and history[0]["failures"] == {}
    assert sorted(history[0]["fit"]["sites"]) == sorted(names)
    result = json.loads((run_dir / "result.json").read_text())
    assert sorted(result["dice_per_site"]) == sorted(names)
    # the server evaluated each site on that site's own test slices (all of them)
    tests = {row["site"]: row["n_test"] for row in manifest["summary"]}
    for s, m in history[0]["eval"]["per_site"].items():
        assert m["n_tumor_images"] + m["n_empty_images"] == tests[s] > 0, (s, m)
