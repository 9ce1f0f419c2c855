from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from common.model import build_model, get_params, state_sha256
from common.training.local import (
    proximal_anchor,
    proximal_term,
    train_local,
    weighted_contribution,
)


def _loader(seed: int = 0, n: int = 8, shuffle: bool = True) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 1, 8, 8, generator=g)
    masks = (torch.rand(n, 1, 8, 8, generator=g) > 0.8).float()
    return DataLoader(TensorDataset(images, masks), batch_size=4, shuffle=shuffle)


def _train(seed: int = 0, **kw) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    model = build_model(base=4, seed=1)
    metrics = train_local(model, _loader(), epochs=2, lr=1e-2, seed=seed, **kw)
    return metrics, get_params(model)


def test_deterministic_for_a_seed_and_leaves_global_rng() -> None:
    torch.manual_seed(0)
    expected_next = torch.rand(2)
    torch.manual_seed(0)
    m1, p1 = _train(seed=3)
    assert torch.equal(torch.rand(2), expected_next)
    _, p2 = _train(seed=3)
    _, p3 = _train(seed=4)  # another shuffling order
    assert state_sha256(p1) == state_sha256(p2)
    assert state_sha256(p1) != state_sha256(p3)
    assert m1["num_examples"] == 8 and m1["steps"] == 4 and m1["loss"] > 0


def test_training_changes_weights_and_bn_buffers() -> None:
    before = get_params(build_model(base=4, seed=1))
    _, after = _train()
    assert not np.array_equal(before["enc1.0.weight"], after["enc1.0.weight"])
    assert not np.array_equal(before["enc1.1.running_mean"], after["enc1.1.running_mean"])


def test_proximal_term_is_squared_by_hand() -> None:
    model = build_model(base=4, seed=1)
    anchor = proximal_anchor(model)
    with torch.no_grad():
        model.head.bias.add_(3.0)  # one parameter moves by 3
        model.enc1[0].weight[0, 0, 0, 0] += -2.0  # and one weight by -2
    mu = 0.1
    expected = mu / 2 * (3.0**2 + 2.0**2)  # squared distance, not the norm sqrt(13)
    assert proximal_term(model, anchor, mu).item() == pytest.approx(expected, rel=1e-5)
    assert proximal_term(model, anchor, 0.0).item() == 0.0


def test_anchor_is_a_copy_not_a_view() -> None:
    model = build_model(base=4, seed=1)
    anchor = proximal_anchor(model)
    with torch.no_grad():
        model.head.bias.add_(1.0)
    assert proximal_term(model, anchor, 2.0).item() == pytest.approx(1.0)


def test_anchor_from_global_params() -> None:
    model = build_model(base=4, seed=1)
    g = get_params(model)
    g["head.bias"] = g["head.bias"] + 2.0
    anchor = proximal_anchor(model, g)
    assert proximal_term(model, anchor, 1.0).item() == pytest.approx(2.0)
    del g["head.bias"]
    with pytest.raises(ValueError, match="head.bias"):
        proximal_anchor(model, g)


def test_fedprox_changes_the_update_and_pulls_towards_global() -> None:
    start = get_params(build_model(base=4, seed=1))
    _, plain = _train(seed=0)
    m_prox, prox = _train(seed=0, proximal_mu=1.0)
    assert m_prox["prox"] > 0
    assert state_sha256(plain) != state_sha256(prox)

    def dist(p: dict[str, np.ndarray]) -> float:
        return sum(float(((p[k] - start[k]) ** 2).sum()) for k in start if "running" not in k)

    assert dist(prox) < dist(plain)
    _, default_mu = _train(seed=0, proximal_mu=0.01)  # the paper's mu has an effect too
    assert state_sha256(default_mu) != state_sha256(plain)


def test_train_validation() -> None:
    model = build_model(base=4, seed=1)
    with pytest.raises(ValueError, match="lr"):
        train_local(model, _loader(), epochs=1, lr=0.0, seed=0)
    with pytest.raises(ValueError, match="epochs"):
        train_local(model, _loader(), epochs=0, lr=0.1, seed=0)
    with pytest.raises(ValueError, match="optimizer"):
        train_local(model, _loader(), epochs=1, lr=0.1, seed=0, optimizer="lbfgs")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no batch"):
        train_local(model, [], epochs=1, lr=0.1, seed=0)


def test_sgd_option_trains() -> None:
    metrics, _ = _train(optimizer="sgd")
    assert np.isfinite(metrics["loss"])


def test_weighted_contribution() -> None:
    p = {"w": np.array([0.5, -1.0], np.float32)}
    out = weighted_contribution(p, 4)
    np.testing.assert_array_equal(out["w"], [2.0, -4.0])
    assert out["w"].dtype == np.float32
    with pytest.raises(ValueError, match="positive"):
        weighted_contribution(p, 0)
