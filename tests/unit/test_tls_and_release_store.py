"""Certificates (fedonco certs), the plaintext policy, the release service's model names, and
dataset subsets (a site generates only its own slices)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from common.config import load_profile
from common.data.build import make_shard, plan
from common.model import build_model, get_params
from common.release import export_release
from common.wire.options import parse_owner
from common.wire.tls import (
    certificate_site,
    channel_credentials,
    is_loopback,
    make_certs,
    plaintext_allowed,
)
from server.inference import ModelStore


def _cert(path):
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_certs_layout_identity_and_signatures(tmp_path):
    dirs = make_certs(
        tmp_path, ["A", "B"], ["fl.example.org", "10.0.0.5"], release_names=["models.example.org"]
    )
    assert set(dirs) == {"server", "site-A", "site-B", "release", "attacker"}
    ca = _cert(tmp_path / "ca.crt")
    for role, d in dirs.items():
        assert sorted(p.name for p in d.iterdir()) == ["ca.crt", "tls.crt", "tls.key"]
        assert stat.S_IMODE((d / "tls.key").stat().st_mode) == 0o600
        cert = _cert(d / "tls.crt")
        assert cert.issuer == ca.subject
        ca.public_key().verify(  # raises if the CA did not sign it
            cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(cert.signature_hash_algorithm)
        )
        cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        if role == "server":
            assert "fl.example.org" in sans.get_values_for_type(x509.DNSName)
            assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["10.0.0.5"]
            assert ExtendedKeyUsageOID.SERVER_AUTH in eku
        elif role == "release":  # its own name: the federation's server certificate is not reused
            assert sans.get_values_for_type(x509.DNSName) == ["models.example.org"]
            assert ExtendedKeyUsageOID.SERVER_AUTH in eku and certificate_site(d) is None
        elif role == "attacker":  # a caller only, and not a site
            assert cn == "attacker" and certificate_site(d) is None
            assert ExtendedKeyUsageOID.SERVER_AUTH not in eku
        else:
            assert cn == role and certificate_site(d) == role[-1]
            assert ExtendedKeyUsageOID.SERVER_AUTH not in eku  # a site cannot pose as the server
    assert stat.S_IMODE((tmp_path / "ca.key").stat().st_mode) == 0o600
    assert certificate_site(dirs["server"]) is None


def test_certs_refuse_to_replace_a_ca_without_force(tmp_path):
    make_certs(tmp_path, ["A"])
    first = (tmp_path / "ca.crt").read_bytes()
    with pytest.raises(FileExistsError, match="invalidate"):
        make_certs(tmp_path, ["A"])
    make_certs(tmp_path, ["A"], force=True)
    assert (tmp_path / "ca.crt").read_bytes() != first


@pytest.mark.skipif(os.geteuid() != 0, reason="handing files to another user needs root")
def test_certs_owner_hands_each_role_to_its_account_and_keeps_the_ca_key(tmp_path):
    dirs = make_certs(tmp_path, ["A"], owner=(10001, 10002))
    for d in dirs.values():
        for p in (d, *d.iterdir()):
            assert (p.stat().st_uid, p.stat().st_gid) == (10001, 10002), p
        assert stat.S_IMODE((d / "tls.key").stat().st_mode) == 0o600  # that account only
    assert (tmp_path / "ca.key").stat().st_uid == os.geteuid()


def test_certs_owner_parsing():
    assert parse_owner("10001:10001") == (10001, 10001)
    for bad in ("10001", "fedonco:fedonco", ":1", "1:", "-1:2"):
        with pytest.raises(ValueError, match="UID:GID"):
            parse_owner(bad)


def test_an_unreadable_key_names_its_owner_and_the_fix(tmp_path, monkeypatch):
    """A container user that may not read the key gets one actionable line, not a traceback
    (simulated: root reads any file, so the read itself is made to fail)."""
    d = make_certs(tmp_path, ["A"])["site-A"]
    real = Path.read_bytes

    def read_bytes(self):
        if self.name == "tls.key":
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    with pytest.raises(PermissionError) as err:
        channel_credentials(d)
    msg = str(err.value)
    st = (d / "tls.key").stat()
    assert f"cannot read {d / 'tls.key'} as uid {os.getuid()}" in msg
    assert f"belongs to uid {st.st_uid}" in msg and "mode 0600" in msg
    assert f"--user {st.st_uid}:{st.st_gid}" in msg and "fedonco certs --owner" in msg


def test_plaintext_only_on_loopback_unless_opted_in(caplog):
    for addr in ("127.0.0.1:50051", "localhost:1", "[::1]:5"):
        assert is_loopback(addr)
        plaintext_allowed(addr, insecure=False, role="server")
    for addr in ("0.0.0.0:50051", "server:50051", "10.1.2.3:1"):
        assert not is_loopback(addr)
        with pytest.raises(ValueError, match="refusing plaintext"):
            plaintext_allowed(addr, insecure=False, role="server")
    plaintext_allowed("0.0.0.0:50051", insecure=True, role="server")
    assert "PLAINTEXT" in caplog.text


def test_the_release_service_refuses_plaintext_beyond_loopback_before_it_starts(
    tmp_path, capsys, monkeypatch
):
    from bench import cli

    monkeypatch.delenv("FEDONCO_INSECURE", raising=False)
    root = tmp_path / "releases"
    root.mkdir()
    argv = ["release", "serve", "--models-root", str(root), "--address", "0.0.0.0:0"]
    assert cli.main(argv) == 2  # issue 32: it bound 0.0.0.0 in plaintext without a word
    err = capsys.readouterr().err
    assert (
        "release service: refusing plaintext gRPC on 0.0.0.0:0" in err and "\n" not in err.strip()
    )


def test_model_store_names(tmp_path):
    params = get_params(build_model(4, "batch", 2, seed=0))
    info = {
        "method": "fedavg",
        "base": 4,
        "norm": "batch",
        "groups": 2,
        "image_size": 32,
        "window": [-160, 240],
    }
    export_release(tmp_path / "root" / "camp" / "fedavg" / "release", params, info)
    export_release(tmp_path / "secret", params, info)  # outside the root
    store = ModelStore(roots=[tmp_path / "root"])
    _, got = store.get("camp/fedavg/release")
    assert got["method"] == "fedavg"
    for bad in (
        "",
        "camp/fedbn/release",
        "../secret",
        str(tmp_path / "secret"),
        "camp/../../secret",
    ):
        with pytest.raises(KeyError):
            store.get(bad)
    with pytest.raises(ValueError):
        ModelStore()
    # aliases of one model share one copy (the cache is keyed by the resolved directory)
    for alias in ("camp/./fedavg/release", "camp//fedavg/release", "camp/fedavg/release/"):
        assert store.get(alias)[0] is store.get("camp/fedavg/release")[0]
    assert len(store._models) == 1
    # a link out of the root is not followed; errors never show the server's paths
    (tmp_path / "root" / "link").symlink_to(tmp_path / "secret")
    for bad in ("link", "x" * 300, "camp/fedavg/release\x00"):
        with pytest.raises(KeyError) as err:
            store.get(bad)
        assert str(tmp_path) not in str(err.value) and len(str(err.value)) < 200
    # a release that cannot be read is "not found", not a crash with a path in it
    broken = tmp_path / "root" / "broken"
    broken.mkdir()
    (broken / "release.json").write_text("{not json")
    with pytest.raises(KeyError, match="no usable released model") as err:
        store.get("broken")
    assert str(tmp_path) not in str(err.value)


def test_site_subset_generates_the_same_slices():
    cfg = load_profile("smoke")
    full = {(j.split, j.site_index, j.k): j for j in plan(cfg)}
    sub = plan(cfg, ["B"], ["train", "test"])
    assert sub and {(j.split, j.site_index) for j in sub} == {("train", 1), ("test", 1)}
    job = sub[0]
    a, b = make_shard(job), make_shard(full[(job.split, job.site_index, job.k)])
    assert a[0]["sha256"] == b[0]["sha256"] and a[1] == b[1]
    with pytest.raises(ValueError, match="unknown"):
        plan(cfg, ["Z"], None)
    with pytest.raises(ValueError, match="unknown"):
        plan(cfg, None, ["validation"])


def test_directories_are_never_writable_by_others_whatever_the_umask(tmp_path):
    """Issue 32: under umask 000 the state, run, release and certificate directories were 0777,
    so another local user could replace a checkpoint, a released weight or a key inside them."""
    from common.io import GROUP_DIR, PRIVATE_DIR, PUBLIC_DIR, secure_dir

    old = os.umask(0)
    try:
        export_release(
            tmp_path / "run" / "release", {"w": np.zeros(2, np.float32)}, {"method": "fedavg"}
        )
        dirs = make_certs(tmp_path / "certs", ["A"])
        loose = tmp_path / "state"
        loose.mkdir(mode=0o777)
        secure_dir(loose)
        nested = secure_dir(tmp_path / "a" / "b" / "site", PRIVATE_DIR)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "run" / "release").stat().st_mode) == GROUP_DIR
    for d in dirs.values():  # certificates are public; the key inside is 0600 (tested above)
        assert stat.S_IMODE(d.stat().st_mode) == PUBLIC_DIR
    assert stat.S_IMODE(loose.stat().st_mode) == PRIVATE_DIR  # an existing one is tightened
    assert stat.S_IMODE(nested.stat().st_mode) == PRIVATE_DIR
