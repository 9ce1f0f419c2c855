"""A malicious aggregator against secure aggregation (attacks/aggregator.py): each attack wins
against the deliberately weakened site (the positive control) and loses against the site code
`fedonco client` runs, except key substitution, which no check of a single site can see without
a PKI binding the sites' keys: it wins against the plain site and loses against the site under
mutual TLS, which checks every peer's keys against its certificate (docs/threat-model.md says
so; these tests keep the claim honest)."""

import pytest

from attacks.aggregator import ATTACKS, isolate, threat_table
from common.config import load_profile, with_overrides
from common.secagg import SecAggClient, SecAggError


@pytest.mark.parametrize(
    "attack", ["dropout-lie", "low-threshold", "key-substitution", "model-split"]
)
def test_every_attack_isolates_the_victim_at_a_trusting_site(attack):
    assert isolate(attack, "trusting").isolated


def test_split_views_need_two_groups_of_t_sites():
    # the positive control: t = 3 of 6 is not a majority, and both groups reach t
    assert isolate("split-views", "trusting", n=6, threshold=3).isolated
    # at t = 3 of 5 the second group holds only two shares of the victim's mask key
    out = isolate("split-views", "trusting", n=5, threshold=3)
    assert not out.isolated and "pairwise secrets with 0 of 4" in out.detail


def test_the_site_refuses_to_be_left_with_the_victim_alone():
    out = isolate("dropout-lie", "honest")
    assert not out.isolated
    for s in "BCDE":  # each was told "only you and A survived"
        assert "only 2 of my neighbourhood among the survivors" in out.refused[s]
    assert "confirmed this survivor set" in out.refused["A"]  # nobody confirmed A's set


def test_the_site_refuses_a_lower_threshold_than_the_federations():
    out = isolate("low-threshold", "honest")
    assert not out.isolated
    assert all(
        "asked for threshold 2, the federation's is 3" in why for why in out.refused.values()
    )
    assert set(out.refused) == set("ABCDE")


@pytest.mark.parametrize("n, t", [(5, 3), (7, 4)])
def test_sites_shown_the_victim_dropped_get_too_few_confirmations(n, t):
    out = isolate("split-views", "honest", n=n, threshold=t)
    assert not out.isolated
    shown_dropped = [chr(ord("A") + i) for i in range((n + 1) // 2, n)]
    for s in shown_dropped:
        assert "of my neighbourhood confirmed this survivor set" in out.refused[s]


def test_a_threshold_that_is_no_majority_is_refused_by_the_config():
    # the attack wins against honest sites when t <= n/2: each half confirms its own set
    assert isolate("split-views", "honest", n=6, threshold=3).isolated
    assert isolate("split-views", "pki", n=6, threshold=3).isolated  # bindings do not help here
    cfg = load_profile("smoke")
    with pytest.raises(ValueError, match="majority"):
        with_overrides(cfg, **{"secagg.threshold": 2, "fl.min_fit_sites": 2})


def test_the_site_refuses_a_neighbour_set_that_is_not_the_graphs():
    sites = "ABCDE"
    clients = {s: SecAggClient(s, "r", 1, expect=(3, None)) for s in sites}
    keys = {s: c.advertise_keys() for s, c in clients.items()}
    with pytest.raises(SecAggError, match="neighbour set"):
        clients["A"].share_keys(keys, 3, ["B", "C"])  # the complete graph gives B, C, D, E
    assert len(clients["B"].share_keys(keys, 3, list("ACDE"))) == 4


def test_key_substitution_is_not_detected_by_any_single_site_check():
    """The limitation docs/threat-model.md states without TLS: the server relays the public keys,
    and nothing binds them to a site's identity, so it can stand in for every peer of the
    victim."""
    out = isolate("key-substitution", "honest")
    assert out.isolated and out.refused == {}


def test_key_substitution_is_refused_by_a_site_that_checks_key_bindings():
    """Under mutual TLS each peer's keys must be signed with the certificate the roster gives
    it: the server can neither reuse a peer's signature over other keys nor sign its own keys
    with its certificate (another CN). The victim shares nothing."""
    out = isolate("key-substitution", "pki")
    assert not out.isolated and set(out.refused) == {"A"}
    why = out.refused["A"]
    assert why.count("key binding") == 2
    assert "signature does not verify" in why  # the peers' real signatures, replayed
    assert "certificate CN 'server' is not the roster's 'site-B'" in why  # the server's own


@pytest.mark.parametrize("attack", ["dropout-lie", "split-views", "low-threshold"])
def test_the_other_attacks_end_at_a_pki_site_as_at_the_plain_one(attack):
    """The bindings the server relays unchanged verify, so the same checks refuse the same lies."""
    plain, pki = isolate(attack, "honest"), isolate(attack, "pki")
    assert not pki.isolated and pki.refused == plain.refused and pki.detail == plain.detail
    assert not any("key binding" in why for why in pki.refused.values())


def test_a_pki_site_refuses_keys_without_a_binding():
    from attacks.aggregator import RUN, _pki
    from common.keybind import KeyVerifier

    pki = _pki(tuple("ABC"))
    clients = {s: SecAggClient(s, RUN, 1, verify=KeyVerifier(pki.ca_pem, pki.names)) for s in "ABC"}
    keys = {s: c.advertise_keys() for s, c in clients.items()}
    signed = {s: pki.signers[s].sign(RUN, 1, s, *keys[s]) for s in "ABC"}
    with pytest.raises(SecAggError, match="no key binding .* for C"):
        clients["A"].share_keys(keys, 2, None, {s: signed[s] for s in "AB"})
    with pytest.raises(SecAggError, match="fail their key binding"):  # signed for another round
        clients["A"].share_keys(
            keys, 2, None, signed | {"B": pki.signers["B"].sign(RUN, 2, "B", *keys["B"])}
        )
    assert set(clients["A"].share_keys(keys, 2, None, signed)) == {"B", "C"}


def test_the_threat_table_has_every_attack_against_every_kind_of_site():
    rows = threat_table()
    assert [(r.attack, r.sites) for r in rows] == [
        (a, s) for a in ATTACKS for s in ("honest", "trusting", "pki")
    ]
    won = {(r.attack, r.sites) for r in rows if r.isolated}
    assert won == {
        ("dropout-lie", "trusting"),
        ("low-threshold", "trusting"),
        ("key-substitution", "honest"),
        ("key-substitution", "trusting"),
        ("model-split", "trusting"),
    }


def test_an_unknown_attack_or_site_kind_is_refused():
    with pytest.raises(ValueError, match="attack in"):
        isolate("no-such-attack")
    with pytest.raises(ValueError, match="attack in"):
        isolate("dropout-lie", "gullible")


@pytest.mark.parametrize("sites", ["honest", "pki"])
def test_a_site_sent_another_round_refuses_and_its_masks_do_not_cancel(sites):
    """model-split: the victim was sent another model than its peers. Its peers' confirmations
    do not verify for it (it refuses to unmask: detected), and the peers, who each see t valid
    confirmations, reveal; yet the sum the server unmasks is not the victim's update: the
    victim's pairwise masks were bound to its round and do not cancel against its peers'."""
    out = isolate("model-split", sites)
    assert not out.isolated and out.detail == "the victim's masks did not cancel"
    assert set(out.refused) == {"A"}
    assert "1 of my neighbourhood confirmed" in out.refused["A"]


def test_a_crafted_model_leaves_every_other_sites_update_zero():
    """The premise of model-split, on the real U-Net and the real local training: under
    dead_model a site's training moves nothing but the head's bias, while the same site trained
    from the honest model moves every weight; so the sum of the peers' updates is zero there and
    a server that split the round would read the victim's update off the sum."""
    import numpy as np
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from attacks.aggregator import dead_model
    from common.model import build_model, get_params, set_params
    from common.training.local import train_local

    gen = torch.Generator().manual_seed(0)
    x = torch.rand(8, 1, 16, 16, generator=gen)
    y = (torch.rand(8, 1, 16, 16, generator=gen) > 0.8).float()

    def update(params):
        model = build_model(base=4, norm="group", groups=2, seed=1)
        set_params(model, params)
        loader = DataLoader(TensorDataset(x, y), batch_size=4, shuffle=True)
        train_local(model, loader, epochs=2, lr=1e-2, seed=0)
        return {k: get_params(model)[k] - params[k] for k in params}

    model = build_model(base=4, norm="group", groups=2, seed=1)
    honest, crafted = update(get_params(model)), update(dead_model(model))
    moved = sorted(k for k, d in crafted.items() if np.any(d != 0))
    assert moved == ["head.bias"]
    assert all(np.any(d != 0) for d in honest.values())
