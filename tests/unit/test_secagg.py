"""Secure aggregation core (common/secagg.py): quantisation, Shamir, masking, dropouts, privacy."""

from __future__ import annotations

import copy
import itertools
from types import SimpleNamespace

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from scipy.stats import chi2

from common import secagg as sa
from common.secagg import (
    SecAggAbort,
    SecAggClient,
    SecAggError,
    SecAggServer,
    dequantize,
    quantization_error_bound,
    quantization_scale,
    quantize,
)

RUN = "run-test"
N = 4096  # tiny vectors; 16 KiB of bytes = 64 expected per byte value for the chi-square test
CHI2_CRIT = chi2.ppf(1 - 1e-6, 255)  # a false alarm once in a million per vector
STAGES = (
    "before_keys",
    "after_keys",
    "after_shares",
    "after_masked",
    "after_confirm",
    "during_unmask",
)


def _chi2_bytes(v: np.ndarray) -> float:
    counts = np.bincount(np.ascontiguousarray(v).view(np.uint8), minlength=256)
    exp = counts.sum() / 256
    return float(((counts - exp) ** 2 / exp).sum())


def _updates(sites, rng, clip=2.0, n=N):
    """Weighted updates n_k * params (some beyond the clip), weights, and the quantisation scale."""
    weights = {s: int(rng.integers(10, 500)) for s in sites}
    scale = quantization_scale(clip, float(sum(weights.values())))
    raw = {s: weights[s] * rng.normal(0, 0.7, n) for s in sites}
    q = {s: quantize(raw[s], weights[s], clip, scale)[0] for s in sites}
    exact = {s: np.clip(raw[s], -clip * weights[s], clip * weights[s]) for s in sites}
    return q, exact, scale


def run_round(vectors, t, k=None, rnd=1, drop=None, run_id=RUN, context=None, server_context=b""):
    """One in-process round; ``drop`` maps a stage name of STAGES to the sites that drop there;
    ``context``: site -> the round it was sent (``mask_context``; default b"" for all)."""
    drop = {st: set(drop.get(st, ())) if drop else set() for st in STAGES}
    context = context or {}
    sites = sorted(vectors)
    n = len(next(iter(vectors.values())))
    clients = {s: SecAggClient(s, run_id, rnd) for s in sites}
    srv = SecAggServer(run_id, rnd, sites, t, n, neighbours=k)
    h = SimpleNamespace(server=srv, clients=clients)
    h.u1 = srv.receive_keys(
        {s: c.advertise_keys() for s, c in clients.items() if s not in drop["before_keys"]}
    )
    cts = {
        s: clients[s].share_keys(h.u1, t, srv.neighbours_of(s))
        for s in h.u1
        if s not in drop["after_keys"]
    }
    h.routed = srv.route_shares(cts)
    h.masked = {
        s: clients[s].masked_input(h.routed[s], vectors[s], context.get(s, b""))
        for s in h.routed
        if s not in drop["after_shares"]
    }
    h.surv, h.dropped = srv.receive_masked(h.masked)
    h.tags = srv.route_confirmations(
        {s: clients[s].confirm(h.surv) for s in h.surv if s not in drop["after_masked"]}
    )
    h.shares = {}
    for s in h.tags:
        if s in drop["after_confirm"]:
            continue
        reply = clients[s].unmask(h.surv, h.dropped, h.tags[s])
        if s in drop["during_unmask"]:  # cut off mid-reply: a partial answer counts as a dropout
            reply = dict(list(reply.items())[:-1])
        h.shares[s] = reply
    h.total = srv.unmask(h.shares, server_context)
    return h


def _reveal(srv, clients, surv, dropped):
    """Stages 4 and 5 for every survivor: confirm the survivor set, then reveal the shares."""
    tags = srv.route_confirmations({s: clients[s].confirm(surv) for s in surv})
    return {s: clients[s].unmask(surv, dropped, tags[s]) for s in tags}


def _check_sum(h, q, exact, scale):
    want = np.zeros(N, np.uint32)
    for s in h.surv:
        np.add(want, q[s], out=want)
    np.testing.assert_array_equal(h.total, want)  # exact in Z_(2^32)
    err = np.abs(dequantize(h.total, scale) - sum(exact[s] for s in h.surv)).max()
    assert err <= quantization_error_bound(len(h.surv), scale)


# -- quantisation ---------------------------------------------------------------------------------


def test_quantize_round_trip_within_bound_and_half_even():
    rng = np.random.default_rng(0)
    clip, w = 3.0, 40.0
    s = quantization_scale(clip, 200.0)
    x = w * rng.uniform(-clip, clip, N)
    q, n_clip = quantize(x.astype(np.float32), w, clip, s)
    assert q.dtype == np.uint32 and n_clip == 0
    ref = x.astype(np.float32).astype(np.float64)
    assert np.abs(dequantize(q, s) - ref).max() <= quantization_error_bound(1, s)
    q2, _ = quantize(np.array([2.5, 3.5, -2.5, -0.5]) / 1024.0, 1.0, 1.0, 1024.0)
    np.testing.assert_array_equal(q2.view(np.int32), [2, 4, -2, 0])  # round half to even


def test_clipping_is_counted_and_applied():
    s = quantization_scale(1.0, 100.0)
    x = np.array([0.0, 9.9, 10.0, 10.5, -11.0, np.inf, -np.inf, 3.0])
    q, n_clip = quantize(x, 10.0, 1.0, s)
    assert n_clip == 4
    np.testing.assert_allclose(dequantize(q, s), [0, 9.9, 10, 10, -10, 10, -10, 3], atol=1 / s)
    with pytest.raises(ValueError, match="NaN"):
        quantize(np.array([1.0, np.nan]), 10.0, 1.0, s)
    with pytest.raises(ValueError, match="within int32"):
        quantize(x, 1000.0, 1.0, s)


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_scale_is_the_largest_that_cannot_overflow(sign):
    clip, weights = 8.0, [1000.0, 1500.0, 700.0, 1300.0, 500.0]
    big = float(sum(weights))
    s = quantization_scale(clip, big, max_sites=5)
    assert quantization_scale(clip, big) < s  # default m = floor(W) sites: W/2 more headroom

    def worst(scale):  # every site at its clip bound (and beyond): the largest possible sum
        tot = np.zeros(3, np.uint32)
        for w in weights:
            np.add(tot, quantize(np.full(3, sign * 2 * clip * w), w, clip, scale)[0], out=tot)
        return dequantize(tot, scale)

    assert np.abs(worst(s) - sign * clip * big).max() <= quantization_error_bound(5, s)
    assert np.all(np.sign(worst(s * (1 + 1e-6))) == -sign)  # 1e-6 larger already wraps around


def test_scale_formula_and_errors():
    assert quantization_scale(2.0, 10.0) == pytest.approx((2**31 - 2 - 5) / 20)
    assert quantization_scale(2.0, 0.5, max_sites=3) == pytest.approx((2**31 - 3.5) / 1.0)
    with pytest.raises(ValueError, match="max_sites"):
        quantization_scale(2.0, 0.5)


# -- Shamir ---------------------------------------------------------------------------------------


def test_shamir_any_t_shares_reconstruct():
    secret = bytes(range(32))
    shares = sa.shamir_split(secret, 3, [1, 2, 3, 4, 5])
    for subset in itertools.combinations(shares.values(), 3):
        assert sa.shamir_combine(list(subset), 3) == secret
    assert sa.shamir_combine(list(shares.values()), 3) == secret  # extras are checked too
    with pytest.raises(SecAggAbort):
        sa.shamir_combine(list(shares.values())[:2], 3)


def test_shamir_t_minus_1_shares_fit_every_secret():
    secret, other = b"\x11" * 32, b"\xfe" * 32
    shares = sa.shamir_split(secret, 4, range(1, 7))
    known = [sa._decode_share(shares[x]) for x in (2, 3, 5)]  # t-1 = 3 shares
    # the polynomial through (0, other) and the known shares is a valid sharing of `other`
    pts = [(0, int.from_bytes(other, "big")), *known]
    fake4 = sa._encode_share(4, sa.interpolate(pts, 4))
    assert sa.shamir_combine([shares[2], shares[3], shares[5], fake4], 4) == other
    assert sa.shamir_combine([shares[2], shares[3], shares[5], shares[4]], 4) == secret


def test_shamir_inconsistent_shares_are_rejected():
    a = sa.shamir_split(b"\x01" * 32, 2, [1, 2, 3])
    b = sa.shamir_split(b"\x02" * 32, 2, [1, 2, 3])
    with pytest.raises(SecAggError, match="inconsistent"):
        sa.shamir_combine([a[1], a[2], b[3]], 2)
    with pytest.raises(SecAggError, match="duplicate"):
        sa.shamir_combine([a[1], a[1]], 2)


# -- PRG and graph --------------------------------------------------------------------------------


def test_prg_is_the_aes_ctr_keystream_across_chunks():
    seed = bytes(range(48))
    n = 3 * sa._CHUNK + 5
    enc = Cipher(algorithms.AES(seed[:32]), modes.CTR(seed[32:])).encryptor()
    want = np.frombuffer(enc.update(bytes(4 * n)), np.uint32)
    got = np.zeros(n, np.uint32)
    sa.apply_masks(got, [(seed, 1)])
    np.testing.assert_array_equal(got, want)
    acc = want.copy()
    sa.apply_masks(acc, [(seed, -1)])
    assert not acc.any()


def test_neighbour_graph_complete_and_k_regular():
    sites = [f"s{i:02d}" for i in range(12)]
    full = sa.neighbour_graph(RUN, 1, sites[:5])
    assert all(len(v) == 4 for v in full.values())
    assert sa.neighbour_graph(RUN, 1, sites[:5], 6) == full
    g = sa.neighbour_graph(RUN, 1, sites, 4)
    assert all(len(v) == 4 and s not in v for s, v in g.items())
    assert all(s in g[j] for s, v in g.items() for j in v)  # symmetric
    assert g == sa.neighbour_graph(RUN, 1, list(reversed(sites)), 4)  # deterministic
    assert g != sa.neighbour_graph(RUN, 2, sites, 4)  # a fresh graph each round
    assert all(len(v) == 4 for v in sa.neighbour_graph(RUN, 1, sites, 3).values())  # odd k -> k+1


# -- correctness with dropouts --------------------------------------------------------------------


def test_sum_of_5_sites_equals_plaintext_sum():
    sites = list("ABCDE")
    q, exact, scale = _updates(sites, np.random.default_rng(1))
    h = run_round(q, t=3)
    assert h.surv == sites and h.dropped == []
    _check_sum(h, q, exact, scale)
    assert all(not v for v in h.server.dropouts.values())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sum_for_larger_n_with_k_regular_graph_and_random_drops(seed):
    rng = np.random.default_rng(seed)
    sites = [f"site{i:02d}" for i in range(12)]
    q, exact, scale = _updates(sites, rng)
    drops = rng.choice(sites, 2, replace=False)
    drop = {str(rng.choice(STAGES)): [str(drops[0])], str(rng.choice(STAGES)): [str(drops[1])]}
    h = run_round(q, t=3, k=4, rnd=seed + 1, drop=drop)
    _check_sum(h, q, exact, scale)
    assert len(h.routed[h.surv[0]]) <= 4  # shares only travel along the sparse graph


def test_sum_for_larger_complete_graph():
    sites = [f"s{i}" for i in range(9)]
    q, exact, scale = _updates(sites, np.random.default_rng(7))
    h = run_round(q, t=5, drop={"after_keys": ["s1"], "after_shares": ["s4", "s7"]})
    assert h.surv == ["s0", "s2", "s3", "s5", "s6", "s8"]
    _check_sum(h, q, exact, scale)


@pytest.mark.parametrize("stage", STAGES)
def test_one_site_drops_after_each_stage(stage):
    sites = list("ABCDE")
    q, exact, scale = _updates(sites, np.random.default_rng(3))
    h = run_round(q, t=3, drop={stage: ["C"]})
    # its masked vector already arrived
    in_sum = stage in ("after_masked", "after_confirm", "during_unmask")
    assert ("C" in h.surv) == in_sum
    _check_sum(h, q, exact, scale)
    where = {
        "before_keys": "advertise_keys",
        "after_keys": "share_keys",
        "after_shares": "masked_input",
        "after_masked": "consistency",
    }.get(stage, "unmasking")
    assert h.server.dropouts[where] == ["C"]


def test_dropouts_at_several_stages_down_to_t():
    sites = list("ABCDEF")
    q, exact, scale = _updates(sites, np.random.default_rng(4))
    drop = {"after_keys": ["A"], "after_shares": ["D"], "after_masked": ["F"]}
    h = run_round(q, t=3, drop=drop)
    assert h.surv == ["B", "C", "E", "F"] and h.dropped == ["D"]
    _check_sum(h, q, exact, scale)
    assert sorted(h.shares) == ["B", "C", "E"]


@pytest.mark.parametrize("stage", STAGES)
def test_fewer_than_t_survivors_aborts(stage):
    q, _, _ = _updates(list("ABCDE"), np.random.default_rng(5))
    with pytest.raises(SecAggAbort):
        run_round(q, t=3, drop={stage: ["A", "B", "C"]})


def test_secagg_plus_threshold_applies_per_neighbourhood():
    sites = [f"s{i:02d}" for i in range(12)]
    q, _, _ = _updates(sites, np.random.default_rng(6))
    g = sa.neighbour_graph(RUN, 1, sites, 4)
    victim = sites[0]
    # 10 of 12 sites survive, but `victim` keeps only 3 of its 5-site neighbourhood (t = 4)
    with pytest.raises(SecAggAbort, match="of its neighbourhood"):
        run_round(q, t=4, k=4, drop={"after_shares": g[victim][:2]})


# -- privacy --------------------------------------------------------------------------------------


def test_masked_vectors_look_uniform():
    sites = list("ABCDE")
    q, _, _ = _updates(sites, np.random.default_rng(8))
    assert all(_chi2_bytes(q[s]) > CHI2_CRIT for s in sites)  # the plaintext is far from it
    h = run_round(q, t=3)
    assert all(_chi2_bytes(v) < CHI2_CRIT for v in h.masked.values())


def test_server_state_recovers_no_single_update():
    """Everything the server can compute from what it holds still leaves noise on any strict
    subset of survivors; only the full survivor set unmasks (to the sum)."""
    sites = list("ABCDE")
    q, _, _ = _updates(sites, np.random.default_rng(9))
    h = run_round(q, t=3, drop={"after_shares": ["E"]})
    srv = h.server
    b = {
        i: sa.shamir_combine([h.shares[k][i] for k in h.shares if i in h.shares[k]], 3)
        for i in h.surv
    }
    sk_e = sa.shamir_combine([h.shares[k]["E"] for k in h.shares], 3)
    # y_i minus its self-mask and its (recoverable) mask with the dropped site E
    stripped = {}
    for i in h.surv:
        v = h.masked[i].copy()
        shared = sa.X25519PrivateKey.from_private_bytes(sk_e).exchange(
            sa.X25519PublicKey.from_public_bytes(srv.keys[i][1])
        )
        sign = 1 if i > "E" else -1
        sa.apply_masks(
            v,
            [
                (sa.self_mask_seed(b[i], RUN, 1, i), -1),
                (sa.pair_mask_seed(shared, RUN, 1, i, "E"), -sign),
            ],
        )
        stripped[i] = v
    for r in range(1, len(h.surv)):
        for subset in itertools.combinations(h.surv, r):
            acc = np.zeros(N, np.uint32)
            for i in subset:
                np.add(acc, stripped[i], out=acc)
            assert _chi2_bytes(acc) < CHI2_CRIT, subset
    acc = np.zeros(N, np.uint32)
    for i in h.surv:
        np.add(acc, stripped[i], out=acc)
    np.testing.assert_array_equal(acc, h.total)  # all of them: exactly the sum
    assert _chi2_bytes(acc) > CHI2_CRIT
    # the routed ciphertexts are opaque to the server: their shares never appear in clear
    some = next(iter(h.shares["A"].values()))
    assert all(some not in ct for cts in h.routed.values() for ct in cts.values())


def test_sites_shown_another_survivor_set_refuse_to_reveal():
    """A server that shows A, B and C one survivor set (everyone) and D and E another ("A
    dropped"), to collect b_A from the first and A's mask key from the second (A's input alone),
    gets nothing from D and E: only 2 of their closed neighbourhood confirmed their set, t = 3.
    The server routes every tag to every site (it cannot tell which ones verify)."""
    sites = list("ABCDE")
    q, exact, scale = _updates(sites, np.random.default_rng(10))
    clients = {s: SecAggClient(s, RUN, 1) for s in sites}
    srv = SecAggServer(RUN, 1, sites, 3, N)
    u1 = srv.receive_keys({s: c.advertise_keys() for s, c in clients.items()})
    routed = srv.route_shares({s: clients[s].share_keys(u1, 3) for s in sites})
    for s in sites:
        clients[s].masked_input(routed[s], q[s])
    everyone, without_a = sites, ["B", "C", "D", "E"]
    tags = {s: clients[s].confirm(everyone if s in "ABC" else without_a) for s in sites}
    to = {r: {s: tags[s][r] for s in sites if r in tags[s]} for r in sites}
    for s in "ABC":  # three valid confirmations of their set: they reveal (b of every survivor)
        assert set(clients[s].unmask(everyone, [], to[s])) == set(sites)
    for s in "DE":
        with pytest.raises(SecAggError, match="2 of my neighbourhood confirmed"):
            clients[s].unmask(without_a, ["A"], to[s])


def _masked_ready(sites="ABCDE", t=3, rnd=1, run_id=RUN):
    clients = {s: SecAggClient(s, run_id, rnd) for s in sites}
    keys = {s: c.advertise_keys() for s, c in clients.items()}
    cts = {s: clients[s].share_keys(keys, t) for s in sites}
    return clients, keys, cts


def test_client_reveals_only_a_confirmed_survivor_set():
    clients, _, cts = _masked_ready()
    for s in "ABCD":  # E's shares reach no one (it left after sharing keys)
        clients[s].masked_input({j: cts[j][s] for j in "ABCD" if j != s}, np.zeros(8, np.uint32))
    a = clients["A"]
    with pytest.raises(SecAggError, match="leaves out my own"):
        a.confirm(["B", "C", "D"])
    with pytest.raises(SecAggError, match="only 2 of my neighbourhood"):
        a.confirm(["A", "B"])  # t = 3: the sum of A and B would give B's input to A's server
    with pytest.raises(SecAggError, match="unknown"):
        a.confirm(["A", "B", "Z"])
    with pytest.raises(SecAggError, match="never got shares"):
        a.confirm(["A", "B", "E"])
    view = ["A", "B", "C"]  # D dropped before its masked input
    tags = {s: clients[s].confirm(view) for s in view}
    to_a = {s: tags[s]["A"] for s in "BC"}
    with pytest.raises(SecAggError, match="differs from the one I confirmed"):
        a.unmask(["A", "B", "C", "D"], [], to_a)
    with pytest.raises(SecAggError, match="both"):
        a.unmask(view, ["B", "D"], to_a)
    with pytest.raises(SecAggError, match="dropped neighbours"):
        a.unmask(view, [], to_a)  # D shared keys and is no survivor: its mask key is due
    with pytest.raises(SecAggError, match="2 of my neighbourhood confirmed"):
        a.unmask(view, ["D"], {"B": to_a["B"]})
    with pytest.raises(SecAggError, match="2 of my neighbourhood confirmed"):
        a.unmask(view, ["D"], {"B": to_a["B"], "C": tags["C"]["B"]})  # C's tag to B, not to A
    shares = a.unmask(view, ["D"], to_a)
    assert set(shares) == {"A", "B", "C", "D"}
    assert a.unmask(view, ["D"], to_a) == shares  # a retry is fine


# -- binding to run, round, sender and recipient -------------------------------------------------


def test_ciphertext_replayed_in_next_round_is_rejected():
    _, _, old = _masked_ready(rnd=1)
    clients, _, new = _masked_ready(rnd=2)
    with pytest.raises(SecAggError, match="authentication"):
        clients["A"].masked_input({"B": old["B"]["A"], "C": new["C"]["A"]}, np.zeros(8, np.uint32))


def test_ciphertext_with_another_sender_recipient_round_or_run_is_rejected():
    clients, _, cts = _masked_ready()
    vec = np.zeros(8, np.uint32)
    cases = [
        {"C": cts["B"]["A"]},  # B's ciphertext for A, relabelled as from C
        {"B": cts["A"]["B"]},  # A's own ciphertext for B reflected back (same pair key)
        {"B": cts["B"]["C"]},  # B's ciphertext for C, delivered to A
        {"B": cts["B"]["A"][:-1] + bytes([cts["B"]["A"][-1] ^ 1])},  # tampered
    ]
    for bad in cases:
        with pytest.raises(SecAggError):
            copy.deepcopy(clients["A"]).masked_input(bad, vec)
    for attr, value in (("rnd", 2), ("run_id", "other-run")):  # same keys, other round/run
        c = copy.deepcopy(clients["A"])
        setattr(c, attr, value)
        with pytest.raises(SecAggError, match="authentication"):
            c.masked_input({"B": cts["B"]["A"]}, vec)
    ok = copy.deepcopy(clients["A"]).masked_input({s: cts[s]["A"] for s in "BCDE"}, vec)
    assert ok.shape == (8,)


def test_client_checks_keys_and_order():
    c = SecAggClient("A", RUN, 1)
    with pytest.raises(SecAggError, match="share keys out of order"):
        c.share_keys({}, 3)
    keys = {"A": c.advertise_keys(), "B": (b"\x01" * 32, b"\x02" * 32)}
    with pytest.raises(SecAggError, match="duplicate"):
        c.share_keys({**keys, "C": (b"\x01" * 32, b"\x03" * 32)}, 2)
    with pytest.raises(SecAggError, match="echoed"):
        c.share_keys({**keys, "A": (b"\x05" * 32, b"\x06" * 32)}, 2)
    with pytest.raises(SecAggError, match="threshold"):
        c.share_keys(keys, 3)
    with pytest.raises(SecAggError, match="masked input out of order"):
        c.masked_input({}, np.zeros(4, np.uint32))


def test_server_validates_stages_and_inputs():
    srv = SecAggServer(RUN, 1, list("ABCD"), 3, 16)
    with pytest.raises(SecAggError, match="out of order"):
        srv.route_shares({})
    with pytest.raises(SecAggError, match="unexpected"):
        srv.receive_keys({"Z": (b"\x01" * 32, b"\x02" * 32)})
    clients = {s: SecAggClient(s, RUN, 1) for s in "ABCD"}
    keys = {s: c.advertise_keys() for s, c in clients.items()}
    keys["D"] = keys["C"]  # D copies C's keys: both are dropped
    with pytest.raises(SecAggAbort):
        srv.receive_keys(keys)
    with pytest.raises(SecAggAbort):
        SecAggServer(RUN, 1, ["A", "B"], 3, 16)  # fewer sites than t
    with pytest.raises(ValueError, match="neighbourhood"):
        SecAggServer(RUN, 1, [f"s{i}" for i in range(8)], 4, 16, neighbours=2)


def test_malformed_masked_vector_counts_as_dropout():
    sites = list("ABCDE")
    q, exact, scale = _updates(sites, np.random.default_rng(11))
    clients = {s: SecAggClient(s, RUN, 1) for s in sites}
    srv = SecAggServer(RUN, 1, sites, 3, N)
    u1 = srv.receive_keys({s: c.advertise_keys() for s, c in clients.items()})
    routed = srv.route_shares({s: clients[s].share_keys(u1, 3) for s in sites})
    masked = {s: clients[s].masked_input(routed[s], q[s]) for s in sites}
    masked["B"] = masked["B"][:-1]
    masked["D"] = masked["D"].astype(np.int64)
    surv, dropped = srv.receive_masked(masked)
    assert surv == ["A", "C", "E"] and dropped == ["B", "D"]
    total = srv.unmask(_reveal(srv, clients, surv, dropped))
    h = SimpleNamespace(total=total, surv=surv)
    _check_sum(h, q, exact, scale)


def test_unmask_reply_with_foreign_shares_counts_as_dropout():
    sites = list("ABCDE")
    q, exact, scale = _updates(sites, np.random.default_rng(12))
    clients = {s: SecAggClient(s, RUN, 1) for s in sites}
    srv = SecAggServer(RUN, 1, sites, 3, N)
    u1 = srv.receive_keys({s: c.advertise_keys() for s, c in clients.items()})
    routed = srv.route_shares({s: clients[s].share_keys(u1, 3) for s in sites})
    surv, dropped = srv.receive_masked({s: clients[s].masked_input(routed[s], q[s]) for s in sites})
    replies = _reveal(srv, clients, surv, dropped)
    replies["D"] = dict(replies["C"])  # D echoes C's shares (not its own x-coordinate)
    total = srv.unmask(replies)
    assert srv.dropouts["unmasking"] == ["D"] and srv.u5 == ["A", "B", "C", "E"]
    _check_sum(SimpleNamespace(total=total, surv=surv), q, exact, scale)


def test_masks_are_bound_to_the_round_each_site_was_sent():
    """Sites sent the same round (model, orders, scale: one mask_context) sum exactly, and the
    server needs that context to remove the masks of a site that dropped; a site sent another
    round refuses to unmask (its peers' confirmations do not verify) and, though its peers reveal,
    its pairwise masks do not cancel: the sum is noise, not its update."""
    rng = np.random.default_rng(5)
    vectors = {s: rng.integers(0, 2**32, N, dtype=np.uint32) for s in "ABCDE"}
    want = np.zeros(N, np.uint32)
    for s in "BCDE":
        want += vectors[s]
    ctx = sa.mask_context(sa.round_digest({"w": np.ones(3, np.float32)}, {"lr": 0.1}), 1e4, 1.0)
    same = dict.fromkeys("ABCDE", ctx)
    h = run_round(vectors, 3, drop={"after_shares": {"A"}}, context=same, server_context=ctx)
    assert np.array_equal(h.total, want)  # A dropped: its pair masks removed under ctx
    h = run_round(vectors, 3, drop={"after_shares": {"A"}}, context=same)
    assert not np.array_equal(h.total, want)  # the server must know the round it sent
    other = sa.mask_context(sa.round_digest({"w": np.zeros(3, np.float32)}, {"lr": 0.1}), 1e4, 1.0)
    with pytest.raises(SecAggError, match="1 of my neighbourhood confirmed"):
        run_round(vectors, 3, context={**same, "A": other}, server_context=ctx)
    h = run_round(
        vectors, 3, drop={"after_confirm": {"A"}}, context={**same, "A": other}, server_context=ctx
    )
    assert not np.array_equal(h.total, want + vectors["A"])  # A's update is not in the clear
    assert _chi2_bytes(h.total - want) < 400  # what is left is uniform: A's masks, not A's input


def test_the_round_digest_covers_the_model_and_the_common_orders_but_not_the_seed():
    w = {"a": np.arange(4, dtype=np.float32), "b": np.ones((2, 2), np.float32)}
    orders = {"round": 1, "lr": 0.001, "local_epochs": 2, "seed": 7, "secagg": True}
    d = sa.round_digest(w, orders)
    assert sa.round_digest(w, {**orders, "seed": 8}) == d  # each site has its own seed
    assert sa.round_digest({**w, "a": w["a"] + 1e-7}, orders) != d
    assert sa.round_digest({**w, "a": w["a"].astype(np.float64)}, orders) != d
    assert sa.round_digest({**w, "b": w["b"].reshape(4)}, orders) != d
    assert sa.round_digest(w, {**orders, "lr": 0.002}) != d
    assert sa.round_digest(w, {**orders, "local_epochs": 3}) != d
    assert sa.mask_context(d, 1e4, 1.0) != sa.mask_context(d, 1e4 * (1 + 1e-15), 1.0)
