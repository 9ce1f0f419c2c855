"""Public pretraining: a public pool apart from every benchmark split, deterministic weights,
shared through the cache, used only by the methods marked ``pretrained``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from common.config import parse_config
from common.data.generate import render_slice
from common.data.sites import resolve_sites
from common.model import get_params, model_for
from common.training import pretrain as pt


@pytest.fixture
def cfg():
    return parse_config(
        {
            "seed": 4,
            "data": {"image_size": 32},
            "model": {"base": 4, "groups": 2},
            "pretrain": {"public_size": 12, "epochs": 2, "batch_size": 4, "lr": 0.01},
        }
    )


def test_public_pool_is_its_own_data(cfg):
    images, masks = pt.public_pool(cfg)
    assert images.shape == masks.shape == (12, 32, 32) and images.dtype == np.int16
    again, _ = pt.public_pool(cfg)
    np.testing.assert_array_equal(images, again)
    assert cfg.public_seed not in (cfg.seed, cfg.attacker_seed)
    site_a = resolve_sites(cfg.data)[0]
    for split in ("train", "holdout", "test"):  # no benchmark slice is a public slice
        ref = render_slice(cfg.seed, 0, split, 0, site_a, 32, cfg.data.noise_ref_hu).image
        assert not any(np.array_equal(ref, im) for im in images)


def test_pretrained_weights_are_deterministic_cached_and_only_for_pretrained_methods(
    cfg, tmp_path, monkeypatch
):
    monkeypatch.setenv(pt.CACHE_ENV, str(tmp_path))
    calls = []
    real = pt.pretrain
    monkeypatch.setattr(pt, "pretrain", lambda c, m, d=None: calls.append(m) or real(c, m, d))
    first = get_params(pt.initial_model(cfg, "dpsgd-pt"))
    second = get_params(pt.initial_model(cfg, "groupnorm-pt"))  # same network: cache hit
    assert calls == ["dpsgd-pt"] and len(list(tmp_path.glob("pretrained-*.npz"))) == 1
    _, record = pt.pretrained(cfg, "groupnorm-pt")  # the record comes from the cache too
    assert calls == ["dpsgd-pt"] and len(record["attempts"]) == 1
    random = get_params(model_for(cfg, "dpsgd-pt"))
    assert all(np.array_equal(first[k], second[k]) for k in first)
    assert not all(np.array_equal(first[k], random[k]) for k in first)
    monkeypatch.delenv(pt.CACHE_ENV)
    fresh = pt.pretrained_params(cfg, "dpsgd-pt")  # no cache: trained again, bit-identical
    assert calls == ["dpsgd-pt", "dpsgd-pt"]
    assert all(np.array_equal(first[k], fresh[k]) for k in first)
    plain = get_params(pt.initial_model(cfg, "dpsgd"))
    assert all(np.array_equal(plain[k], random[k]) for k in plain)
    assert calls == ["dpsgd-pt", "dpsgd-pt"]


def test_the_cache_key_changes_with_the_recipe(cfg):
    other = cfg.model_copy(update={"pretrain": cfg.pretrain.model_copy(update={"epochs": 3})})
    assert pt._key(cfg, "dpsgd-pt") != pt._key(other, "dpsgd-pt")
    assert pt._key(cfg, "dpsgd-pt") == pt._key(cfg, "groupnorm-pt")
    assert pt._key(cfg, "dpsgd-pt") != pt._key(cfg, "fedavg")  # BatchNorm network
    assert pt._key(cfg, "dpsgd-pt") != pt._key(cfg, "dpsgd-pt", torch.device("cuda"))


def _pretrain_as_before(cfg, method):
    """The recipe before the public check: one model from ``model_for``, trained once."""
    from torch.utils.data import DataLoader, TensorDataset

    from common.training.local import train_local
    from common.transforms import to_inputs

    images, masks = pt.public_pool(cfg)
    x = to_inputs(images, tuple(cfg.data.window))
    y = torch.from_numpy(masks.astype(np.float32)).unsqueeze(1)
    model = model_for(cfg, method)
    p = cfg.pretrain
    loader = DataLoader(TensorDataset(x, y), batch_size=p.batch_size, shuffle=True)
    train_local(model, loader, epochs=p.epochs, lr=p.lr, seed=cfg.public_seed)
    return get_params(model)


def _with(cfg, **pretrain):
    return cfg.model_copy(update={"pretrain": cfg.pretrain.model_copy(update=pretrain)})


def test_a_model_that_did_not_collapse_keeps_its_weights_and_its_check_is_recorded(cfg):
    params, record = pt.pretrain(cfg, "dpsgd-pt")  # min_dice 0: never judged
    before = _pretrain_as_before(cfg, "dpsgd-pt")
    assert all(np.array_equal(params[k], before[k]) for k in before)
    (attempt,) = record["attempts"]
    assert attempt["model_seed"] == cfg.seed and attempt["shuffle_seed"] == cfg.public_seed
    assert record["holdout_slices"] == cfg.pretrain.holdout_size > 0
    dice = attempt["public_holdout_dice"]  # measured on the public holdout, a real Dice
    assert dice is not None and 0.0 <= dice <= 1.0


def test_the_public_holdout_is_its_own_data(cfg):
    train, _ = pt.public_pool(cfg)
    holdout, masks = pt.public_pool(cfg, "holdout", 8)
    assert holdout.shape == (8, 32, 32) and masks.any()
    assert not any(np.array_equal(h, t) for h in holdout for t in train)


def test_a_model_that_predicts_no_tumour_is_caught(cfg):
    from common.transforms import to_inputs

    model = model_for(cfg, "dpsgd-pt")
    with torch.no_grad():
        model.head.bias.fill_(-100.0)  # every pixel background: the collapsed basin
    images, masks = pt.public_pool(cfg, "holdout", 16)
    assert pt._public_dice(model, (to_inputs(images, tuple(cfg.data.window)), masks)) == 0.0


def test_a_collapsed_pretraining_is_trained_again_from_another_public_init(cfg, monkeypatch):
    cfg = _with(cfg, min_dice=0.05)
    seen = []
    real = pt._public_dice

    def judged(model, holdout):  # each pretraining's first attempt collapses, its second learns
        seen.append(real(model, holdout))  # the real measurement runs on every attempt
        return 0.0 if len(seen) % 2 else 0.3

    monkeypatch.setattr(pt, "_public_dice", judged)
    params, record = pt.pretrain(cfg, "dpsgd-pt")
    first, second = record["attempts"]
    assert len(seen) == 2 and first["public_holdout_dice"] == 0.0
    assert second["public_holdout_dice"] == 0.3
    assert second["model_seed"] == cfg.seed + pt.RETRY_SEED_STRIDE
    assert second["shuffle_seed"] == cfg.public_seed + 1
    before = _pretrain_as_before(cfg, "dpsgd-pt")  # what attempt 1 gave: not what is returned
    assert not all(np.array_equal(params[k], before[k]) for k in before)
    again, _ = pt.pretrain(cfg.model_copy(update={"seed": cfg.seed}), "dpsgd-pt")  # deterministic
    assert all(np.array_equal(params[k], again[k]) for k in params)


def test_pretraining_that_never_learns_is_an_error_naming_what_to_change(cfg):
    never = _with(cfg, min_dice=1.0, attempts=2)  # a perfect public Dice: out of reach
    with pytest.raises(pt.PretrainingCollapsed, match="all 2 attempts.*pretrain.epochs"):
        pt.pretrain(never, "dpsgd-pt")
