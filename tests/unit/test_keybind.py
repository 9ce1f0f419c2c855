"""Binding a site's secure-aggregation keys to its certificate (common/keybind.py): a good binding
verifies; every way a lying server could present one that is not the peer's (another CA,
another site's CN, an expired certificate, a signature over other keys, round, run or site,
oversized or garbage bytes) raises KeyBindingError and nothing else. Then the wire, in process:
sites sign (client/secure.py), the service edge bounds the sizes (server/servicer.py), the
server relays every binding in the share-keys stage (server/secure.py) and each site verifies
all of them before it shares anything."""

from __future__ import annotations

import base64
import datetime as dt
import os
import random

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from common.config import default_cert_name
from common.keybind import (
    MAX_CERT_BYTES,
    MAX_SIGNATURE_BYTES,
    KeyBindingError,
    KeySigner,
    KeyVerifier,
    binding_message,
)
from common.wire.tls import make_certs

RUN, RND = "fedavg-keybind", 3
SITES = list("ABCDE")  # the smoke profile's roster
NAMES = {s: default_cert_name(s) for s in SITES}
ENC, MASK = os.urandom(32), os.urandom(32)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    root = tmp_path_factory.mktemp("keybind")
    dirs = make_certs(root / "certs", SITES)
    rogue = make_certs(root / "rogue", SITES)  # another CA of the same name: never trusted
    ca_key = serialization.load_pem_private_key((root / "certs" / "ca.key").read_bytes(), None)
    ca = x509.load_pem_x509_certificate((root / "certs" / "ca.crt").read_bytes())
    return {
        "ca_pem": (root / "certs" / "ca.crt").read_bytes(),
        "ca": ca,
        "ca_key": ca_key,
        "signers": {s: KeySigner.from_tls_dir(dirs[NAMES[s]]) for s in SITES},
        "rogue": KeySigner.from_tls_dir(rogue[NAMES["A"]]),
        "server": KeySigner.from_tls_dir(dirs["server"]),
        "verifier": KeyVerifier.from_tls_dir(dirs[NAMES["B"]], NAMES),  # what site B checks with
    }


def _issue(pki, cn="site-A", *, key=None, days=(-1, 30), ca=False, issuer_key=None):
    """A certificate for ``cn`` signed by the federation's CA (or ``issuer_key``)."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, cn)]))
        .issuer_name(pki["ca"].subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now + dt.timedelta(days=days[0]))
        .not_valid_after(now + dt.timedelta(days=days[1]))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .sign(issuer_key or pki["ca_key"], hashes.SHA256())
    )
    return key, cert.public_bytes(serialization.Encoding.PEM)


def _sign(key, site="A", run=RUN, rnd=RND, enc=ENC, mask=MASK) -> bytes:
    return key.sign(binding_message(run, rnd, site, enc, mask), ec.ECDSA(hashes.SHA256()))


def _refused(pki, *args, match: str) -> None:
    with pytest.raises(KeyBindingError, match=match) as err:
        pki["verifier"](*args)
    assert type(err.value) is KeyBindingError and "site 'A'" in str(err.value)


def test_a_good_binding_verifies(pki):
    sig, cert = pki["signers"]["A"].sign(RUN, RND, "A", ENC, MASK)
    assert len(sig) <= MAX_SIGNATURE_BYTES and len(cert) <= MAX_CERT_BYTES
    assert pki["verifier"](RUN, RND, "A", ENC, MASK, sig, cert) is None
    # the roster may name another CN: the certificate must carry that one
    key, named = _issue(pki, "ct.central-hospital.example")
    verify = KeyVerifier(pki["ca_pem"], {"central": "ct.central-hospital.example"})
    assert verify(RUN, RND, "central", ENC, MASK, _sign(key, "central"), named) is None
    assert repr(pki["signers"]["A"]) == "KeySigner(<certificate key>)"  # never the key itself


def test_a_certificate_from_another_ca_is_refused(pki):
    sig, cert = pki["rogue"].sign(RUN, RND, "A", ENC, MASK)  # CN site-A, a CA of the same name
    _refused(pki, RUN, RND, "A", ENC, MASK, sig, cert, match="not issued by the federation's CA")
    other = ec.generate_private_key(ec.SECP256R1())  # signed by a key that is not the CA's
    key, cert = _issue(pki, issuer_key=other)
    _refused(pki, RUN, RND, "A", ENC, MASK, _sign(key), cert, match="not issued")


def test_a_certificate_with_another_sites_cn_is_refused(pki):
    sig, cert = pki["signers"]["C"].sign(RUN, RND, "A", ENC, MASK)  # C signs keys "of A"
    _refused(pki, RUN, RND, "A", ENC, MASK, sig, cert, match="CN 'site-C' is not the roster's")
    sig, cert = pki["server"].sign(RUN, RND, "A", ENC, MASK)  # the server's own certificate
    _refused(pki, RUN, RND, "A", ENC, MASK, sig, cert, match="CN 'server' is not the roster's")
    with pytest.raises(KeyBindingError, match="site 'Z': not in the roster"):
        pki["verifier"](
            RUN, RND, "Z", ENC, MASK, *pki["signers"]["A"].sign(RUN, RND, "Z", ENC, MASK)
        )


@pytest.mark.parametrize("days", [(-30, -1), (1, 30)], ids=["expired", "not_yet_valid"])
def test_a_certificate_outside_its_validity_is_refused(pki, days):
    key, cert = _issue(pki, days=days)
    _refused(pki, RUN, RND, "A", ENC, MASK, _sign(key), cert, match="not valid now")


def test_a_valid_certificate_is_refused_at_a_clock_past_its_end(pki):
    sig, cert = pki["signers"]["A"].sign(RUN, RND, "A", ENC, MASK)
    later = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=3650)
    verify = KeyVerifier(pki["ca_pem"], NAMES, clock=lambda: later)
    with pytest.raises(KeyBindingError, match="not valid now"):
        verify(RUN, RND, "A", ENC, MASK, sig, cert)


@pytest.mark.parametrize(
    "change",
    [
        {"enc": os.urandom(32)},
        {"mask": os.urandom(32)},
        {"enc": MASK, "mask": ENC},
        {"rnd": RND + 1},
        {"run": "fedavg-other"},
        {"site": "B"},
    ],
    ids=["enc_pk", "mask_pk", "swapped", "round", "run", "site"],
)
def test_a_signature_over_anything_else_is_refused(pki, change):
    signed = {"run": RUN, "rnd": RND, "site": "A", "enc": ENC, "mask": MASK} | change
    sig, cert = pki["signers"]["A"].sign(
        signed["run"], signed["rnd"], signed["site"], signed["enc"], signed["mask"]
    )
    _refused(pki, RUN, RND, "A", ENC, MASK, sig, cert, match="signature does not verify")


def test_oversized_empty_and_garbage_bytes_are_refused(pki):
    sig, cert = pki["signers"]["A"].sign(RUN, RND, "A", ENC, MASK)
    padded = cert + b"\n" * (MAX_CERT_BYTES + 1 - len(cert))  # would load, but too big
    _refused(pki, RUN, RND, "A", ENC, MASK, sig, padded, match=f"> {MAX_CERT_BYTES}")
    long_sig = sig + b"\x00" * (MAX_SIGNATURE_BYTES + 1 - len(sig))
    _refused(pki, RUN, RND, "A", ENC, MASK, long_sig, cert, match=f"> {MAX_SIGNATURE_BYTES}")
    for s, c in ((b"", cert), (sig, b""), (b"", b"")):
        _refused(pki, RUN, RND, "A", ENC, MASK, s, c, match="no signature or no certificate")
    pem_junk = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
    for junk in (os.urandom(600), pem_junk, b"\x00", cert[:200]):
        _refused(pki, RUN, RND, "A", ENC, MASK, sig, junk, match="does not load")
    for junk in (os.urandom(70), b"\x30\x00", b"\x00"):
        _refused(pki, RUN, RND, "A", ENC, MASK, junk, cert, match="signature does not verify")
    _refused(pki, RUN, RND, "A", ENC, MASK, "sig", cert, match="must be bytes")


def test_a_ca_certificate_or_a_non_ec_key_is_refused(pki):
    ca_as_site = _sign(pki["ca_key"])  # even the CA's own certificate is no site's
    _refused(pki, RUN, RND, "A", ENC, MASK, ca_as_site, pki["ca_pem"], match="CA certificate")
    key, cert = _issue(pki, key=ed25519.Ed25519PrivateKey.generate())
    sig = key.sign(binding_message(RUN, RND, "A", ENC, MASK))
    _refused(pki, RUN, RND, "A", ENC, MASK, sig, cert, match="not an EC key")


def test_mutated_certificates_raise_only_key_binding_errors(pki):
    """Byte flips anywhere in the DER of a good certificate: each one is refused, always with
    KeyBindingError (never a parser's own exception)."""
    sig, cert = pki["signers"]["A"].sign(RUN, RND, "A", ENC, MASK)
    der = bytearray(x509.load_pem_x509_certificate(cert).public_bytes(serialization.Encoding.DER))
    rng = random.Random(29)
    for _ in range(300):
        bad = bytearray(der)
        for _ in range(rng.randint(1, 3)):
            bad[rng.randrange(len(bad))] ^= 1 << rng.randrange(8)
        body = base64.encodebytes(bytes(bad))
        pem = b"-----BEGIN CERTIFICATE-----\n" + body + b"-----END CERTIFICATE-----\n"
        with pytest.raises(KeyBindingError):
            pki["verifier"](RUN, RND, "A", ENC, MASK, sig, pem)


def test_the_signer_refuses_a_key_of_another_certificate(pki):
    _, cert = pki["signers"]["A"].sign(RUN, RND, "A", ENC, MASK)
    with pytest.raises(KeyBindingError, match="does not belong"):
        KeySigner(ec.generate_private_key(ec.SECP256R1()), cert)
    with pytest.raises(KeyBindingError, match="CA certificate does not load"):
        KeyVerifier(b"not a certificate", NAMES)


# -- on the wire (no network: the servicer is called with a stand-in context) --------------------


class _Aborted(Exception):
    pass


class _Context:
    def abort(self, code, details):
        raise _Aborted(code, details)


def test_bindings_travel_through_the_server_and_every_site_checks_them(pki):
    import threading
    import time

    import grpc
    import numpy as np

    from client.secure import PendingUpdate, advertise_request, stage_answer
    from common.config import load_profile
    from common.secagg import SecAggClient
    from common.wire.rpc import federation_pb2 as pb
    from server.records import TaskKind
    from server.secure import secure_aggregate
    from server.servicer import FederationServicer
    from server.state import RoundState

    cfg = load_profile("smoke")
    run, ctx = "fedavg-wire", _Context()
    state = RoundState(run, SITES, heartbeat_s=5.0)
    for s in SITES:
        state.register(s)
    servicer = FederationServicer(state, {})
    verify = KeyVerifier(pki["ca_pem"], NAMES)
    clients = {s: SecAggClient(s, run, 1, expect=(3, None), verify=verify) for s in SITES}
    rng = np.random.default_rng(0)
    pending = {s: PendingUpdate(1, rng.normal(size=6), 10 + i) for i, s in enumerate(SITES)}

    box = {}
    opened = threading.Thread(
        target=lambda: box.update(
            out=state.run_phase(TaskKind.ADVERTISE_KEYS, 1, {s: {} for s in SITES}, None, None, 10)
        )
    )
    opened.start()
    requests = {
        s: advertise_request(s, run, clients[s], pending[s], {}, signer=pki["signers"][s])
        for s in SITES
    }
    assert all(len(r.keys.signature) > 0 and r.keys.certificate for r in requests.values())
    deadline = time.monotonic() + 10
    for field, limit, what in (
        ("certificate", MAX_CERT_BYTES, "certificate of"),
        ("signature", MAX_SIGNATURE_BYTES, "key signature of"),
    ):
        oversized = pb.AdvertiseKeysRequest()
        oversized.CopyFrom(requests["A"])
        setattr(oversized.keys, field, b"\n" * (limit + 1))  # over the edge's bound
        while True:  # the phase opens in its thread: FAILED_PRECONDITION until then
            with pytest.raises(_Aborted) as err:
                servicer.AdvertiseKeys(oversized, ctx)
            if err.value.args[0] != grpc.StatusCode.FAILED_PRECONDITION:
                break
            assert time.monotonic() < deadline, err.value.args
        assert err.value.args[0] == grpc.StatusCode.INVALID_ARGUMENT and what in err.value.args[1]
    for s in SITES:
        servicer.AdvertiseKeys(requests[s], ctx)
    opened.join()
    advertised, failures = box["out"]
    assert failures == {} and advertised["A"].certificate == requests["A"].keys.certificate

    done = threading.Thread(
        target=lambda: box.update(
            agg=secure_aggregate(cfg, state, 1, advertised, {"w": np.zeros(6, np.float32)})
        )
    )
    done.start()
    for stage in ("share_keys", "masked_input", "consistency", "unmask"):
        for s in SITES:
            pull = pb.PullTaskRequest(site_id=s, run_id=run, round=1)
            task = servicer.PullTask(pull, ctx)
            while not task.HasField("secagg") or task.secagg.WhichOneof("stage") != stage:
                task = servicer.PullTask(pull, ctx)
            if stage == "share_keys":  # every site's binding relayed, to every site
                keys = task.secagg.share_keys.public_keys
                assert {k: (v.signature, v.certificate) for k, v in keys.items()} == {
                    k: (r.keys.signature, r.keys.certificate) for k, r in requests.items()
                }
            name, request = stage_answer(s, run, clients[s], pending[s], task.secagg)
            getattr(servicer, name)(request, ctx)
    done.join()
    out = box["agg"]
    assert out.weighted_sum is not None, out.record
    want = sum(p.weighted for p in pending.values())
    bound = out.record["error_bound_sum"]
    assert np.max(np.abs(out.weighted_sum["w"] - want)) <= bound
