"""Secure aggregation: Bonawitz et al. 2017 pairwise masking, with SecAgg+ neighbour graphs.

Pure protocol core (no gRPC, no torch): the server learns only the sum of the surviving sites'
uint32 vectors. Bonawitz et al., "Practical Secure Aggregation for Privacy-Preserving Machine
Learning" (CCS'17); sparse graph from Bell et al., "Secure Single-Server Aggregation with
(Poly)Logarithmic Overhead" (CCS'20). Threat model: up to n - t sites dropping at any stage; the
server learns only sums of >= t inputs of a neighbourhood, also when it lies about who dropped
(a site reveals shares only for a survivor set that includes itself, keeps >= t of its
neighbourhood, and that >= t of its neighbourhood confirmed with a MAC under their pairwise keys:
stage 4, Bonawitz's consistency check with pairwise MACs in place of signatures). A server that
substitutes public keys in stage 2 is stopped only where the sites check that each peer's keys
are bound to its identity (``SecAggClient(verify=...)``: under mutual TLS, a signature by the
peer's CA-issued certificate, ``common/keybind.py``); without it nothing binds them. Not covered:
colluding sites. docs/threat-model.md states who is trusted for what.

Stages (U1 >= U2 >= U3 >= U4 >= U5: the sites still present after each one):
  1. advertise keys  client -> server: two fresh X25519 public keys (enc, mask), 32 bytes each
                     (under mutual TLS with the site's signature over them and its certificate).
  2. share keys      server -> client: the U1 keys (+ its neighbours; with ``verify``, every one
                     checked against its binding first); client -> server: one AES-GCM
                     ciphertext (CT_LEN bytes) per neighbour with its Shamir shares of the
                     self-mask seed b and of the mask secret key.
  3. masked input    server -> client: the ciphertexts addressed to it (from its U2 neighbours);
                     client -> server: y = x + PRG(b) +- sum_j PRG(s_ij), uint32 (4 bytes/param).
  4. consistency     server -> client: the survivors U3; client -> server: one TAG_LEN-byte
                     HMAC of U3 per neighbour in U3, under their pairwise key (the server cannot
                     forge one). The site refuses a U3 without itself or with < t of its
                     neighbourhood.
  5. unmasking       server -> client: (survivors U3, dropped U2 \\ U3, the tags addressed to it);
                     client -> server: one SHARE_LEN-byte share per peer of its neighbourhood (b
                     for survivors, the mask key for dropped peers), only if U3 is the set it
                     confirmed, its dropped neighbours are exactly those it holds shares of and
                     that are not in U3, and >= t of its closed neighbourhood confirmed the same
                     U3. The server removes all masks and keeps the sum.
Crypto is from ``cryptography`` only: X25519, HKDF-SHA256, AES-256-GCM (shares) and the AES-256-CTR
keystream viewed as uint32 (masks). Shamir sharing (ours) is over GF(2**521 - 1).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import os
import secrets
import struct
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

log = logging.getLogger(__name__)

_LABEL = b"fedonco-secagg/v2"  # v2: masks and confirmations bound to the round (mask_context)
PRIME = 2**521 - 1  # Mersenne prime > 2**256: every 32-byte secret is a field element
SHARE_LEN = 2 + 66  # x (uint16) || y (521 bits), big-endian
CT_LEN = 12 + 2 * SHARE_LEN + 16  # nonce || AES-GCM(b share || mask-key share) || tag = 164
KEY_LEN = 32
TAG_LEN = 32  # HMAC-SHA256 of a survivor set (stage 4)
STAGES = ("advertise_keys", "share_keys", "masked_input", "consistency", "unmasking")
_CHUNK = 1 << 15  # words per keystream block (128 KiB): the accumulator chunk stays in cache
_ZEROS = bytes(4 * _CHUNK)
Keys = Mapping[str, tuple[bytes, bytes]]  # site -> (enc_pk, mask_pk)
Bindings = Mapping[str, tuple[bytes, bytes]]  # site -> (signature, certificate) over its keys
# verify(run_id, rnd, site, enc_pk, mask_pk, signature, certificate): raises ValueError unless
# the certificate binds those keys to the site (common.keybind.KeyVerifier)
Verify = Callable[[str, int, str, bytes, bytes, bytes, bytes], object]


class SecAggError(ValueError):
    """A bad, replayed or cross-round message, or a request the protocol forbids."""


class SecAggAbort(RuntimeError):
    """Fewer than t sites (of a neighbourhood) survived a stage: the round is aborted."""


# -- quantisation --------------------------------------------------------------------------------
# Site k sends q_k = rint(s * clip(v_k, +-c*n_k)). Rounding adds at most 1/2 and the float64
# product s*v at most 2**31 * 2**-53 = 2**-22, so |q_k| <= s*c*n_k + 1/2 + 2**-22 and, with
# sum n_k <= W over m sites, |sum q_k| <= s*c*W + m*(1/2 + 2**-22). Taking
#     s = (2**31 - 2 - m/2) / (c*W)
# keeps it <= 2**31 - 2 + m*2**-22 < 2**31 - 1 (m < 2**22): the two's complement sum in Z_(2**32)
# never wraps, and the spare unit also absorbs the rounding of s itself; that is the largest scale
# up to that one unit. The dequantised sum differs from the exact sum of the clipped inputs by at
# most m*(1/2 + 2**-20)/s (rounding, float64 products, the int->float division and the float64
# reference sum): ``quantization_error_bound``. Rounding is deterministic: np.rint, half to even.


def quantization_scale(clip: float, max_total_weight: float, max_sites: int | None = None) -> float:
    """Largest s such that the sum of all sites' quantised vectors cannot leave int32.

    ``max_sites`` (m) defaults to floor(max_total_weight): weights are sample counts, so at most
    that many sites have weight >= 1 (a weight-0 site sends exact zeros). Pass it for other weights.
    """
    if not (clip > 0 and math.isfinite(clip) and max_total_weight > 0):
        raise ValueError(f"need clip > 0 and max_total_weight > 0, got {clip}, {max_total_weight}")
    if max_sites is None:
        if max_total_weight < 1:
            raise ValueError("max_total_weight < 1: weights are not sample counts; pass max_sites")
        max_sites = math.floor(max_total_weight)
    if not 1 <= max_sites < 2**22:
        raise ValueError(f"max_sites must be in [1, 2**22), got {max_sites}")
    return (2.0**31 - 2 - max_sites / 2) / (clip * max_total_weight)


def quantize(
    weighted: np.ndarray, weight: float, clip: float, scale: float
) -> tuple[np.ndarray, int]:
    """(rint(scale * clip(weighted, +-clip*weight)) as uint32 two's complement, #clipped)."""
    lim = float(scale) * (float(clip) * float(weight))  # s * (the clip bound c*n_k)
    if not (weight >= 0 and clip > 0 and scale > 0 and lim < 2**31 - 1):
        raise ValueError(f"need weight >= 0, clip > 0, scale > 0 and one site within int32: {lim}")
    x = np.asarray(weighted)
    if x.ndim != 1 or x.dtype.kind != "f":
        raise ValueError(f"weighted must be a flat float array, got {x.dtype} {x.shape}")
    out, clipped = np.empty(x.size, np.int32), 0
    tmp = np.empty(min(x.size, _CHUNK), np.float64)  # cache-sized scratch, no big temporaries
    for start in range(0, x.size, _CHUNK):
        y = tmp[: min(_CHUNK, x.size - start)]
        np.multiply(x[start : start + y.size], np.float64(scale), out=y)
        clipped += int(np.count_nonzero(np.abs(y) > lim))  # fl(s*x) is monotone in x
        np.rint(np.clip(y, -lim, lim, out=y), out=y)
        if np.isnan(y).any():
            raise ValueError("update contains NaN; refusing to quantise it")
        out[start : start + y.size] = y
    return out.view(np.uint32), clipped


def dequantize(total: np.ndarray, scale: float) -> np.ndarray:
    """uint32 sum (two's complement) -> signed float64 values."""
    if total.dtype != np.uint32:
        raise ValueError(f"expected uint32, got {total.dtype}")
    return total.view(np.int32).astype(np.float64) / scale


def quantization_error_bound(n_sites: int, scale: float) -> float:
    """Max |dequantize(sum) - exact sum of the clipped inputs| per element, for n_sites sites."""
    return n_sites * (0.5 + 2.0**-20) / scale


# -- Shamir t-of-n over GF(PRIME) -----------------------------------------------------------------


def _encode_share(x: int, y: int) -> bytes:
    return struct.pack(">H", x) + y.to_bytes(66, "big")


def _decode_share(share: bytes) -> tuple[int, int]:
    if not isinstance(share, bytes) or len(share) != SHARE_LEN:
        raise SecAggError(f"a share must be {SHARE_LEN} bytes")
    x, y = struct.unpack(">H", share[:2])[0], int.from_bytes(share[2:], "big")
    if x == 0 or y >= PRIME:
        raise SecAggError("malformed share")
    return x, y


def shamir_split(secret: bytes, threshold: int, xs: Iterable[int]) -> dict[int, bytes]:
    """x -> share f(x), f random of degree threshold-1 with f(0) = secret (32 bytes)."""
    xs = list(xs)
    if len(secret) != 32 or not 1 <= threshold <= len(xs) or len(set(xs)) != len(xs):
        raise ValueError("need a 32-byte secret and 1 <= threshold <= #distinct xs")
    if not all(0 < x < 2**16 for x in xs):
        raise ValueError("x-coordinates must be in [1, 65535]")
    coeffs = [int.from_bytes(secret, "big")]
    coeffs += [secrets.randbelow(PRIME) for _ in range(threshold - 1)]
    out = {}
    for x in xs:
        y = 0
        for c in reversed(coeffs):
            y = (y * x + c) % PRIME
        out[x] = _encode_share(x, y)
    return out


@functools.lru_cache(maxsize=4096)
def _lagrange_weights(xs: tuple[int, ...], x: int) -> tuple[int, ...]:
    """w_i with f(x) = sum_i w_i * f(xs_i) for every f of degree < len(xs) (mod PRIME).

    Depends only on the x-coordinates: the unmasking of one round interpolates every site's
    secret from the same holders (the complete graph) or from few (SecAgg+), so the O(t^2)
    products and t inversions are made once per (holders, point), not once per secret and
    check: 100 sites took 7 s of unmasking without the cache, O(n * (n - t) * t^2)."""
    out = []
    for i, xi in enumerate(xs):
        num = den = 1
        for j, xj in enumerate(xs):
            if j != i:
                num, den = num * (x - xj) % PRIME, den * (xi - xj) % PRIME
        out.append(num * pow(den, -1, PRIME) % PRIME)
    return tuple(out)


def interpolate(points: Sequence[tuple[int, int]], x: int) -> int:
    """Value at x of the unique polynomial of degree < len(points) through points (mod PRIME)."""
    weights = _lagrange_weights(tuple(xi for xi, _ in points), x)
    return sum(w * yi for w, (_, yi) in zip(weights, points, strict=True)) % PRIME


def shamir_combine(shares: Sequence[bytes], threshold: int) -> bytes:
    """The 32-byte secret from >= threshold shares; extra shares must lie on the same polynomial."""
    pts = [_decode_share(s) for s in shares]
    if len({x for x, _ in pts}) != len(pts):
        raise SecAggError("duplicate share x-coordinates")
    if len(pts) < threshold:
        raise SecAggAbort(f"{len(pts)} shares, need {threshold}")
    base = pts[:threshold]
    if any(interpolate(base, x) != y for x, y in pts[threshold:]):
        raise SecAggError("inconsistent shares: they do not lie on one polynomial")
    secret = interpolate(base, 0)
    if secret >= 2**256:
        raise SecAggError("shares reconstruct to no 32-byte secret")
    return secret.to_bytes(32, "big")


# -- key derivation, mask expansion, neighbour graph ----------------------------------------------


def _pack(*fields: str | int | bytes) -> bytes:
    """Unambiguous encoding: each field length-prefixed (ints as 8 bytes)."""
    out = [_LABEL]
    for f in fields:
        b = f.encode() if isinstance(f, str) else f.to_bytes(8, "big") if isinstance(f, int) else f
        out.append(struct.pack(">I", len(b)) + b)
    return b"".join(out)


def _hkdf(ikm: bytes, info: bytes, length: int = KEY_LEN) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info).derive(ikm)


def _exchange(sk: X25519PrivateKey, pk: bytes) -> bytes:
    try:
        return sk.exchange(X25519PublicKey.from_public_bytes(pk))
    except ValueError as err:  # a low-order point gives an all-zero secret
        raise SecAggError(f"unusable X25519 public key: {err}") from err


def self_mask_seed(b: bytes, run_id: str, rnd: int, site: str) -> bytes:
    """48 bytes (AES-256 key || CTR IV) for a site's self-mask PRG(b) in one round."""
    return _hkdf(b, _pack("self-mask", run_id, rnd, site), 48)


def pair_mask_seed(
    shared: bytes, run_id: str, rnd: int, a: str, b: str, context: bytes = b""
) -> bytes:
    """48 bytes for the pairwise mask PRG(s_ab), from the X25519 secret of the two mask keys and
    the round's ``context`` as each of the two sites saw it (``mask_context``): the masks of two
    sites cancel only if the server sent both the same round."""
    lo, hi = sorted((a, b))
    return _hkdf(shared, _pack("pair-mask", run_id, rnd, lo, hi, context), 48)


# Per-site seeds are the one field of the orders that differs between the sites of a round.
_PER_SITE_ORDERS = frozenset({"seed"})


def round_digest(tensors: Mapping[str, np.ndarray], orders: Mapping[str, object]) -> bytes:
    """SHA-256 of what the server sent a site for a round and every site of it gets alike: the
    tensors of the fit task (global model and extras: name, dtype, shape, bytes) and the orders
    but their per-site seed. Site and server compute it from the decoded task."""
    h = hashlib.sha256(_LABEL + b"round")
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name])
        h.update(_pack("tensor", name, a.dtype.str, repr(a.shape), a.tobytes()))
    for key in sorted(set(orders) - _PER_SITE_ORDERS):
        h.update(_pack("order", key, repr(orders[key])))
    return h.digest()


def mask_context(digest: bytes, scale: float, clip: float) -> bytes:
    """What a site's pairwise masks and its confirmation are bound to: the round's digest and
    the masked-input stage's quantisation (a server that sent one site another model, other
    orders or another scale could otherwise read that site's update off a sum whose other
    inputs it made zero)."""
    return digest + struct.pack(">dd", float(scale), float(clip))


def apply_masks(
    acc: np.ndarray, streams: Iterable[tuple[bytes, int]], addends: Sequence[np.ndarray] = ()
) -> None:
    """acc += sum(addends) + sum(sign * PRG(seed) for seed, sign in streams), in place, mod 2**32.

    PRG(seed) = the AES-256-CTR keystream (key seed[:32], IV seed[32:]) viewed as uint32. The
    vector goes through in cache-sized chunks, every stream advancing over the same chunk.
    """
    if acc.dtype != np.uint32 or acc.ndim != 1 or not acc.flags.c_contiguous:
        raise ValueError("acc must be a flat, contiguous uint32 array")
    encs = [
        (Cipher(algorithms.AES(s[:32]), modes.CTR(s[32:48])).encryptor(), g) for s, g in streams
    ]
    buf = bytearray(4 * _CHUNK + 15)  # update_into wants len(data) + block_size - 1
    ks, zeros = np.frombuffer(buf, np.uint32, count=_CHUNK), memoryview(_ZEROS)
    for start in range(0, acc.size, _CHUNK):
        part = acc[start : start + _CHUNK]
        m = part.size
        for a in addends:
            np.add(part, a[start : start + m], out=part)
        for enc, sign in encs:
            enc.update_into(zeros[: 4 * m], buf)
            (np.add if sign > 0 else np.subtract)(part, ks[:m], out=part)


def neighbour_graph(
    run_id: str, rnd: int, sites: Iterable[str], k: int | None = None
) -> dict[str, list[str]]:
    """Each site's neighbours (itself excluded). k=None or k >= n-1: the complete graph.

    Otherwise a Harary ring: the sites ordered by SHA-256(run_id, rnd, site) (deterministic, fresh
    each round), each linked to the ceil(k/2) nearest on either side: k-regular for even k (an odd
    k is rounded up to k+1).
    """
    sites = sorted(sites)
    n = len(sites)
    if k is None or k >= n - 1:
        return {s: [j for j in sites if j != s] for s in sites}
    if k < 1:
        raise ValueError(f"neighbours must be >= 1, got {k}")
    half = (k + 1) // 2
    order = sorted(sites, key=lambda s: hashlib.sha256(_pack("graph", run_id, rnd, s)).digest())
    pos = {s: i for i, s in enumerate(order)}
    return {
        s: sorted({order[(pos[s] + d) % n] for d in range(-half, half + 1) if d}) for s in sites
    }


def _check_keys(keys: Keys) -> list[str]:
    """Sites whose keys are malformed or also used by another site (key copying): to be dropped."""
    owners: dict[bytes, set[str]] = {}
    bad = set()
    for site, pair in keys.items():
        pair = tuple(pair) if isinstance(pair, tuple | list) else ()
        if len(pair) != 2 or pair[0] == pair[1]:
            bad.add(site)
        for k in pair:
            if not isinstance(k, bytes) or len(k) != KEY_LEN:
                bad.add(site)
            else:
                owners.setdefault(k, set()).add(site)
    return sorted(bad | {s for o in owners.values() if len(o) > 1 for s in o})


def _aad(run_id: str, rnd: int, sender: str, recipient: str) -> bytes:
    return _pack("share", run_id, rnd, sender, recipient)


# -- client ---------------------------------------------------------------------------------------


class SecAggClient:
    """One site's side of one round, with fresh X25519 key pairs (os-random). ``expect``: the
    federation's (threshold t, neighbours k) as the site's own config gives them; the server's
    share-keys stage must then ask for exactly that t and this site's neighbours in the graph
    over the advertised keys (a server lowering t or shrinking a neighbourhood would unmask
    sums of fewer inputs). ``verify`` (``Verify``; under mutual TLS): every peer's keys of the
    share-keys stage must come with a binding to its identity that ``verify`` accepts (a server
    showing keys of its own in place of a peer's cannot sign them with the peer's certificate)."""

    def __init__(
        self,
        site: str,
        run_id: str,
        rnd: int,
        expect: tuple[int, int | None] | None = None,
        verify: Verify | None = None,
    ) -> None:
        if not site or not isinstance(rnd, int) or rnd < 0:
            raise ValueError("need a site name and a round number >= 0")
        self.site, self.run_id, self.rnd, self._expect = site, run_id, rnd, expect
        self._verify = verify
        self._enc_sk, self._mask_sk = X25519PrivateKey.generate(), X25519PrivateKey.generate()
        self._pub = tuple(k.public_key().public_bytes_raw() for k in (self._enc_sk, self._mask_sk))
        self._stage = "new"
        self._held: dict[str, tuple[bytes, bytes]] = {}  # sender -> (b share, mask-key share)
        self._revealed: dict[str, str] = {}  # peer -> "b" | "sk": one kind per peer (Bonawitz)

    def _at(self, stage: str, what: str) -> None:
        if self._stage != stage:
            raise SecAggError(f"{self.site}: {what} out of order (client at {self._stage!r})")

    def _share_key(self, peer: str) -> bytes:
        lo, hi = sorted((self.site, peer))
        shared = _exchange(self._enc_sk, self._keys[peer][0])
        return _hkdf(shared, _pack("share-enc", self.run_id, self.rnd, lo, hi))

    def advertise_keys(self) -> tuple[bytes, bytes]:
        self._at("new", "advertise keys")
        self._stage = "advertised"
        return self._pub

    def _check_bindings(self, public_keys: Keys, bindings: Bindings) -> None:
        """Refuse (SecAggError) unless every peer's keys come with a binding ``verify`` accepts."""
        for s in sorted(public_keys):
            if s == self.site:
                continue
            if s not in bindings:
                raise SecAggError(f"{self.site}: no key binding (signature, certificate) for {s}")
            try:
                self._verify(self.run_id, self.rnd, s, *public_keys[s], *bindings[s])
            except (ValueError, TypeError) as err:
                raise SecAggError(
                    f"{self.site}: the keys shown for {s} fail their key binding ({err})"
                ) from None

    def share_keys(
        self,
        public_keys: Keys,
        threshold: int,
        neighbours: Sequence[str] | None = None,
        bindings: Bindings | None = None,
    ) -> dict[str, bytes]:
        """Recipient -> AES-GCM ciphertext of my shares of b and of my mask secret key.

        ``neighbours`` (None: all of public_keys) is intersected with public_keys (U1); an empty
        list means no neighbours. A holder's x-coordinate is 1 + its index in sorted(public_keys).
        ``bindings``: each site's (signature, certificate) over its keys; with ``verify`` every
        peer in public_keys needs one that verifies, or nothing is shared (SecAggError).
        """
        self._at("advertised", "share keys")
        if bad := _check_keys(public_keys):
            raise SecAggError(f"duplicate or malformed public keys from {bad}")
        if tuple(public_keys.get(self.site, ())) != self._pub:
            raise SecAggError(f"{self.site}: my own public keys were not echoed back")
        if self._verify is not None:
            self._check_bindings(public_keys, bindings or {})
        self._keys = {s: tuple(k) for s, k in public_keys.items()}
        cand = public_keys if neighbours is None else neighbours
        self._nb = sorted({j for j in cand if j in public_keys and j != self.site})
        self.threshold = int(threshold)
        if not 2 <= self.threshold <= len(self._nb) + 1:
            raise SecAggError(f"threshold {threshold} needs 2..{len(self._nb) + 1} (neighbours+me)")
        if self._expect is not None:
            t, k = self._expect
            if self.threshold != t:
                raise SecAggError(
                    f"{self.site}: asked for threshold {threshold}, the federation's is {t}"
                )
            if self._nb != neighbour_graph(self.run_id, self.rnd, public_keys, k)[self.site]:
                raise SecAggError(
                    f"{self.site}: the server's neighbour set ({len(self._nb)} sites) is not the "
                    f"graph's over the {len(public_keys)} advertised keys"
                )
        xs = {s: i + 1 for i, s in enumerate(sorted(public_keys))}
        holders = [xs[j] for j in [*self._nb, self.site]]
        self._b = os.urandom(32)
        b_sh = shamir_split(self._b, self.threshold, holders)
        sk_sh = shamir_split(self._mask_sk.private_bytes_raw(), self.threshold, holders)
        self._held[self.site] = (b_sh[xs[self.site]], sk_sh[xs[self.site]])
        out = {}
        for j in self._nb:
            nonce, aad = os.urandom(12), _aad(self.run_id, self.rnd, self.site, j)
            pt = b_sh[xs[j]] + sk_sh[xs[j]]
            out[j] = nonce + AESGCM(self._share_key(j)).encrypt(nonce, pt, aad)
        self._stage = "shared"
        return out

    def masked_input(
        self, ciphertexts: Mapping[str, bytes], vector: np.ndarray, context: bytes = b""
    ) -> np.ndarray:
        """vector + PRG(b) + sum_{j<me} PRG(s_ij) - sum_{j>me} PRG(s_ij), j over the U2 senders.

        ``context`` (``mask_context``: the round this site was sent) goes into every pairwise
        seed and into this site's confirmations: sites sent different rounds get masks that do
        not cancel and tags that do not verify."""
        self._at("shared", "masked input")
        if not isinstance(vector, np.ndarray) or vector.dtype != np.uint32 or vector.ndim != 1:
            raise ValueError("vector must be a flat uint32 array (see quantize)")
        held = {}
        for sender, ct in ciphertexts.items():
            if sender not in self._nb or not isinstance(ct, bytes) or len(ct) != CT_LEN:
                raise SecAggError(f"{self.site}: bad ciphertext or non-neighbour {sender!r}")
            try:
                aad = _aad(self.run_id, self.rnd, sender, self.site)
                pt = AESGCM(self._share_key(sender)).decrypt(ct[:12], ct[12:], aad)
            except InvalidTag as err:
                raise SecAggError(
                    f"{self.site}: ciphertext from {sender!r} fails authentication "
                    "(tampered, replayed from another round or run, or misrouted)"
                ) from err
            held[sender] = (pt[:SHARE_LEN], pt[SHARE_LEN:])
        if len(held) + 1 < self.threshold:
            raise SecAggAbort(f"{self.site}: {len(held) + 1} of my neighbourhood left, need t")
        self._held.update(held)
        self._stage, self._context = "masked", bytes(context)
        ids = (self.run_id, self.rnd, self.site)
        streams = [(self_mask_seed(self._b, *ids), 1)]
        for j in sorted(held):
            shared = _exchange(self._mask_sk, self._keys[j][1])
            seed = pair_mask_seed(shared, *ids, j, self._context)
            streams.append((seed, 1 if j < self.site else -1))
        out = np.array(vector, dtype=np.uint32, order="C", copy=True)
        apply_masks(out, streams)
        return out

    def _view_tag(self, sender: str, recipient: str, view: Sequence[str]) -> bytes:
        """HMAC-SHA256 of the survivor set ``view`` and of the round's context (as this site saw
        it) from ``sender`` to ``recipient``, under a key only the two of them can derive (their
        X25519 agreement of stage 2)."""
        peer = recipient if sender == self.site else sender
        lo, hi = sorted((self.site, peer))
        key = _hkdf(
            _exchange(self._enc_sk, self._keys[peer][0]),
            _pack("view", self.run_id, self.rnd, lo, hi),
        )
        h = hmac.HMAC(key, hashes.SHA256())
        h.update(_pack("survivors", self.run_id, self.rnd, sender, recipient, self._context, *view))
        return h.finalize()

    def confirm(self, survivors: Sequence[str]) -> dict[str, bytes]:
        """Stage 4: neighbour -> my MAC of the survivor set, for each neighbour in it. Refuses
        (SecAggError) a set without me (my masked input arrived, or I would not be asked) or
        with fewer than t of my closed neighbourhood: the sum the server could unmask would be
        one of fewer than t inputs (e.g. a single peer's, isolated by claiming the others
        dropped)."""
        self._at("masked", "consistency")
        view = sorted(set(survivors))
        if len(view) != len(survivors):
            raise SecAggError("the survivor set names a site twice")
        if unknown := set(view) - set(self._keys):
            raise SecAggError(f"unknown sites {sorted(unknown)} among the survivors")
        if self.site not in view:
            raise SecAggError(f"{self.site}: the survivor set leaves out my own masked input")
        mine = set(self._nb) | {self.site}
        if (have := len(mine & set(view))) < self.threshold:
            raise SecAggError(
                f"{self.site}: only {have} of my neighbourhood among the survivors, need "
                f"t = {self.threshold} (the sum would expose fewer than t inputs)"
            )
        if never := (mine & set(view)) - set(self._held):
            raise SecAggError(f"survivors I never got shares from: {sorted(never)}")
        self._view = view
        self._stage = "confirmed"
        return {j: self._view_tag(self.site, j, view) for j in sorted(set(view) & set(self._nb))}

    def unmask(
        self, survivors: Sequence[str], dropped: Sequence[str], confirmations: Mapping[str, bytes]
    ) -> dict[str, bytes]:
        """Stage 5: peer -> my share: of b for survivors, of the mask secret key for dropped peers.

        Sites outside my neighbourhood are skipped (SecAgg+: the global lists may be passed).
        Refuses (revealing nothing) unless ``survivors`` is the set I confirmed, my dropped
        neighbours are exactly the ones I hold shares of that are not survivors, and >= t of my
        closed neighbourhood (me included) confirmed that same set (``confirmations``: sender ->
        its tag to me). Also refuses a peer whose share of the other kind already went out.
        """
        self._at("confirmed", "unmask")
        surv, drop = set(survivors), set(dropped)
        if sorted(surv) != self._view or len(surv) != len(survivors):
            raise SecAggError("the survivor set differs from the one I confirmed")
        if surv & drop:
            raise SecAggError(f"asked for both shares of {sorted(surv & drop)}")
        if unknown := drop - set(self._keys):
            raise SecAggError(f"unknown sites {sorted(unknown)}")
        mine = set(self._nb) | {self.site}
        expected = set(self._held) - surv - {self.site}
        if (drop & mine) != expected:
            raise SecAggError(
                f"dropped neighbours {sorted(drop & mine)} are not the ones that shared keys "
                f"and are not survivors ({sorted(expected)})"
            )
        ok, bad_tags = [], []
        for j, tag in sorted(confirmations.items()):
            if j not in surv & set(self._nb):
                continue
            valid = isinstance(tag, bytes) and secrets.compare_digest(
                tag, self._view_tag(j, self.site, self._view)
            )
            (ok if valid else bad_tags).append(j)
        if bad_tags:  # only a server that showed us different sets or rounds makes these
            log.warning(
                "%s: round %d: the confirmations of %s do not verify: they saw another survivor "
                "set or another round (model, orders, scale) than I did",
                self.site,
                self.rnd,
                bad_tags,
            )
        if len(ok) + 1 < self.threshold:
            raise SecAggError(
                f"{self.site}: {len(ok) + 1} of my neighbourhood confirmed this survivor set, need "
                f"t = {self.threshold} (the server may be showing sites different survivor sets, "
                "models, orders or scales)"
            )
        surv, drop = surv & mine, drop & mine
        rev = self._revealed
        if bad := {j for j in surv if rev.get(j) == "sk"} | {j for j in drop if rev.get(j) == "b"}:
            raise SecAggError(f"the other share of {sorted(bad)} was already revealed")
        rev.update({j: "b" for j in surv} | {j: "sk" for j in drop})
        return {j: self._held[j][0 if j in surv else 1] for j in sorted(surv | drop)}


# -- server ---------------------------------------------------------------------------------------


class SecAggServer:
    """The server's side of one round. ``dropouts[stage]``: expected sites that did not deliver.

    Each stage method takes what arrived, keyed by site. A site outside the previous stage's set
    raises SecAggError (the caller routed wrongly); a malformed entry from an expected site counts
    as that site dropping. A stage aborts (SecAggAbort) unless every site still needed keeps >= t of
    its closed neighbourhood (itself + neighbours); for the complete graph that is >= t sites.
    """

    def __init__(
        self,
        run_id: str,
        rnd: int,
        sites: Sequence[str],
        threshold: int,
        vector_len: int,
        neighbours: int | None = None,
    ) -> None:
        if len(set(sites)) != len(sites) or not all(sites) or vector_len < 1 or threshold < 2:
            raise ValueError("need distinct site names, vector_len >= 1 and threshold >= 2")
        self.run_id, self.rnd, self.sites = run_id, rnd, sorted(sites)
        self.threshold, self.vector_len = int(threshold), int(vector_len)
        self.dropouts: dict[str, list[str]] = {s: [] for s in STAGES}
        self._k = neighbours
        self._graph = neighbour_graph(run_id, rnd, self.sites, neighbours)
        if len(self.sites) < self.threshold:
            raise SecAggAbort(f"only {len(self.sites)} sites for threshold {self.threshold}")
        if min(len(v) for v in self._graph.values()) + 1 < self.threshold:
            raise ValueError(f"threshold {threshold} exceeds the neighbourhood size of the graph")
        self.u1 = self.u2 = self.u3 = self.u4 = self.u5 = []  # present after each stage
        self._stage = 0

    def neighbours_of(self, site: str) -> list[str]:
        return list(self._graph[site])

    def _enter(self, stage: int, given: Iterable[str], allowed: Iterable[str]) -> None:
        if self._stage != stage:
            raise SecAggError(f"stage {STAGES[stage]} out of order")
        if extra := set(given) - set(allowed):
            raise SecAggError(f"{STAGES[stage]}: unexpected sites {sorted(extra)}")
        self._stage = -1  # poisoned until the stage completes (an abort ends the round)

    def _require(self, stage: str, alive: Sequence[str], need: Iterable[str] = ()) -> None:
        a = set(alive)
        if len(a) < self.threshold:
            raise SecAggAbort(f"{stage}: {len(a)} sites left, threshold {self.threshold}")
        for s in a | set(need):
            if (have := (s in a) + sum(j in a for j in self._graph[s])) < self.threshold:
                raise SecAggAbort(f"{stage}: {s} keeps {have} of its neighbourhood, need t")

    def receive_keys(self, keys: Keys) -> dict[str, tuple[bytes, bytes]]:
        """U1 (sorted) -> (enc_pk, mask_pk): to be sent to every site in U1."""
        self._enter(0, keys, self.sites)
        if bad := _check_keys(keys):
            log.warning("round %d: dropping %s for malformed or duplicated keys", self.rnd, bad)
        self.u1 = sorted(set(keys) - set(bad))
        self.dropouts["advertise_keys"] = sorted(set(self.sites) - set(self.u1))
        # the graph over U1, the key list every site receives: each can recompute its neighbours
        self._graph = neighbour_graph(self.run_id, self.rnd, self.u1, self._k) if self.u1 else {}
        self._require("advertise_keys", self.u1)
        self.keys = {s: (keys[s][0], keys[s][1]) for s in self.u1}
        self._x = {s: i + 1 for i, s in enumerate(self.u1)}
        self._stage = 1
        return dict(self.keys)

    def _route(
        self, stage: int, msgs: Mapping[str, Mapping[str, bytes]], senders: list[str], size: int
    ) -> tuple[list[str], dict[str, dict[str, bytes]]]:
        """sender -> recipient -> blob  ==>  (the senders whose message is well formed: one blob
        of ``size`` bytes per neighbour among ``senders``; recipient -> sender -> blob among them).
        A malformed message counts as its sender dropping."""
        name = STAGES[stage]
        self._enter(stage, msgs, senders)
        ok = []
        for s, out in msgs.items():
            want = {j for j in self._graph[s] if j in senders}
            if set(out) == want and all(
                isinstance(v, bytes) and len(v) == size for v in out.values()
            ):
                ok.append(s)
            else:
                log.warning("round %d: malformed %s from %s, dropping it", self.rnd, name, s)
        ok = sorted(ok)
        self.dropouts[name] = sorted(set(senders) - set(ok))
        return ok, {r: {s: msgs[s][r] for s in ok if r in msgs[s]} for r in ok}

    def route_shares(self, cts: Mapping[str, Mapping[str, bytes]]) -> dict[str, dict[str, bytes]]:
        """Stage 2: sender -> recipient -> ct  ==>  recipient -> sender -> ct, among U2 only."""
        self.u2, routed = self._route(1, cts, self.u1, CT_LEN)
        self._require("share_keys", self.u2)
        self._stage = 2
        return routed

    def receive_masked(self, masked: Mapping[str, np.ndarray]) -> tuple[list[str], list[str]]:
        """(survivors U3, dropped U2 \\ U3). Only uint32 vectors of vector_len count as arrived."""
        self._enter(2, masked, self.u2)
        ok = {
            s: v
            for s, v in masked.items()
            if isinstance(v, np.ndarray) and v.dtype == np.uint32 and v.shape == (self.vector_len,)
        }
        if bad := sorted(set(masked) - set(ok)):
            log.warning("round %d: malformed masked input from %s, dropping them", self.rnd, bad)
        self.u3, dropped = sorted(ok), sorted(set(self.u2) - set(ok))
        self.dropouts["masked_input"] = dropped
        # a dropped site's mask key is needed iff some survivor masked with it
        self._recover = [j for j in dropped if any(k in ok for k in self._graph[j])]
        self._require("masked_input", self.u3, self._recover)
        self._masked = ok
        self._stage = 3
        return list(self.u3), dropped

    def route_confirmations(
        self, tags: Mapping[str, Mapping[str, bytes]]
    ) -> dict[str, dict[str, bytes]]:
        """Stage 4: sender -> recipient -> tag  ==>  recipient -> sender -> tag, among the
        survivors that confirmed (U4; the server cannot check a tag, only route it)."""
        self.u4, routed = self._route(3, tags, self.u3, TAG_LEN)
        self._require("consistency", self.u4, [*self.u3, *self._recover])
        self._stage = 4
        return routed

    def unmask(self, shares: Mapping[str, Mapping[str, bytes]], context: bytes = b"") -> np.ndarray:
        """The uint32 sum of the survivors' vectors, from the shares of >= t responders (U5).
        ``context``: the ``mask_context`` of the round the server sent every site."""
        self._enter(4, shares, self.u4)
        u5 = []
        for k, resp in shares.items():
            closed = set(self._graph[k]) | {k}
            want = closed & (set(self.u3) | set(self._recover))
            try:  # each share must carry the responder's own x-coordinate
                xs = {_decode_share(v)[0] for v in resp.values()}
            except SecAggError:
                xs = {0}
            if set(resp) == want and xs == {self._x[k]}:
                u5.append(k)
            else:
                log.warning("round %d: malformed unmask reply from %s, dropping it", self.rnd, k)
        self.u5 = sorted(u5)
        self.dropouts["unmasking"] = sorted(set(self.u4) - set(u5))
        self._require("unmasking", self.u5, [*self.u3, *self._recover])

        def secret(j: str) -> bytes:
            return shamir_combine([shares[k][j] for k in self.u5 if j in shares[k]], self.threshold)

        # remove every survivor's self-mask ...
        streams = [(self_mask_seed(secret(i), self.run_id, self.rnd, i), -1) for i in self.u3]
        for j in self._recover:  # ... and the pairwise masks survivors had with dropped sites
            sk = X25519PrivateKey.from_private_bytes(secret(j))
            if sk.public_key().public_bytes_raw() != self.keys[j][1]:
                raise SecAggError(f"shares of {j}'s mask key do not match its public key")
            for k in self._graph[j]:
                if k in self._masked:  # k added +PRG(s_jk) if j < k, else -PRG(s_jk)
                    shared = _exchange(sk, self.keys[k][1])
                    seed = pair_mask_seed(shared, self.run_id, self.rnd, j, k, context)
                    streams.append((seed, -1 if j < k else 1))
        acc = self._masked[self.u3[0]].copy()
        apply_masks(acc, streams, [self._masked[i] for i in self.u3[1:]])
        self._masked, self._stage = {}, 5
        return acc


# -- the update's layout on the wire (sites and server must agree) ----------------------------


def flatten(params: dict[str, np.ndarray], keys: list[str]) -> np.ndarray:
    """The shared entries as one float64 vector, in ``keys`` order (sorted names)."""
    return np.concatenate([np.asarray(params[k], np.float64).ravel() for k in keys])


def unflatten(
    vec: np.ndarray, like: dict[str, np.ndarray], keys: list[str]
) -> dict[str, np.ndarray]:
    out, i = {}, 0
    for k in keys:
        n = like[k].size
        out[k] = vec[i : i + n].reshape(like[k].shape)
        i += n
    if i != vec.size:
        raise ValueError(f"vector of {vec.size} elements does not match the {i} shared values")
    return out
