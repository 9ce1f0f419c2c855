from __future__ import annotations

import numpy as np
import pytest

from common.fl.instructions import TrainMode
from common.fl.strategies import FedAvg, FedBN, FedProx
from common.fl.strategy import get_strategy, sum_weighted_updates
from common.model import build_model, float_keys, get_params, norm_keys
from common.training.local import weighted_contribution


def _fake_sites() -> dict[str, tuple[dict[str, np.ndarray], int]]:
    """Three sites' (params, n_k) with a weight, a bias and BatchNorm buffers."""
    rng = np.random.default_rng(0)
    sites = {}
    for site, n in (("A", 10), ("B", 30), ("C", 60)):
        params = {
            "conv.weight": rng.standard_normal((2, 1, 3, 3)).astype(np.float32),
            "bn.running_mean": rng.standard_normal(2).astype(np.float32),
            "bn.running_var": rng.random(2).astype(np.float32) + 0.5,
        }
        sites[site] = (params, n)
    return sites


def _aggregate(strategy: FedAvg, sites: dict, current: dict) -> dict[str, np.ndarray]:
    updates = {s: (weighted_contribution(p, n), n) for s, (p, n) in sites.items()}
    weighted_sum, total = sum_weighted_updates(updates)
    return strategy.aggregate_fit(1, weighted_sum, total, None, current=current)


def test_fedavg_equals_manual_weighted_mean_incl_bn_buffers() -> None:
    sites = _fake_sites()
    current = {k: np.zeros_like(v) for k, v in sites["A"][0].items()}
    new = _aggregate(FedAvg(), sites, current)
    weights = np.array([n for _, n in sites.values()], dtype=np.float64)
    for key in current:
        manual = np.average(np.stack([p[key] for p, _ in sites.values()]), axis=0, weights=weights)
        np.testing.assert_allclose(new[key], manual, rtol=1e-6, atol=1e-7)
        assert new[key].dtype == np.float32
    # a plain unweighted mean is different: the weights matter
    plain = np.mean([p["bn.running_mean"] for p, _ in sites.values()], axis=0)
    assert not np.allclose(new["bn.running_mean"], plain)


def test_sum_is_independent_of_arrival_order() -> None:
    sites = _fake_sites()
    updates = {s: (weighted_contribution(p, n), n) for s, (p, n) in sites.items()}
    reversed_updates = dict(reversed(list(updates.items())))
    a, ta = sum_weighted_updates(updates)
    b, tb = sum_weighted_updates(reversed_updates)
    assert ta == tb == 100.0
    for k in a:
        assert a[k].tobytes() == b[k].tobytes()


def test_sum_validation() -> None:
    sites = _fake_sites()
    with pytest.raises(ValueError, match="no updates"):
        sum_weighted_updates({})
    bad = {"A": (sites["A"][0], 10), "B": ({"conv.weight": sites["B"][0]["conv.weight"]}, 5)}
    with pytest.raises(ValueError, match="site 'B'.*missing"):
        sum_weighted_updates(bad)
    with pytest.raises(ValueError, match="weight must be a positive"):
        sum_weighted_updates({"A": (sites["A"][0], 0)})
    wrong = dict(sites["B"][0], **{"conv.weight": np.zeros((1, 1), np.float32)})
    with pytest.raises(ValueError, match="site 'B': conv.weight has shape"):
        sum_weighted_updates({"A": (sites["A"][0], 1), "B": (wrong, 1)})


def test_aggregate_fit_validation_and_untouched_keys() -> None:
    current = {"a": np.ones(2, np.float32), "local": np.full(2, 5.0, np.float32)}
    new = FedAvg().aggregate_fit(2, {"a": np.array([4.0, 8.0])}, 4.0, current=current)
    np.testing.assert_array_equal(new["a"], [1.0, 2.0])
    np.testing.assert_array_equal(new["local"], [5.0, 5.0])
    assert new["local"] is not current["local"]
    with pytest.raises(ValueError, match="total weight"):
        FedAvg().aggregate_fit(1, {"a": np.zeros(2)}, 0.0, current=current)
    with pytest.raises(ValueError, match="not in the global model"):
        FedAvg().aggregate_fit(1, {"zz": np.zeros(2)}, 1.0, current=current)
    with pytest.raises(ValueError, match="shape"):
        FedAvg().aggregate_fit(1, {"a": np.zeros(3)}, 1.0, current=current)
    with pytest.raises(ValueError, match="not finite"):
        FedAvg().aggregate_fit(1, {"a": np.array([np.inf, 0])}, 1.0, current=current)


def test_fedbn_shares_no_norm_key_and_fedavg_shares_all() -> None:
    model = build_model(base=4, seed=0)
    floats, norms = float_keys(model), norm_keys(model)
    shared_bn = FedBN().shared_keys(floats, norms)
    assert shared_bn and not set(shared_bn) & norms
    assert set(shared_bn) == set(floats) - norms
    shared_avg = FedAvg().shared_keys(floats, norms)
    assert shared_avg == sorted(floats) and "enc1.1.running_var" in shared_avg


def test_fedbn_aggregation_leaves_local_keys_alone() -> None:
    model = build_model(base=4, seed=0)
    current = get_params(model)
    shared = FedBN().shared_keys(current, norm_keys(model))
    site = {k: current[k] + 1.0 for k in shared}
    new = _aggregate(FedBN(), {"A": (site, 3), "B": (site, 5)}, current)
    for k in current:
        expected = current[k] + 1.0 if k in shared else current[k]
        np.testing.assert_allclose(new[k], expected, rtol=1e-6)


def test_configure_fit_instructions() -> None:
    cfg = FedAvg(local_epochs=2, lr=0.01, batch_size=8, seed=3).configure_fit(1, ["B", "A"])
    assert sorted(cfg) == ["A", "B"]
    assert cfg["A"].local_epochs == 2 and cfg["A"].lr == 0.01 and cfg["A"].round == 1
    assert cfg["A"].batch_size == 8 and cfg["A"].proximal_mu == 0.0
    assert cfg["A"].mode is TrainMode.PLAIN and cfg["A"].ddp is None
    assert cfg["A"].seed != cfg["B"].seed
    again = FedAvg(seed=3).configure_fit(1, ["A", "B"])
    assert again["A"].seed == cfg["A"].seed
    assert FedAvg(seed=3).configure_fit(2, ["A"])["A"].seed != cfg["A"].seed
    prox = FedProx().configure_fit(1, ["A"])
    assert prox["A"].proximal_mu == 0.01
    assert FedProx(proximal_mu=0.1).configure_fit(1, ["A"])["A"].proximal_mu == 0.1
    assert FedAvg(dp=True).configure_fit(1, ["A"])["A"].mode is TrainMode.DP


def test_partial_participation() -> None:
    sites = list("ABCDE")
    s = FedAvg(fraction_fit=0.4, min_fit_sites=1, seed=0)
    chosen = [tuple(s.configure_fit(r, sites)) for r in range(1, 9)]
    assert all(len(c) == 2 for c in chosen)
    assert len(set(chosen)) > 1  # the selection changes across rounds
    assert chosen == [tuple(s.configure_fit(r, sites)) for r in range(1, 9)]  # reproducible
    assert len(FedAvg(fraction_fit=0.2, min_fit_sites=3).configure_fit(1, sites)) == 3
    with pytest.raises(ValueError, match="min_fit_sites=3"):
        FedAvg(min_fit_sites=3).configure_fit(1, ["A", "B"])


def test_registry_and_validation() -> None:
    assert isinstance(get_strategy("FedProx", proximal_mu=0.5), FedProx)
    assert type(get_strategy("fedavg")) is FedAvg and type(get_strategy("fedbn")) is FedBN
    with pytest.raises(ValueError, match="unknown strategy 'dpsgd'"):
        get_strategy("dpsgd")
    with pytest.raises(ValueError, match="proximal_mu"):
        FedProx(proximal_mu=-1)
    with pytest.raises(ValueError, match="fraction_fit"):
        FedAvg(fraction_fit=0)
    with pytest.raises(TypeError):
        FedAvg(mu=1)  # type: ignore[call-arg]
