"""Mutual TLS for the federation: the certificate authority, and gRPC credentials from files.

``fedonco certs`` makes a private CA (kept by the federation operator), one server certificate and
one client certificate per site. Each role gets a self-contained directory holding exactly what it
needs and nothing more::

    certs/ca.crt, certs/ca.key          the CA (ca.key never leaves the operator)
    certs/server/{ca.crt,tls.crt,tls.key}
    certs/site-A/{ca.crt,tls.crt,tls.key}   ... one per site
    certs/release/{ca.crt,tls.crt,tls.key}  the release service (a public, server-authenticated
                                            endpoint; its certificate names ``release``)
    certs/attacker/{ca.crt,tls.crt,tls.key} a caller of the release service (the judge's attacker):
                                            with client certificates required, it names the caller
                                            for the query budget

A site's identity is the certificate's common name, ``site-<ID>`` (or the roster's ``cert_name``
for the site): the server reads it from the TLS handshake (``peer_common_name``) and refuses a
call whose claimed site ID has another CN in the roster. The server requires a client
certificate signed by the CA; clients verify the server against the same CA. Private keys
are written with mode 0600 and never logged.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import logging
import os
from pathlib import Path

import grpc

from common.config import SITE_CERT_PREFIX, default_cert_name
from common.io import PUBLIC_DIR, secure_dir, write_bytes_atomic
from common.keybind import CA_CERT, CERT, KEY  # a role directory's files (ca.crt, tls.crt/key)
from common.wire.options import CertsOptions

log = logging.getLogger(__name__)

SITE_PREFIX = SITE_CERT_PREFIX
DEFAULT_SERVER_NAMES = ("server", "localhost", "127.0.0.1")
DEFAULT_RELEASE_NAMES = ("release", "localhost", "127.0.0.1")
RELEASE_ROLE, ATTACKER_ROLE = "release", "attacker"


def site_common_name(site: str) -> str:
    return default_cert_name(site)


def _name(cn: str):
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "FedOnco-Bench federation"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def _key():
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _cert_pem(cert) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return cert.public_bytes(serialization.Encoding.PEM)


def _sans(names: list[str]):
    from cryptography import x509

    out = []
    for n in names:
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            out.append(x509.DNSName(n))
    return x509.SubjectAlternativeName(out)


def _issue(cn: str, issuer_key, issuer_name, *, ca: bool, server_names=None, days: int = 825):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID

    key = _key()
    now = dt.datetime.now(dt.timezone.utc)
    b = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(issuer_name or _name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True)
    )
    if ca:
        b = b.add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
    else:
        # The server certificate also authenticates as a client: its own health probe (the
        # port requires client certificates) uses it. Site certificates are client-only.
        usage = [ExtendedKeyUsageOID.CLIENT_AUTH]
        if server_names:
            usage.insert(0, ExtendedKeyUsageOID.SERVER_AUTH)
        b = b.add_extension(x509.ExtendedKeyUsage(usage), critical=False)
        b = b.add_extension(_sans(list(server_names or [cn])), critical=False)
    cert = b.sign(issuer_key or key, hashes.SHA256())
    return key, cert


def _write(path: Path, data: bytes, private: bool = False) -> None:
    secure_dir(path.parent, PUBLIC_DIR)  # a role's directory: never writable by others
    write_bytes_atomic(path, data, mode=0o600 if private else 0o644)


def make_certs(
    out: Path,
    sites: list[str],
    server_names: list[str] | None = None,
    force: bool = False,
    release_names: list[str] | None = None,
    owner: tuple[int, int] | None = None,
    common_names: dict[str, str] | None = None,
) -> dict[str, Path]:
    """Create the CA, the server certificate, one certificate per site, the release service's
    certificate and the attacker's (a release-service caller) under ``out``.

    Site ``s``'s certificate is in ``out/site-<s>`` with CN ``common_names[s]`` (a roster's
    ``cert_name``; default ``site-<s>``).

    ``owner`` (uid, gid): hand each role's directory and files to the account its process runs
    as (e.g. a container's unprivileged user), keys staying 0600, i.e. readable by that account
    only; the CA key stays with the caller. Changing to another owner needs privileges (root).

    Returns {role: directory}. Refuses to overwrite an existing CA unless ``force``: a new CA
    invalidates every certificate already handed out to the sites."""
    out = Path(out)
    if (out / CA_CERT).exists() and not force:
        raise FileExistsError(
            f"{out / CA_CERT} exists; a new CA would invalidate every issued certificate "
            "(use --force to replace it)"
        )
    if not sites:
        raise ValueError("give at least one site")
    names = list(server_names or DEFAULT_SERVER_NAMES)
    ca_key, ca_cert = _issue("FedOnco-Bench federation CA", None, None, ca=True, days=3650)
    ca_pem = _cert_pem(ca_cert)
    _write(out / "ca.key", _key_pem(ca_key), private=True)
    _write(out / CA_CERT, ca_pem)
    release = list(release_names or DEFAULT_RELEASE_NAMES)
    cns = common_names or {}
    roles = {"server": (names[0], names)} | {
        site_common_name(s): (cns.get(s, site_common_name(s)), None) for s in sites
    }
    roles |= {RELEASE_ROLE: (release[0], release), ATTACKER_ROLE: (ATTACKER_ROLE, None)}
    dirs = {}
    for role, (cn, sans) in roles.items():
        key, cert = _issue(cn, ca_key, ca_cert.subject, ca=False, server_names=sans)
        d = out / role
        _write(d / CA_CERT, ca_pem)
        _write(d / CERT, _cert_pem(cert))
        _write(d / KEY, _key_pem(key), private=True)
        if owner is not None:
            for path in (d, d / CA_CERT, d / CERT, d / KEY):
                os.chown(path, *owner)
        dirs[role] = d
    log.info(
        "wrote a CA, a server certificate (%s), %d site certificates, a release-service "
        "certificate (%s) and an attacker certificate to %s",
        ", ".join(names),
        len(sites),
        ", ".join(release),
        out,
    )
    return dirs


def _read_role(tls_dir: Path) -> tuple[bytes, bytes, bytes]:
    tls_dir = Path(tls_dir)
    files = [tls_dir / n for n in (CA_CERT, CERT, KEY)]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(
            f"TLS directory {tls_dir} lacks {', '.join(missing)} (make them with `fedonco certs`)"
        )
    try:
        ca, cert, key = (f.read_bytes() for f in files)
    except PermissionError as e:
        raise PermissionError(_unreadable(Path(e.filename))) from None
    return ca, cert, key


def _unreadable(path: Path) -> str:
    """What an operator does about a key this process may not read (typically: a container that
    runs as an unprivileged user, a key owned by root)."""
    st = path.stat()
    uid, gid = os.getuid(), os.getgid()
    return (
        f"cannot read {path} as uid {uid} (gid {gid}): it belongs to uid {st.st_uid} "
        f"(gid {st.st_gid}), mode {st.st_mode & 0o777:04o}. Run this process as uid "
        f"{st.st_uid} (docker run --user {st.st_uid}:{st.st_gid}), or hand the directory to uid "
        f"{uid}: chown -R {uid}:{gid} {path.parent}, or issue it with "
        f"`fedonco certs --owner {uid}:{gid}`"
    )


def server_credentials(tls_dir: Path, require_client_auth: bool = True) -> grpc.ServerCredentials:
    """Server side of TLS: present the server certificate; with ``require_client_auth`` (mutual
    TLS, the federation) a CA-signed client certificate is required, without it none is asked for
    (gRPC's Python API has no "verify if presented" mode)."""
    ca, cert, key = _read_role(tls_dir)
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=ca, require_client_auth=require_client_auth
    )


def ca_channel_credentials(tls_dir: Path) -> grpc.ChannelCredentials:
    """Client side of server-authenticated TLS: verify the server against ``tls_dir/ca.crt``;
    present a client certificate too when the directory holds one (``tls.crt`` + ``tls.key``)."""
    tls_dir = Path(tls_dir)
    if (tls_dir / CERT).is_file() and (tls_dir / KEY).is_file():
        return channel_credentials(tls_dir)
    if not (tls_dir / CA_CERT).is_file():
        raise FileNotFoundError(f"TLS directory {tls_dir} lacks {tls_dir / CA_CERT}")
    return grpc.ssl_channel_credentials(root_certificates=(tls_dir / CA_CERT).read_bytes())


def channel_credentials(tls_dir: Path) -> grpc.ChannelCredentials:
    """Client side of mutual TLS: verify the server against the CA, present this site's cert."""
    ca, cert, key = _read_role(tls_dir)
    return grpc.ssl_channel_credentials(
        root_certificates=ca, private_key=key, certificate_chain=cert
    )


def certificate_cn(tls_dir: Path) -> str:
    """The common name of the certificate in ``tls_dir``."""
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    cert = x509.load_pem_x509_certificate((Path(tls_dir) / CERT).read_bytes())
    return cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value


def certificate_site(tls_dir: Path) -> str | None:
    """The site ID a client certificate of the default naming stands for (``site-A`` -> ``A``),
    or None."""
    cn = certificate_cn(tls_dir)
    return cn[len(SITE_PREFIX) :] if cn.startswith(SITE_PREFIX) else None


def peer_common_name(context: grpc.ServicerContext) -> str | None:
    """The CN of the peer's verified client certificate ("" if it has none), or None without
    TLS. The server compares it with the roster's CN of the site the call claims to be."""
    auth = context.auth_context()
    if auth.get("transport_security_type", [b""])[0] != b"ssl":
        return None
    cns = auth.get("x509_common_name") or [b""]
    return cns[0].decode(errors="replace")


# OpenSSL's verify codes that mean "not signed by a CA I trust", a name mismatch, and expiry
_UNKNOWN_CA = {2, 7, 18, 19, 20, 21}  # 7: signed by another key of the same name
_NAME_MISMATCH = {62, 64}
_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


def diagnose_tls(address: str, tls_dir: Path, timeout: float = 10.0) -> str | None:
    """Why a site cannot talk TLS to ``address`` with ``tls_dir``, in words an IT person can act
    on — or None when the handshake works (or nothing listens yet: not a TLS problem).

    gRPC reports every handshake failure as UNAVAILABLE; this makes the handshake itself with
    Python's ssl module (same CA, client certificate, server name and ALPN "h2" as the site's
    channel) and then the HTTP/2 preface, after which a server that refuses the client's
    certificate says so (TLS 1.3 sends that verdict after the handshake)."""
    import socket
    import ssl

    tls_dir = Path(tls_dir)
    _read_role(tls_dir)  # missing or unreadable files: say which and what to do
    host, port = address.rsplit(":", 1)
    host = host.strip("[]")
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(tls_dir / CA_CERT))
    ctx.load_cert_chain(str(tls_dir / CERT), str(tls_dir / KEY))
    ctx.set_alpn_protocols(["h2"])
    try:
        sock = socket.create_connection((host, int(port)), timeout=timeout)
    except OSError:
        return None  # nothing listens (yet): the site's retries handle that
    try:
        with ctx.wrap_socket(sock, server_hostname=host) as tls:
            tls.sendall(_H2_PREFACE)
            tls.settimeout(5.0)
            answer = b"?"
            with contextlib.suppress(TimeoutError):
                answer = tls.recv(1)  # a gRPC server answers the preface with its SETTINGS
        if answer == b"":  # closed right after the handshake: the client certificate's verdict
            return (
                f"the server closed the connection right after the TLS handshake: it refused "
                f"this site's certificate ({tls_dir / CERT} is not signed by the federation's "
                "CA, or has expired); ask the operator for this site's directory from "
                "`fedonco certs`"
            )
        return None
    except ssl.SSLCertVerificationError as err:
        code = err.verify_code
        if code in _NAME_MISMATCH:
            return (
                f"the server's certificate is not for the name {host!r} that this site dials "
                f"(OpenSSL: {err.verify_message}); dial a name on the server certificate, or "
                "have the operator add it: fedonco certs --server-name NAME"
            )
        if code in _UNKNOWN_CA:
            return (
                f"the server's certificate is not signed by the CA in {tls_dir / CA_CERT} "
                f"(unknown CA; OpenSSL: {err.verify_message}): this certificate directory "
                "belongs to another federation, or the server runs with another CA"
            )
        if code == 10:
            return "the server's certificate has expired; the operator must issue a new one"
        return f"the server's certificate failed verification: {err.verify_message}"
    except ssl.SSLError as err:
        reason = (err.reason or str(err)).upper()
        if (
            "WRONG_VERSION_NUMBER" in reason
            or "RECORD_LAYER" in reason
            or "PACKET_LENGTH" in reason
        ):
            return (
                f"{address} does not speak TLS (a plaintext server?): start the server with "
                "--tls-dir, or check the address"
            )
        if "CERTIFICATE" in reason or "UNKNOWN_CA" in reason or "ACCESS_DENIED" in reason:
            return (
                f"the server refused this site's certificate ({err.reason}): "
                f"{tls_dir / CERT} is not signed by the federation's CA, or has expired; "
                "ask the operator for this site's directory from `fedonco certs`"
            )
        return f"the TLS handshake with {address} failed: {err}"
    except (ConnectionResetError, BrokenPipeError, ssl.SSLEOFError, EOFError):
        return (
            f"{address} closed the connection during the TLS handshake: it probably speaks "
            "plaintext (start the server with --tls-dir) or is not a FedOnco server"
        )
    except OSError:
        return None


def is_loopback(address: str) -> bool:
    host = address.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def plaintext_allowed(address: str, insecure: bool, role: str) -> None:
    """Plaintext gRPC is for localhost tests; anywhere else it needs an explicit opt-in and says
    so loudly (updates and site identities travel unprotected)."""
    if is_loopback(address):
        return
    if not insecure:
        raise ValueError(
            f"{role}: refusing plaintext gRPC on {address}; give --tls-dir (mutual TLS, see "
            "`fedonco certs`) or, for a closed test network only, --insecure / FEDONCO_INSECURE=1"
        )
    log.warning(
        "!!! %s: PLAINTEXT gRPC on %s: model updates are unencrypted and site identities are "
        "NOT authenticated. Test networks only; use --tls-dir for a real federation. !!!",
        role,
        address,
    )


def run_certs_cmd(args: CertsOptions) -> int:
    sites = [s.strip() for s in args.sites.split(",") if s.strip()]
    cns = None
    if args.config:  # the roster's sites, each with its certificate's CN
        from common.config import load_config

        roster = load_config(args.config)
        sites, cns = roster.site_names, roster.site_certs
    dirs = make_certs(
        Path(args.out),
        sites,
        args.server_name,
        force=args.force,
        release_names=args.release_name,
        owner=args.owner,
        common_names=cns,
    )
    print(f"CA: {Path(args.out) / CA_CERT} (keep {Path(args.out) / 'ca.key'} private)")
    for role, d in dirs.items():
        print(f"{role:>8}: {d}/  ({CA_CERT}, {CERT}, {KEY})")
    return 0
