"""A malicious aggregator against the project's secure aggregation: can a server that lies learn
one site's update alone?

``isolate(attack, sites=...)`` plays the server of one secure-aggregation round, in process,
against the real site code (``common.secagg.SecAggClient``, which ``client/secure.py`` drives
in ``fedonco client``), and tries to recover one victim's quantised update exactly. The server
holds what a real server holds: the sites' public keys, the ciphertexts it relays, the masked
vectors and whatever shares the sites reveal. Attacks (issue 29, "a malicious aggregator"):

  dropout-lie       each site is told "only you and the victim survived, the others dropped" (a
                    survivor set per site): b of the victim, and every other site's mask key.
  split-views       half the sites see everyone survive, the other half "the victim dropped":
                    b of the victim from the first half, its mask key from the second.
  low-threshold     stage 2 asks for t = 2, then split-views (two shares of each kind suffice).
  key-substitution  the victim is shown the server's own public keys in place of its peers' (a
                    man in the middle in stage 2): the victim encrypts its shares to the server.
                    Against ``pki`` sites the server also forges the keys' bindings: first it
                    replays each peer's real signature and certificate, then it signs the fake
                    keys with its own CA-issued certificate (the one a real server holds).
  model-split       the victim is sent the global model, every other site a crafted one
                    (``dead_model``: every norm layer's scale 0 and shift -1, so no ReLU fires and
                    local training changes nothing but the head's bias): the others' updates are
                    zero and the sum the server unmasks honestly is the victim's update. The same
                    holds for other orders or another quantisation scale sent to the victim.

Sites: ``honest`` is what ``fedonco client`` runs without TLS (the federation's t and graph
expected, the survivor set checked and confirmed by t of the neighbourhood before any share
leaves); ``pki`` is what it runs under mutual TLS: the same checks, and every peer's keys must be
signed with the certificate the roster gives that peer, issued by the federation's CA
(``common/keybind.py``; a throwaway CA and certificates from ``fedonco certs``' own code);
``trusting`` is a deliberately weakened site, the protocol before those checks (it confirms any
set and reveals what it is asked, refusing only both shares of one peer and its own mask key,
and its masks are not bound to the round it was sent): the positive control every attack must
win. ``honest`` and ``pki`` sites bind their pairwise masks and confirmations to the round they
were sent (``common.secagg.mask_context``): sites sent different rounds have masks that do not
cancel and confirmations that do not verify.

The outcome: whether the server's reconstruction equals the victim's vector bit for bit, which
sites refused, and why. ``threat_table()`` runs every attack against every kind of site.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from common.config import default_cert_name
from common.keybind import KeySigner, KeyVerifier
from common.secagg import (
    SecAggClient,
    SecAggError,
    apply_masks,
    mask_context,
    neighbour_graph,
    pair_mask_seed,
    self_mask_seed,
    shamir_combine,
)

RUN, ROUND = "malicious-aggregator", 1
ATTACKS = ("dropout-lie", "split-views", "low-threshold", "key-substitution", "model-split")
SITES = ("honest", "trusting", "pki")


@dataclass(frozen=True)
class _PKI:
    """A throwaway federation PKI: the CA, each site's signer, the roster's CNs, and the
    server's own CA-issued certificate (what a lying server holds)."""

    ca_pem: bytes
    names: dict[str, str]  # site -> its certificate's CN (the roster's)
    signers: dict[str, KeySigner]
    server: KeySigner


@functools.lru_cache(maxsize=4)
def _pki(sites: tuple[str, ...]) -> _PKI:
    """Certificates for ``sites`` from `fedonco certs`' own code, read back into memory."""
    from common.wire.tls import make_certs

    quiet = logging.getLogger("common.wire.tls")  # no "wrote a CA ... to /tmp/..." line
    level = quiet.level
    quiet.setLevel(logging.WARNING)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            dirs = make_certs(Path(tmp) / "certs", list(sites))
            names = {s: default_cert_name(s) for s in sites}
            return _PKI(
                ca_pem=(Path(tmp) / "certs" / "ca.crt").read_bytes(),
                names=names,
                signers={s: KeySigner.from_tls_dir(dirs[names[s]]) for s in sites},
                server=KeySigner.from_tls_dir(dirs["server"]),
            )
    finally:
        quiet.setLevel(level)


class TrustingSite(SecAggClient):
    """The weakened site (positive control): no expected t or graph, no survivor-set check and no
    confirmations needed; it still refuses both shares of one peer and its own mask key."""

    def __init__(self, site: str, run_id: str, rnd: int) -> None:
        super().__init__(site, run_id, rnd, expect=None)

    def masked_input(
        self, ciphertexts: Mapping[str, bytes], vector: np.ndarray, context: bytes = b""
    ) -> np.ndarray:
        return super().masked_input(ciphertexts, vector)  # masks not bound to the round

    def confirm(self, survivors: Sequence[str]) -> dict[str, bytes]:
        self._at("masked", "consistency")
        self._stage = "confirmed"
        return {}

    def unmask(
        self, survivors: Sequence[str], dropped: Sequence[str], confirmations: Mapping[str, bytes]
    ) -> dict[str, bytes]:
        self._at("confirmed", "unmask")
        surv, drop = set(survivors), set(dropped)
        if surv & drop:
            raise SecAggError(f"asked for both shares of {sorted(surv & drop)}")
        if self.site in drop:
            raise SecAggError("asked for my own mask key while I am alive")
        mine = (set(self._nb) | {self.site}) & set(self._held)
        rev = self._revealed
        surv, drop = surv & mine, drop & mine
        if bad := {j for j in surv if rev.get(j) == "sk"} | {j for j in drop if rev.get(j) == "b"}:
            raise SecAggError(f"the other share of {sorted(bad)} was already revealed")
        rev.update({j: "b" for j in surv} | {j: "sk" for j in drop})
        return {j: self._held[j][0 if j in surv else 1] for j in sorted(surv | drop)}


def dead_model(model) -> dict[str, np.ndarray]:
    """The crafted global model of ``model-split`` (a ``common.model.UNet``): its weights with
    every norm layer's scale 0 and shift -1. No ReLU after a norm fires, so a site's local
    training moves no weight but the head's bias (the gradient of everything else is zero; Adam
    and SGD then leave it as it was)."""
    from torch import nn

    from common.model import get_params

    params = get_params(model)
    for name, module in model.named_modules():
        if isinstance(module, nn.GroupNorm | nn.BatchNorm2d):
            params[f"{name}.weight"] = np.zeros_like(params[f"{name}.weight"])
            params[f"{name}.bias"] = np.full_like(params[f"{name}.bias"], -1.0)
    return params


@dataclass
class Outcome:
    attack: str
    sites: str
    isolated: bool  # the server recovered the victim's vector exactly
    refused: dict[str, str] = field(default_factory=dict)  # site -> why it refused
    detail: str = ""


def _strip(
    y: np.ndarray, victim: str, b: bytes, pair: Mapping[str, bytes], context: bytes
) -> np.ndarray:
    """The victim's vector from its masked one, its self-mask seed and its pairwise secrets
    (``context``: the round the server sent it)."""
    streams = [(self_mask_seed(b, RUN, ROUND, victim), -1)]
    for j, shared in pair.items():  # the victim added +PRG(s) for j < victim, -PRG(s) otherwise
        seed = pair_mask_seed(shared, RUN, ROUND, victim, j, context)
        streams.append((seed, -1 if j < victim else 1))
    out = y.copy()
    apply_masks(out, streams)
    return out


def _secret(shares: list[bytes], t: int) -> bytes | None:
    try:
        return shamir_combine(shares, t) if len(shares) >= t else None
    except SecAggError:
        return None


def _agree(sk: bytes, pk: bytes) -> bytes:
    return X25519PrivateKey.from_private_bytes(sk).exchange(X25519PublicKey.from_public_bytes(pk))


def isolate(
    attack: str,
    sites: str = "honest",
    n: int = 5,
    threshold: int = 3,
    victim: str = "A",
    length: int = 256,
    seed: int = 0,
) -> Outcome:
    """One round under ``attack`` against n sites of kind ``sites`` (the federation's settings:
    ``threshold``, the complete graph); the victim is ``victim``."""
    if attack not in ATTACKS or sites not in SITES:
        raise ValueError(f"attack in {ATTACKS}, sites in {SITES}")
    names = [chr(ord("A") + i) for i in range(n)]
    rng = np.random.default_rng(seed)
    x = {s: rng.integers(0, 2**32, length, dtype=np.uint32) for s in names}
    # the round each site was sent (common.secagg.mask_context); model-split: the victim's differs
    # and the others' crafted model leaves their updates zero
    context = {s: mask_context(hashlib.sha256(b"global model").digest(), 1e4, 1.0) for s in names}
    if attack == "model-split":
        context[victim] = mask_context(hashlib.sha256(b"the victim's model").digest(), 1e4, 1.0)
        x.update({s: np.zeros(length, np.uint32) for s in names if s != victim})
    if sites == "trusting":  # its masks are not bound to the round (TrustingSite.masked_input)
        context = dict.fromkeys(names, b"")

    pki = _pki(tuple(names)) if sites == "pki" else None

    def site(s: str) -> SecAggClient:
        if sites == "trusting":
            return TrustingSite(s, RUN, ROUND)
        verify = KeyVerifier(pki.ca_pem, pki.names) if pki else None
        return SecAggClient(s, RUN, ROUND, expect=(threshold, None), verify=verify)

    clients = {s: site(s) for s in names}
    refused: dict[str, str] = {}

    def ask(s: str, fn, *args):
        try:
            return fn(*args)
        except SecAggError as err:
            refused[s] = str(err)
            return None

    keys = {s: c.advertise_keys() for s, c in clients.items()}
    # pki: each site signs its keys (the server relays the bindings as they came)
    bindings = {s: pki.signers[s].sign(RUN, ROUND, s, *keys[s]) for s in names} if pki else {}
    t_asked = 2 if attack == "low-threshold" else threshold
    others = [s for s in names if s != victim]
    if attack == "key-substitution":
        return _key_substitution(
            clients, keys, x, victim, threshold, sites, ask, refused, pki, bindings, context
        )
    graph = neighbour_graph(RUN, ROUND, keys, None)
    cts = {s: ask(s, clients[s].share_keys, keys, t_asked, graph[s], bindings) for s in names}
    if any(v is None for v in cts.values()):
        return Outcome(attack, sites, False, refused, "sites refused the share-keys stage")
    y = {}
    for s in names:
        routed = {j: cts[j][s] for j in names if j != s}
        y[s] = ask(s, clients[s].masked_input, routed, x[s], context[s])
    # what each site is shown: (survivor set, dropped sites)
    if attack == "model-split":  # nothing to lie about but the round itself
        views = {s: (names, []) for s in names}
    elif attack == "dropout-lie":
        views = {s: ([victim, s] if s != victim else names, []) for s in names}
        views.update({s: (sorted({victim, s}), [j for j in others if j != s]) for s in others})
    else:  # split-views, low-threshold: the first half sees everyone, the rest "victim dropped"
        half = (n + 1) // 2
        views = {s: (names, []) for s in names[:half]}
        views.update({s: (others, [victim]) for s in names[half:]})
    tags = {s: ask(s, clients[s].confirm, sorted(views[s][0])) for s in names}
    inbox = {r: {s: t[r] for s, t in tags.items() if t and r in t} for r in names}
    revealed: dict[str, dict[str, bytes]] = {}
    for s in names:
        if tags[s] is not None:
            got = ask(s, clients[s].unmask, sorted(views[s][0]), views[s][1], inbox[s])
            revealed[s] = got or {}
    if attack == "model-split":  # the honest unmasking of the sum, read as the victim's update
        return _read_sum(y, revealed, t_asked, x[victim], refused, sites)
    b_v = _secret(
        [r[victim] for s, r in revealed.items() if victim in r and victim in views[s][0]], t_asked
    )
    if b_v is None:
        return Outcome(attack, sites, False, refused, "too few shares of the victim's self mask")
    pair = {}
    sk_v = _secret(
        [r[victim] for s, r in revealed.items() if victim in r and victim in views[s][1]], t_asked
    )
    for j in others:  # the victim's pairwise secret with j: from j's mask key, or from the victim's
        sk_j = _secret([r[j] for s, r in revealed.items() if j in r and j in views[s][1]], t_asked)
        if sk_j is not None:
            pair[j] = _agree(sk_j, keys[victim][1])
        elif sk_v is not None:
            pair[j] = _agree(sk_v, keys[j][1])
    if len(pair) < len(others):
        return Outcome(
            attack,
            sites,
            False,
            refused,
            f"pairwise secrets with {len(pair)} of {len(others)} peers",
        )
    got = _strip(y[victim], victim, b_v, pair, context[victim])
    return Outcome(
        attack, sites, bool(np.array_equal(got, x[victim])), refused, "all masks removed"
    )


def _read_sum(y, revealed, t, target, refused, sites) -> Outcome:
    """The server's honest unmasking: every survivor's self mask off the sum of the masked
    inputs (pairwise masks cancel only between sites sent the same round)."""
    y = {s: v for s, v in y.items() if v is not None}
    streams = []
    for s in sorted(y):
        b = _secret([r[s] for r in revealed.values() if s in r], t)
        if b is None:
            return Outcome("model-split", sites, False, refused, f"no self-mask seed of {s}")
        streams.append((self_mask_seed(b, RUN, ROUND, s), -1))
    total = np.zeros_like(target)
    apply_masks(total, streams, [y[s] for s in sorted(y)])
    same = bool(np.array_equal(total, target))
    return Outcome(
        "model-split",
        sites,
        same,
        refused,
        "the sum is the victim's update" if same else "the victim's masks did not cancel",
    )


def _key_substitution(
    clients, keys, x, victim, threshold, sites, ask, refused, pki=None, bindings=None, context=None
) -> Outcome:
    """The victim sees the server's keys for every peer (fake peers the server runs with the
    real site code); the others are left alone. The victim's shares are encrypted to the fakes.
    With a PKI the server tries each forgery of the fake keys' bindings in turn: the peers' real
    signatures and certificates (over their real keys), then its own certificate's signature."""
    names = sorted(clients)
    fakes = {j: SecAggClient(j, RUN, ROUND) for j in names if j != victim}
    shown = {victim: keys[victim], **{j: f.advertise_keys() for j, f in fakes.items()}}
    graph = neighbour_graph(RUN, ROUND, shown, None)
    forgeries = [{}]  # no PKI: no bindings shown, none checked
    if pki is not None:
        own = {victim: bindings[victim]}
        forgeries = [
            own | {j: bindings[j] for j in fakes},  # replayed: signed over the real keys
            own | {j: pki.server.sign(RUN, ROUND, j, *shown[j]) for j in fakes},  # server's cert
        ]
    reasons = []
    for forged in forgeries:
        cts = ask(victim, clients[victim].share_keys, shown, threshold, graph[victim], forged)
        if cts is not None:
            break
        reasons.append(refused.pop(victim).removeprefix(f"{victim}: "))
    if cts is None:
        refused[victim] = f"{victim}: " + " / ".join(reasons)
        return Outcome("key-substitution", sites, False, refused, "the victim refused stage 2")
    fake_cts = {j: f.share_keys(shown, threshold, graph[j]) for j, f in fakes.items()}
    routed = {j: fake_cts[j][victim] for j in fakes}
    ctx = context[victim]  # the fakes mask under the same round: the server runs them
    y = ask(victim, clients[victim].masked_input, routed, x[victim], ctx)
    if y is None:
        return Outcome("key-substitution", sites, False, refused, "the victim sent no masked input")
    for j, f in fakes.items():  # each fake decrypts the victim's shares addressed to it
        f.masked_input({victim: cts[j], **{k: fake_cts[k][j] for k in fakes if k != j}}, x[j], ctx)
    view = names
    tags = {j: f.confirm(view) for j, f in fakes.items()}
    b_shares = [
        f.unmask(view, [], {k: tags[k][j] for k in fakes if k != j})[victim]
        for j, f in fakes.items()
    ]
    b_v = _secret(b_shares, threshold)
    fake_sk = {j: f._mask_sk.private_bytes_raw() for j, f in fakes.items()}  # the server's own
    pair = {j: _agree(fake_sk[j], keys[victim][1]) for j in fakes}
    if b_v is None:
        return Outcome("key-substitution", sites, False, refused, "no self-mask seed")
    got = _strip(y, victim, b_v, pair, ctx)
    return Outcome(
        "key-substitution",
        sites,
        bool(np.array_equal(got, x[victim])),
        refused,
        "the victim's shares were encrypted to the server's keys",
    )


def threat_table(n: int = 5, threshold: int = 3, seed: int = 0) -> list[Outcome]:
    """Every attack against every kind of site (honest, trusting, pki). The sites' warnings
    (e.g. confirmations that do not verify) are kept out of the output: the table says who
    refused and why."""
    quiet = logging.getLogger("common.secagg")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        return [isolate(a, s, n=n, threshold=threshold, seed=seed) for a in ATTACKS for s in SITES]
    finally:
        quiet.setLevel(level)


def markdown(rows: list[Outcome]) -> str:
    lines = [
        "| attack | sites | victim isolated | refused by | why / how |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        why = "; ".join(sorted({v.split(": ", 1)[-1] for v in r.refused.values()})) or r.detail
        lines.append(
            f"| {r.attack} | {r.sites} | {'yes' if r.isolated else 'no'} | "
            f"{', '.join(sorted(r.refused)) or '-'} | {why} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    import argparse

    p = argparse.ArgumentParser(
        prog="python -m attacks.aggregator",
        description="A lying server against one secure-aggregation round (in process, the real "
        "site code): each attack against the sites `fedonco client` runs (without TLS: honest; "
        "under mutual TLS: pki, which checks its peers' key bindings) and against a "
        "deliberately weakened site. Prints a markdown table (docs/threat-model.md).",
    )
    p.add_argument("--sites", type=int, default=5, help="n (default 5)")
    p.add_argument("--threshold", type=int, default=3, help="t (default 3)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    print(markdown(threat_table(args.sites, args.threshold, args.seed)), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
