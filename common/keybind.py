"""Bind a site's secure-aggregation keys to its certificate (mutual TLS deployments).

The server relays every site's advertised public keys (``common.secagg``, stage 2), so without a
binding it can show a site keys it made itself in place of its peers' (key substitution,
docs/threat-model.md). Under mutual TLS each site holds a CA-issued certificate whose common name
the roster gives (``SiteEntry.cert_name``). A site signs its two fresh public keys of a round with
its certificate's key (``KeySigner``); every site checks each peer's signature, that the peer's
certificate was issued by the federation's CA, is valid now and carries the CN the roster gives
that peer (``KeyVerifier``) before it shares anything. The server never holds a site's private
key, so it cannot sign keys for a peer; without TLS there is no certificate and no check.

The signed message is ECDSA-SHA256 over a length-prefixed encoding of (``LABEL``, run id, round,
site, enc_pk, mask_pk): a signature from one run, round or site never verifies for another.
Only ``cryptography``'s public API is used.
"""

from __future__ import annotations

import datetime as dt
import struct
from collections.abc import Callable, Mapping
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

# A role's directory as `fedonco certs` writes it (common/wire/tls.py takes the names from here)
CA_CERT, CERT, KEY = "ca.crt", "tls.crt", "tls.key"
LABEL = b"fedonco-secagg-keys-v1"
MAX_CERT_BYTES = 4096  # one PEM certificate of the federation: ~700 bytes
MAX_SIGNATURE_BYTES = 128  # a DER ECDSA signature: <= 72 bytes on P-256, <= 139 on P-521
_FAILURES = (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm)


class KeyBindingError(ValueError):
    """A peer's keys are not bound to the certificate the roster gives it (or no binding came)."""


def binding_message(run: str, rnd: int, site: str, enc_pk: bytes, mask_pk: bytes) -> bytes:
    """What a site signs: each field length-prefixed (4 bytes), the round as 8 bytes."""
    if not isinstance(rnd, int) or not 0 <= rnd < 2**64:
        raise KeyBindingError(f"site {site!r}: round {rnd!r} is no unsigned 64-bit integer")
    fields = [LABEL, run.encode(), rnd.to_bytes(8, "big"), site.encode(), enc_pk, mask_pk]
    for f in fields:
        if not isinstance(f, bytes):
            raise KeyBindingError(f"site {site!r}: public keys must be bytes")
    return b"".join(struct.pack(">I", len(f)) + f for f in fields)


def _common_name(cert: x509.Certificate) -> str | None:
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return cns[0].value if len(cns) == 1 and isinstance(cns[0].value, str) else None


class KeySigner:
    """A site's signing side: its certificate's private key (an EC key, as `fedonco certs`
    issues) and the certificate (PEM), sent along so peers need nothing but the CA."""

    def __init__(self, private_key: ec.EllipticCurvePrivateKey, certificate_pem: bytes) -> None:
        if not isinstance(private_key, ec.EllipticCurvePrivateKey):
            raise KeyBindingError("the site's certificate key is not an EC key")
        if len(certificate_pem) > MAX_CERT_BYTES:
            raise KeyBindingError(f"the site's certificate exceeds {MAX_CERT_BYTES} bytes")
        cert = x509.load_pem_x509_certificate(certificate_pem)
        mine = serialization.PublicFormat.SubjectPublicKeyInfo
        enc = serialization.Encoding.DER
        if cert.public_key().public_bytes(enc, mine) != private_key.public_key().public_bytes(
            enc, mine
        ):
            raise KeyBindingError("the site's private key does not belong to its certificate")
        self._key, self.certificate_pem = private_key, certificate_pem

    @classmethod
    def from_tls_dir(cls, tls_dir: Path) -> KeySigner:
        """The signer of a site's TLS directory (``tls.key`` and ``tls.crt``)."""
        tls_dir = Path(tls_dir)
        key = serialization.load_pem_private_key((tls_dir / KEY).read_bytes(), password=None)
        return cls(key, (tls_dir / CERT).read_bytes())  # type: ignore[arg-type]

    def __repr__(self) -> str:  # never the key
        return "KeySigner(<certificate key>)"

    def sign(
        self, run: str, rnd: int, site: str, enc_pk: bytes, mask_pk: bytes
    ) -> tuple[bytes, bytes]:
        """(signature over the binding message, certificate PEM)."""
        msg = binding_message(run, rnd, site, enc_pk, mask_pk)
        return self._key.sign(msg, ec.ECDSA(hashes.SHA256())), self.certificate_pem


class KeyVerifier:
    """Checks a peer's binding: ``verifier(run, rnd, site, enc_pk, mask_pk, signature,
    certificate)`` returns None or raises KeyBindingError naming the site and the reason.

    ``ca_pem``: the federation's CA certificate; ``names``: site -> the CN the roster gives its
    certificate (``Config.site_certs``). ``clock``: the time validity is checked at (now, UTC)."""

    def __init__(
        self,
        ca_pem: bytes,
        names: Mapping[str, str],
        clock: Callable[[], dt.datetime] | None = None,
    ) -> None:
        try:
            self._ca = x509.load_pem_x509_certificate(ca_pem)
        except _FAILURES as err:
            raise KeyBindingError(f"the CA certificate does not load: {err}") from None
        self._names = dict(names)
        self._clock = clock or (lambda: dt.datetime.now(dt.timezone.utc))

    @classmethod
    def from_tls_dir(cls, tls_dir: Path, names: Mapping[str, str]) -> KeyVerifier:
        """The verifier for a role's TLS directory (its ``ca.crt``) and the roster's CNs."""
        return cls((Path(tls_dir) / CA_CERT).read_bytes(), names)

    def __call__(
        self,
        run: str,
        rnd: int,
        site: str,
        enc_pk: bytes,
        mask_pk: bytes,
        signature: bytes,
        certificate: bytes,
    ) -> None:
        def fail(reason: str) -> KeyBindingError:
            return KeyBindingError(f"site {site!r}: {reason}")

        if not isinstance(signature, bytes) or not isinstance(certificate, bytes):
            raise fail("signature and certificate must be bytes")
        if not signature or not certificate:
            raise fail("no signature or no certificate came with its keys")
        if len(certificate) > MAX_CERT_BYTES:
            raise fail(f"certificate of {len(certificate)} bytes > {MAX_CERT_BYTES}")
        if len(signature) > MAX_SIGNATURE_BYTES:
            raise fail(f"signature of {len(signature)} bytes > {MAX_SIGNATURE_BYTES}")
        if site not in self._names:
            raise fail("not in the roster")
        msg = binding_message(run, rnd, site, enc_pk, mask_pk)
        try:
            cert = x509.load_pem_x509_certificate(certificate)
        except _FAILURES as err:
            raise fail(f"the certificate does not load ({err})") from None
        try:
            cert.verify_directly_issued_by(self._ca)
        except _FAILURES:
            raise fail("the certificate is not issued by the federation's CA") from None
        now, start, end = self._clock(), cert.not_valid_before_utc, cert.not_valid_after_utc
        if not start <= now <= end:
            raise fail(f"the certificate is not valid now (valid {start} to {end})")
        try:
            constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            constraints = None
        except (*_FAILURES, x509.DuplicateExtension) as err:
            raise fail(f"the certificate's extensions do not parse ({err})") from None
        if constraints is not None and constraints.ca:
            raise fail("the certificate is a CA certificate, not a site's")
        try:
            cn = _common_name(cert)
        except _FAILURES as err:
            raise fail(f"the certificate's subject does not parse ({err})") from None
        if cn != self._names[site]:
            raise fail(f"certificate CN {cn!r} is not the roster's {self._names[site]!r}")
        try:
            key = cert.public_key()
        except _FAILURES as err:
            raise fail(f"the certificate's key does not load ({err})") from None
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise fail("the certificate's key is not an EC key")
        try:
            key.verify(signature, msg, ec.ECDSA(hashes.SHA256()))
        except _FAILURES:
            raise fail(
                "the signature does not verify for these keys, run and round under its certificate"
            ) from None
