"""SCAFFOLD: the site's correction (common/training/scaffold.py) in the plain and the DP loop, the
server's control variate (common/fl/scaffold.py) and the simulator driving both."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_fl import _cfg, _site
from torch.utils.data import DataLoader

from common.fl.instructions import FitInstructions
from common.fl.scaffold import Scaffold
from common.fl.simulate import aggregation_layer, simulate_federation
from common.fl.strategies import FedAvg
from common.fl.strategy import split_extras, strategy_for
from common.model import buffer_keys, float_keys, get_params, model_for, set_params
from common.seeds import site_round_seed
from common.training.local import run_epochs, train_local
from common.training.scaffold import PREFIX, ControlVariates, trainable


def _model(seed: int = 0):
    torch.manual_seed(seed)
    return model_for(_cfg(), "scaffold")


def _controls(model, scale: float, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        PREFIX + n: (scale * rng.standard_normal(p.shape)).astype(np.float32)
        for n, p in trainable(model).items()
    }


def test_with_plain_sgd_the_new_control_variate_is_the_papers_option_two():
    """Karimireddy et al., Alg. 1, option II: c_i+ = c_i - c + (x - y) / (K lr). With SGD (no
    momentum) that equals the mean of the uncorrected gradients only if every one of the K
    steps added c - c_i: a correction skipped or applied twice breaks the equality."""
    model = _model()
    c, c_i = _controls(model, 0.05, 1), _controls(model, 0.05, 2)
    x = {n: p.detach().clone() for n, p in trainable(model).items()}
    cv = ControlVariates(model, c, c_i)
    lr = 0.01
    loader = DataLoader(_site(12, 0), batch_size=4, shuffle=False)
    run_epochs(model, loader, torch.optim.SGD(model.parameters(), lr=lr), epochs=2, grad_hook=cv)
    assert cv.steps == 6
    kept, delta = cv.finish()
    for n, p in trainable(model).items():
        option2 = c_i[PREFIX + n] - c[PREFIX + n] + (x[n] - p.detach()).numpy() / (cv.steps * lr)
        np.testing.assert_allclose(kept[PREFIX + n], option2, rtol=1e-3, atol=2e-4)
        np.testing.assert_array_equal(delta[PREFIX + n], kept[PREFIX + n] - c_i[PREFIX + n])


def test_zero_control_variates_change_nothing_and_others_change_the_trajectory():
    data = _site(8, 3)

    def train(hook_of):
        model = _model(5)
        hook = hook_of(model)
        train_local(
            model,
            DataLoader(data, batch_size=4, shuffle=True),
            epochs=1,
            lr=0.01,
            seed=9,
            grad_hook=hook,
        )
        return get_params(model)

    plain = train(lambda m: None)
    zero = train(lambda m: ControlVariates(m, _controls(m, 0.0, 0)))
    drift = train(lambda m: ControlVariates(m, _controls(m, 0.01, 0)))
    assert all(np.array_equal(plain[k], zero[k]) for k in plain)
    assert not np.array_equal(plain["head.weight"], drift["head.weight"])


@pytest.mark.parametrize(
    ("server", "site", "message"),
    [
        (lambda c: {k: v for k, v in list(c.items())[1:]}, None, "name"),
        (lambda c: {**c, PREFIX + "evil": np.zeros(1, np.float32)}, None, "name"),
        (lambda c: {k: np.full_like(v, np.nan) for k, v in c.items()}, None, "not finite"),
        (lambda c: {k: v.ravel() if v.ndim > 1 else v for k, v in c.items()}, None, "shape"),
        (lambda c: c, lambda c: {k: np.full_like(v, np.inf) for k, v in c.items()}, "not finite"),
    ],
    ids=["missing", "extra", "nan", "shape", "site-inf"],
)
def test_a_site_refuses_control_variates_it_cannot_use(server, site, message):
    model = _model()
    c = _controls(model, 0.01, 0)
    with pytest.raises(ValueError, match=message):
        ControlVariates(model, server(c), site(c) if site else None)


def test_under_dp_the_control_variate_is_made_of_noisy_gradients():
    """Post-processing: the recorded gradient is the one after Opacus' clip and noise. The same
    Poisson sample with another noise seed must give another c_i+ (a hook run before the noise
    would record the same clipped gradients), and a ten times smaller sigma a closer one."""
    from common.config import DPConfig
    from common.training.dp import DPSettings, SiteAccountant, dp_train_local

    cfg = _cfg()
    settings = DPSettings.from_config(DPConfig(noise_multiplier=1.0, max_grad_norm=1.0))
    data = _site(16, 4)

    def c_new(noise_seed: int, sigma: float) -> np.ndarray:
        torch.manual_seed(0)
        model = model_for(cfg, "dpsgd")
        cv = ControlVariates(model, _controls(model, 0.0, 0))
        dp_train_local(
            model,
            data,
            settings=settings,
            epochs=1,
            lr=0.01,
            batch_size=4,
            seed=1,
            sigma=sigma,
            accountant=SiteAccountant(settings.accountant, settings.adjacency),
            generator_seeds=(123, noise_seed),
            grad_hook=cv,
        )
        kept, _ = cv.finish()
        return np.concatenate([v.ravel() for v in kept.values()])

    a, b = c_new(1, 1.0), c_new(2, 1.0)
    quiet_a, quiet_b = c_new(1, 0.1), c_new(2, 0.1)
    assert np.abs(a - b).max() > 5 * np.abs(quiet_a - quiet_b).max() > 0


def _strategy(rnd_sites=("A", "B", "C")) -> tuple[Scaffold, dict[str, np.ndarray]]:
    params = {"w": np.ones((2, 2), np.float32), "bn.running_mean": np.zeros(2, np.float32)}
    s = Scaffold()
    s.setup(params, sorted(params), {"bn.running_mean"}, None)
    s.configure_fit(1, list(rnd_sites))
    return s, params


def test_the_server_moves_c_by_the_participating_share_of_the_mean_change():
    s, params = _strategy()
    orders = s.configure_fit(1, ["A", "B", "C", "D"])
    assert all(o.control_variates for o in orders.values())
    assert set(s.payload_down(1)) == {PREFIX + "w"}  # no control variate for a buffer
    assert set(s.upload_template(params)) == {"w", "bn.running_mean", PREFIX + "w"}
    summed = {
        "w": np.full((2, 2), 6.0),
        "bn.running_mean": np.full(2, 3.0),
        PREFIX + "w": np.full((2, 2), 1.5),
    }
    new = s.aggregate_fit(1, summed, 3.0, {"A": {}, "B": {}}, current=params)
    np.testing.assert_array_equal(new["w"], np.full((2, 2), 2.0, np.float32))  # FedAvg's mean
    np.testing.assert_array_equal(new["bn.running_mean"], np.ones(2, np.float32))
    # two of the four available sites contributed: c += (2/4) * 1.5 / 3
    np.testing.assert_allclose(s.payload_down(2)[PREFIX + "w"], 0.25)
    twin = Scaffold()
    twin.setup(params, sorted(params), {"bn.running_mean"}, None)
    twin.load_state_dict(s.state_dict())
    np.testing.assert_array_equal(
        twin.payload_down(2)[PREFIX + "w"], s.payload_down(2)[PREFIX + "w"]
    )
    with pytest.raises(ValueError, match="control variate"):
        s.aggregate_fit(
            2,
            {"w": summed["w"], "bn.running_mean": summed["bn.running_mean"]},
            3.0,
            {"A": {}},
            current=params,
        )
    with pytest.raises(ValueError, match="unexpected state"):
        twin.load_state_dict({"c/evil": np.zeros(1)})


def test_instructions_carry_the_correction_across_the_wire():
    orders = Scaffold().instructions(2, "A")
    assert orders.control_variates and orders.to_scalars()["control_variates"] is True
    assert FitInstructions.from_scalars(orders.to_scalars()) == orders
    assert "control_variates" not in FedAvg().instructions(2, "A").to_scalars()
    assert split_extras({"w": 1, PREFIX + "w": 2}) == ({"w": 1}, {PREFIX + "w": 2})


def test_the_simulator_runs_scaffold_through_its_hooks():
    """A hand-run loop (each site's c_i kept between rounds, the server's c sent down, the
    changes summed with the weights) agrees bit for bit; round 1 is FedAvg's (c = c_i = 0),
    round 2 is not."""
    cfg, sites = _cfg(), {"A": _site(6, 0), "B": _site(10, 1)}
    fed = simulate_federation(cfg, "scaffold", sites, seed=11)
    fl = cfg.fl.model_copy(update={"min_fit_sites": 2})  # as the simulator clamps it
    strategy = strategy_for(cfg.model_copy(update={"seed": 11, "fl": fl}), "scaffold")
    models = {s: model_for(cfg, "scaffold") for s in sites}
    keys = float_keys(models["A"])
    current = get_params(models["A"])
    strategy.setup(current, keys, buffer_keys(models["A"]) & set(keys), cfg)
    kept: dict[str, dict] = {s: {} for s in sites}
    for rnd in (1, 2):
        orders, down = strategy.configure_fit(rnd, sorted(sites)), strategy.payload_down(rnd)
        done = {}
        for s, ds in sites.items():
            set_params(models[s], current)
            cv = ControlVariates(models[s], down, kept[s])
            train_local(
                models[s],
                DataLoader(ds, batch_size=4, shuffle=True),
                epochs=1,
                lr=0.01,
                seed=site_round_seed(11, rnd, s),
                grad_hook=cv,
            )
            kept[s], delta = cv.finish()
            done[s] = {**get_params(models[s]), **delta}
        upload = strategy.upload_template(current)
        summed, total = aggregation_layer(
            cfg, done, {s: len(ds) for s, ds in sites.items()}, upload
        )
        current = strategy.aggregate_fit(rnd, summed, total, orders, current=current)
    assert all(np.array_equal(fed.global_params[k], current[k]) for k in keys)
    one = cfg.model_copy(update={"train": cfg.train.model_copy(update={"rounds": 1})})
    a, b = (simulate_federation(one, m, sites, seed=11) for m in ("scaffold", "fedavg"))
    assert all(np.array_equal(a.global_params[k], b.global_params[k]) for k in keys)
    fedavg = simulate_federation(cfg, "fedavg", sites, seed=11)
    assert not np.array_equal(fedavg.global_params["head.weight"], current["head.weight"])
