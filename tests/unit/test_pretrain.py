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
