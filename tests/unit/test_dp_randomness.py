"""Issue 25: a site's DP randomness is its own (the server's view does not determine it), a
re-run round draws fresh randomness and is accounted, and ε is stated for replace-one adjacency."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest
import torch

from common.config import load_profile, with_overrides
from common.model import build_model
from common.seeds import site_round_seed
from common.training.dp import DPSettings, DPTrainer, SiteAccountant
from common.training.dp.adjacency import (
    rdp_integral,
    replace_one_epsilon,
    replace_one_rdp,
    replace_one_sigma,
)
from common.training.dp.randomness import (
    DP_NOISE,
    DP_SAMPLING,
    SEEDED,
    SITE_SECRET,
    AttemptLog,
    NoiseSource,
    key_path,
    load_or_create_key,
)
from common.training.dp.settings import DPConfigError

DELTA = 1e-5


def tiny_data(n=12, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 1, size, size, generator=g)
    masks = (torch.rand(n, 1, size, size, generator=g) > 0.8).float()
    return list(zip(images, masks, strict=True))


def one_round(generator_seeds=None, seed=0) -> torch.Tensor:
    """The weights after one DP-SGD round of a tiny model (same start, same data)."""
    model = build_model(base=4, norm="group", groups=2, seed=0)
    trainer = DPTrainer(model, DPSettings())
    try:
        trainer.train_round(
            tiny_data(),
            epochs=1,
            lr=1e-3,
            batch_size=4,
            seed=seed,
            sigma=1.2,
            accountant=SiteAccountant(),
            generator_seeds=generator_seeds,
        )
    finally:
        trainer.close()
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def seeds_of(src: NoiseSource, rnd=1, attempt=1):
    return src.torch_seed(rnd, attempt, DP_SAMPLING), src.torch_seed(rnd, attempt, DP_NOISE)


def test_the_servers_view_does_not_determine_a_sites_noise(tmp_path):
    """Two sites' state dirs (different keys) with the same run seed, run id and server config:
    different noise. Everything the server knows (the run seed, the per-site seed it sends, the
    run id, the method) re-derives neither site's noise, and a restarted site (same key file)
    draws the same noise as before its restart."""
    cfg_seed, run_id, method = 42, "dpsgd-0123456789ab", "dpsgd"
    a = NoiseSource.for_site(
        SITE_SECRET,
        state_root=tmp_path / "siteA-host",
        site="A",
        seed=cfg_seed,
        run_id=run_id,
        method=method,
    )
    b = NoiseSource.for_site(
        SITE_SECRET,
        state_root=tmp_path / "siteB-host",
        site="A",
        seed=cfg_seed,
        run_id=run_id,
        method=method,
    )
    wa, wb = one_round(seeds_of(a)), one_round(seeds_of(b))
    assert not torch.equal(wa, wb)
    # the server's attempts: the seed it sends the site, and the public-seed simulation key
    sent = site_round_seed(cfg_seed, 1, "A")
    server_guesses = [
        one_round(None, seed=sent),
        one_round(None, seed=cfg_seed),
        one_round(
            seeds_of(
                NoiseSource.for_site(
                    SEEDED,
                    state_root=tmp_path,
                    site="A",
                    seed=cfg_seed,
                    run_id=run_id,
                    method=method,
                )
            )
        ),
    ]
    for guess in server_guesses:
        assert not torch.equal(guess, wa) and not torch.equal(guess, wb)
    # a restart reads the same key: the same stream (and the key is the owner's alone)
    again = NoiseSource.for_site(
        SITE_SECRET,
        state_root=tmp_path / "siteA-host",
        site="A",
        seed=cfg_seed,
        run_id=run_id,
        method=method,
    )
    assert seeds_of(again) == seeds_of(a)
    mode = stat.S_IMODE(key_path(tmp_path / "siteA-host", "A").stat().st_mode)
    assert mode == 0o600
    assert "key" not in repr(a).lower().replace("noisesource", "")  # the repr never shows it


def test_seeded_simulation_is_a_public_function_of_the_seed(tmp_path):
    kw = {"seed": 42, "run_id": "x", "method": "dpsgd"}
    one = NoiseSource.for_site(SEEDED, state_root=tmp_path / "1", site="A", **kw)
    two = NoiseSource.for_site(SEEDED, state_root=tmp_path / "2", site="A", **kw)
    assert seeds_of(one) == seeds_of(two)  # anyone with the seed: the same noise
    assert torch.equal(one_round(seeds_of(one)), one_round(seeds_of(two)))
    other = NoiseSource.for_site(SEEDED, state_root=tmp_path, site="B", **kw)
    assert seeds_of(other) != seeds_of(one)
    assert not list(tmp_path.rglob("*.dpkey"))  # no key is made in a simulation


def test_every_attempt_of_a_round_draws_fresh_randomness(tmp_path):
    src = NoiseSource(b"k" * 32, SITE_SECRET, "run")
    log = AttemptLog(tmp_path, "run")
    first, second = log.next(3), log.next(3)
    assert (first, second) == (1, 2)
    assert AttemptLog(tmp_path, "run").next(3) == 3  # persisted before use: a restart moves on
    assert AttemptLog(tmp_path, "another-run").next(3) == 1
    assert stat.S_IMODE((tmp_path / "dp_attempts.json").stat().st_mode) == 0o600
    assert seeds_of(src, 3, 1) != seeds_of(src, 3, 2)
    a, b = src.numpy_rng(3, 1, "ddp-noise"), src.numpy_rng(3, 2, "ddp-noise")
    assert not np.array_equal(a.integers(0, 2**62, 8), b.integers(0, 2**62, 8))
    # purposes never share a stream
    assert src.torch_seed(3, 1, DP_SAMPLING) != src.torch_seed(3, 1, DP_NOISE)


def test_a_key_others_can_read_or_a_short_key_is_refused(tmp_path):
    path = tmp_path / "siteA.dpkey"
    key = load_or_create_key(path)
    assert len(key) == 32 and load_or_create_key(path) == key
    os.chmod(path, 0o640)
    with pytest.raises(DPConfigError, match="chmod 600"):
        load_or_create_key(path)
    os.chmod(path, 0o600)
    path.write_bytes(b"short")
    with pytest.raises(DPConfigError, match="32 bytes"):
        load_or_create_key(path)


def test_a_deployed_site_refuses_seeded_noise_unless_told(tmp_path):
    from client.app import SiteClient

    cfg = with_overrides(load_profile("smoke"), **{"dp.randomness": SEEDED})
    with pytest.raises(ValueError, match="--allow-seeded-noise"):
        SiteClient(cfg, "A", "127.0.0.1:1", tmp_path / "no-data", tmp_path / "state")
    # allowed: it goes on (and then fails on the missing dataset, not on the randomness)
    with pytest.raises(Exception) as info:
        SiteClient(
            cfg,
            "A",
            "127.0.0.1:1",
            tmp_path / "no-data",
            tmp_path / "state",
            allow_seeded_noise=True,
        )
    assert "allow-seeded-noise" not in str(info.value)


def test_the_site_accountant_counts_every_attempt(tmp_path):
    """client.dp_site.DPState: a round re-run (server restart) is trained with fresh noise and
    both attempts are in the accountant; nothing rolls it back, also after a site restart."""
    from client.dp_site import DPState
    from common.fl.instructions import FitInstructions, TrainMode

    cfg = with_overrides(load_profile("smoke"), **{"train.batch_size": 4})
    data = tiny_data(12)
    noise = NoiseSource(b"s" * 32, SITE_SECRET, "run")
    orders = FitInstructions(
        round=1, seed=7, local_epochs=1, lr=1e-3, batch_size=4, mode=TrainMode.DP
    )

    def state():
        return DPState(cfg, len(data), tmp_path, "run", noise, AttemptLog(tmp_path, "run"))

    def model():
        return build_model(base=4, norm="group", groups=2, seed=0)

    first = state().train(model(), data, orders, None)
    rerun = state().train(model(), data, orders, None)  # a restarted site, round 1 again
    assert (first["attempt"], rerun["attempt"]) == (1, 2)
    assert rerun["steps_total"] == 2 * first["steps_total"] > 0
    assert rerun["epsilon"] > first["epsilon"]
    assert rerun["randomness"] == SITE_SECRET and rerun["adjacency"] == "replace-one"
    assert stat.S_IMODE((tmp_path / "dp_accountant.json").stat().st_mode) == 0o600


# -- replace-one accounting ---------------------------------------------------------------------


def test_replace_one_with_full_batches_is_the_gaussian_with_twice_the_sensitivity():
    from opacus.accountants.analysis.rdp import compute_rdp

    from common.training.dp.adjacency import ORDERS

    for sigma in (0.7, 1.2, 3.0):
        got = replace_one_rdp(1.0, sigma)
        want = compute_rdp(q=1.0, noise_multiplier=sigma / 2, steps=1, orders=list(ORDERS))
        np.testing.assert_allclose(got, want, rtol=1e-12)
        # the numerical integral (what q < 1 uses) gives the closed form at q = 1
        np.testing.assert_allclose(rdp_integral(1.0, sigma), want, rtol=1e-9)


@pytest.mark.parametrize(
    ("sigma", "q", "steps"),
    [(1.2, 0.4, 50), (2.0, 0.4, 25), (1.0, 0.1, 100), (0.9, 16 / 40, 13), (3.0, 0.05, 500)],
)
def test_replace_one_epsilon_checked_against_dp_accounting(sigma, q, steps):
    """An independent accountant (Google's dp-accounting, PLD, REPLACE_ONE): ours (RDP of the
    dominating pair) is never below it and agrees to the first digit (within 12%); and replace-one
    always costs more than add/remove."""
    dpa = pytest.importorskip("dp_accounting")
    from dp_accounting.pld import pld_privacy_accountant

    acc = pld_privacy_accountant.PLDAccountant(
        neighboring_relation=dpa.NeighboringRelation.REPLACE_ONE
    )
    acc.compose(dpa.PoissonSampledDpEvent(q, dpa.GaussianDpEvent(sigma)), steps)
    pld = acc.get_epsilon(DELTA)
    ours = replace_one_epsilon([(sigma, q, steps)], DELTA)
    assert pld <= ours <= 1.12 * pld, (ours, pld)
    add_remove = SiteAccountant("rdp", "add-remove")
    add_remove.record(sigma, q, steps)
    assert ours > add_remove.epsilon(DELTA)


def test_target_epsilon_is_met_for_the_relation_in_use():
    q, steps = 16 / 40, 25
    sigma_ro = replace_one_sigma(4.0, DELTA, q, steps)
    eps = replace_one_epsilon([(sigma_ro, q, steps)], DELTA)
    assert 3.9 <= eps <= 4.0
    assert replace_one_epsilon([(sigma_ro * 0.98, q, steps)], DELTA) > 4.0  # tight
    s = DPSettings(noise_multiplier=None, target_epsilon=4.0)
    assert s.adjacency == "replace-one"
    assert s.run_sigma(40, 16, 5, 2) > DPSettings(
        noise_multiplier=None, target_epsilon=4.0, adjacency="add-remove"
    ).run_sigma(40, 16, 5, 2)
    with pytest.raises(DPConfigError, match="replace-one"):
        DPSettings(accountant="prv")
    with pytest.raises(DPConfigError, match="adjacency"):
        DPSettings(adjacency="swap-two")


def test_results_md_says_where_the_noise_came_from_and_for_which_relation():
    from bench.report import privacy_table

    def entry(randomness):
        return {
            "epsilon": 4.0,
            "delta": 1e-5,
            "accountant": "rdp",
            "dice": 0.5,
            "dp": {
                "noise_multiplier": 4.2,
                "max_grad_norm": 1.0,
                "adjacency": "replace-one",
                "epsilon_by_adjacency": {"replace-one": 4.0, "add-remove": 1.99},
                "randomness": randomness,
            },
        }

    text = privacy_table({"methods": {"dpsgd-pt": entry("site-secret")}})
    assert "| replace-one | 1.99 |" in text and "site-secret" in text and "public seed" not in text
    text = privacy_table({"methods": {"dpsgd-pt": entry("seeded-simulation")}})
    assert "seeded-simulation" in text and "public seed" in text and "server" in text


@pytest.mark.slow
def test_docs_dp_md_quotes_the_privacy_table_the_command_prints():
    """docs/dp.md's table of the standard recipes' ε is `python -m bench.privacy_table`'s output,
    not typed numbers: regenerate it and compare."""
    from pathlib import Path

    from bench.privacy_table import privacy_table
    from common.config import resolve_config

    root = Path(__file__).resolve().parents[2]
    cfg = resolve_config(str(root / "configs" / "standard.toml"), None, None)
    table = privacy_table(cfg, [*cfg.fl.methods, "ddp-sgd-pt", "ddp-sgd"])
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    doc = (root / "docs" / "dp.md").read_text()
    assert rows and all(line in doc for line in rows), [r for r in rows if r not in doc]


def test_a_tiny_sigma_is_bounded_not_integrated_and_calibration_ends():
    """σ below the integration floor: the full-batch closed form (an upper bound; a tiny σ used
    to ask the grid for ~48 GB), still decreasing in σ across the floor; and a target ε so large
    that any σ meets it ends the bisection instead of halving σ towards 0."""
    from common.training.dp.adjacency import SIGMA_FLOOR

    tiny = replace_one_rdp(0.01, 1e-6)
    assert np.all(np.isfinite(tiny)) and min(tiny) > 1e11
    below = replace_one_rdp(0.3, SIGMA_FLOOR * 0.999)
    above = replace_one_rdp(0.3, SIGMA_FLOOR)
    assert np.all(below >= above) and np.any(below > above)
    sigma = replace_one_sigma(1e9, DELTA, 0.01, 10)
    assert 0 < sigma < SIGMA_FLOOR
    assert replace_one_epsilon([(sigma, 0.01, 10)], DELTA) <= 1e9
