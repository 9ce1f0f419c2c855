"""Mutual TLS on 127.0.0.1: a site with its own certificate is admitted; no certificate, another
site's certificate, a certificate from a foreign CA are refused; a site refuses a server it cannot
verify. (A whole campaign over mTLS with the judge: tests/integration/test_federation.py.)"""

from __future__ import annotations

import contextlib
import json
import subprocess
from pathlib import Path

import grpc
import pytest

from bench.fleet import fedonco, spawn, stop, wait_for_port
from common.config import load_profile, with_overrides
from common.wire.channel import create_channel
from common.wire.rpc import federation_pb2 as pb
from common.wire.rpc import federation_pb2_grpc as pb_grpc
from common.wire.tls import channel_credentials, make_certs

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def setup(tmp_path_factory, smoke_data):
    root = tmp_path_factory.mktemp("campaign")
    cfg = with_overrides(
        load_profile("smoke"),
        **{"train.rounds": 1, "fl.heartbeat_s": 0.5, "fl.wait_for_sites_s": 60.0},
    )
    (root / "data").symlink_to(smoke_data, target_is_directory=True)
    (root / "config.json").write_text(json.dumps(cfg.model_dump(mode="json")))
    make_certs(root / "certs", list("ABCDE"))
    make_certs(root / "rogue", list("ABCDE"))  # another CA: must not be trusted
    return cfg, root


@contextlib.contextmanager
def tls_fedavg_server(root: Path, work: Path, tls_dir: Path):
    """A TLS server for one FedAvg run, waiting for sites; yields its address."""
    log = work / "server.log"
    proc = spawn(
        fedonco(
            "server",
            "--config",
            str(root / "config.json"),
            "--method",
            "fedavg",
            "--data",
            str(root / "data"),
            "--run-dir",
            str(work / "run"),
            "--address",
            "127.0.0.1:0",
            "--port-file",
            str(work / "port"),
            "--tls-dir",
            str(tls_dir),
        ),
        log,
    )
    try:
        yield f"127.0.0.1:{wait_for_port(work / 'port', proc, log)}"
    finally:
        stop([proc], timeout=15)


@pytest.fixture(scope="module")
def tls_server(setup, tmp_path_factory):
    """The federation's TLS server (used by the refusal tests, then shut down)."""
    _, root = setup
    with tls_fedavg_server(
        root, tmp_path_factory.mktemp("tls-server"), root / "certs" / "server"
    ) as a:
        yield a


def _register(address: str, site: str, creds) -> pb.RegisterSiteResponse:
    channel = create_channel(address, credentials=creds)
    try:
        return pb_grpc.FederationStub(channel).RegisterSite(
            pb.RegisterSiteRequest(site_id=site), timeout=10
        )
    finally:
        channel.close()


def test_site_with_its_own_certificate_is_admitted(setup, tls_server):
    _, root = setup
    resp = _register(tls_server, "A", channel_credentials(root / "certs" / "site-A"))
    assert resp.run_id.startswith("fedavg-")


REFUSALS = {
    # site A's valid certificate, claiming to be site B
    "another_sites_certificate": (
        "B",
        lambda c: channel_credentials(c / "site-A"),
        "PERMISSION_DENIED",
    ),
    # TLS that verifies the server but presents no client certificate: the handshake fails
    "no_client_certificate": (
        "A",
        lambda c: grpc.ssl_channel_credentials((c / "ca.crt").read_bytes()),
        "UNAVAILABLE",
    ),
    "plaintext": ("A", lambda c: None, "UNAVAILABLE"),
    # a well-formed site-A certificate from a CA the federation does not trust
    "foreign_ca": (
        "A",
        lambda c: channel_credentials(c.parent / "rogue" / "site-A"),
        "UNAVAILABLE",
    ),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_server_refuses_impostors(setup, tls_server, case):
    _, root = setup
    site, creds, expected = REFUSALS[case]
    with pytest.raises(grpc.RpcError) as err:
        _register(tls_server, site, creds(root / "certs"))
    assert err.value.code().name == expected


def test_client_refuses_a_server_it_cannot_verify(setup, tmp_path):
    """A server presenting a certificate from another CA: the site does not talk to it."""
    _, root = setup
    with tls_fedavg_server(root, tmp_path, root / "rogue" / "server") as address:
        with pytest.raises(grpc.RpcError) as err:
            _register(address, "A", channel_credentials(root / "certs" / "site-A"))
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_client_cli_checks_its_certificate_and_plaintext_needs_opt_in(setup):
    _, root = setup
    base = ["client", "--config", str(root / "config.json"), "--data", str(root / "data")]
    r = subprocess.run(
        fedonco(
            *base,
            "--site",
            "B",
            "--server",
            "127.0.0.1:1",
            "--tls-dir",
            str(root / "certs" / "site-A"),
        ),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2 and "common name is 'site-A', the roster gives site 'B'" in r.stderr
    r = subprocess.run(
        fedonco(*base, "--site", "A", "--server", "10.1.2.3:50051"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2 and "refusing plaintext" in r.stderr


def test_a_site_names_the_cause_of_a_tls_failure(setup, tmp_path):
    """gRPC reports every TLS mistake as UNAVAILABLE; the site checks the handshake and says
    which one it is, then stops (exit 2) instead of retrying something that cannot work."""
    import shutil

    _, root = setup
    base = [
        "client",
        "--config",
        str(root / "config.json"),
        "--data",
        str(root / "data"),
        "--site",
        "A",
        "--state-dir",
        str(tmp_path / "state"),
    ]
    mixed = tmp_path / "mixed"  # the right CA, a certificate from another CA
    mixed.mkdir()
    shutil.copy(root / "certs" / "site-A" / "ca.crt", mixed / "ca.crt")
    for name in ("tls.crt", "tls.key"):
        shutil.copy(root / "rogue" / "site-A" / name, mixed / name)
    with tls_fedavg_server(root, tmp_path, root / "certs" / "server") as address:
        cases = {
            "unknown CA": root / "rogue" / "site-A",
            "refused this site's certificate": mixed,
        }
        for cause, tls in cases.items():
            r = subprocess.run(
                fedonco(*base, "--server", address, "--tls-dir", str(tls)),
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert r.returncode == 2 and cause in r.stderr, (cause, r.stderr[-2000:])
        # the same check, before a site container generates its data (deploy/entrypoint.sh)
        check = ["health", address, "--tls-check", "A", "--tls-dir"]
        r = subprocess.run(fedonco(*check, str(mixed)), capture_output=True, text=True, timeout=60)
        assert r.returncode == 2 and "refused this site's certificate" in r.stderr
        r = subprocess.run(
            fedonco(*check, str(root / "certs" / "site-A")),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode == 0 and "ok" in r.stdout
        r = subprocess.run(
            fedonco(*check, str(root / "certs" / "site-B")),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode == 2 and "is for site 'B'" in r.stderr
    named = make_certs(tmp_path / "named", list("ABCDE"), ["fl.example.org"])
    (tmp_path / "n").mkdir()
    with tls_fedavg_server(root, tmp_path / "n", named["server"]) as address:  # 127.0.0.1
        r = subprocess.run(
            fedonco(*base, "--server", address, "--tls-dir", str(named["site-A"])),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert r.returncode == 2 and "is not for the name '127.0.0.1'" in r.stderr, r.stderr[-2000:]


def test_a_site_with_another_profile_is_refused_at_registration(setup, tmp_path):
    """A site whose profile gives other tensor shapes (here a wider U-Net) is refused when it
    registers, with both profiles named, instead of dying later on a shape error."""
    cfg, root = setup
    other = with_overrides(cfg, **{"model.base": cfg.model.base * 2})
    (tmp_path / "other.json").write_text(json.dumps(other.model_dump(mode="json")))
    (tmp_path / "s").mkdir()
    with tls_fedavg_server(root, tmp_path / "s", root / "certs" / "server") as address:
        r = subprocess.run(
            fedonco(
                "client",
                "--config",
                str(tmp_path / "other.json"),
                "--data",
                str(root / "data"),
                "--site",
                "A",
                "--state-dir",
                str(tmp_path / "state"),
                "--server",
                address,
                "--tls-dir",
                str(root / "certs" / "site-A"),
            ),
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert r.returncode == 2, r.stderr[-2000:]
    assert f"base {cfg.model.base * 2}" in r.stderr and f"base {cfg.model.base} " in r.stderr
    assert "the server refused it" in r.stderr
