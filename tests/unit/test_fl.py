"""common/fl: typed fit instructions at the wire, the strategy registry, FedAdam's server step,
and the simulator driving a strategy's hooks."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from common.config import Config, DataConfig, ModelConfig, TrainConfig
from common.fl.fedadam import FedAdam
from common.fl.instructions import DDPParams, FitInstructions, TrainMode
from common.fl.simulate import aggregation_layer, simulate_federation, weighted_sum
from common.fl.strategies import FedAvg
from common.fl.strategy import STRATEGIES, Strategy, register, strategy_for
from common.model import buffer_keys, float_keys, get_params, model_for, set_params
from common.seeds import site_round_seed
from common.training.local import train_local

PLAIN = FitInstructions(
    round=3, seed=99, local_epochs=2, lr=1e-3, batch_size=8, proximal_mu=0.01, secagg=True
)
DDP = FitInstructions(
    round=1,
    seed=5,
    local_epochs=1,
    lr=3e-4,
    batch_size=16,
    mode=TrainMode.DDP,
    ddp=DDPParams(q=0.25, clip=1.0, scale=512.0, mu_share=3.5),
)


@pytest.mark.parametrize(
    "orders",
    [PLAIN, dataclasses.replace(PLAIN, mode=TrainMode.DP), DDP],
    ids=["plain", "dp", "ddp"],
)
def test_instructions_survive_the_wire_and_keep_its_keys(orders):
    scalars = orders.to_scalars()
    assert FitInstructions.from_scalars(scalars) == orders
    # the keys every site version reads
    assert {
        "round",
        "local_epochs",
        "lr",
        "batch_size",
        "proximal_mu",
        "seed",
        "dp",
        "secagg",
    } <= set(scalars)
    assert scalars["dp"] is (orders.mode is TrainMode.DP)
    assert scalars.get("ddp", False) is (orders.mode is TrainMode.DDP)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"lr": float("nan")}, "lr must be a finite number > 0"),
        ({"lr": "0.1"}, "'lr' must be float"),
        ({"local_epochs": 0}, "local_epochs must be >= 1"),
        ({"local_epochs": True}, "'local_epochs' must be int"),
        ({"batch_size": 2.0}, "'batch_size' must be int"),
        ({"proximal_mu": -1.0}, "proximal_mu must be a finite number >= 0"),
        ({"round": 0}, "round must be >= 1"),
        ({"seed": None}, "'seed' must be int"),
        ({"dp": 1}, "'dp' must be bool"),
        (
            {
                "dp": True,
                "ddp": True,
                "ddp_q": 0.5,
                "ddp_clip": 1.0,
                "ddp_scale": 2.0,
                "ddp_mu_share": 1.0,
            },
            "exclusive",
        ),
        ({"ddp": True}, "'ddp_q' is missing"),
        (
            {"ddp": True, "ddp_q": 1.5, "ddp_clip": 1.0, "ddp_scale": 2.0, "ddp_mu_share": 1.0},
            "ddp_q must be in",
        ),
        (
            {
                "ddp": True,
                "ddp_q": 0.5,
                "ddp_clip": float("inf"),
                "ddp_scale": 2.0,
                "ddp_mu_share": 1.0,
            },
            "ddp_clip must be a finite",
        ),
    ],
)
def test_a_site_refuses_hostile_instructions_with_the_field_named(change, message):
    with pytest.raises(ValueError, match=message):
        FitInstructions.from_scalars({**PLAIN.to_scalars(), **change})
    for key in ("round", "seed", "lr", "local_epochs", "batch_size"):
        scalars = PLAIN.to_scalars()
        del scalars[key]
        with pytest.raises(ValueError, match=f"'{key}' is missing"):
            FitInstructions.from_scalars(scalars)


def test_the_registry_knows_every_builtin_and_refuses_a_second_name():
    assert {"fedavg", "fedprox", "fedbn", "ddpsgd", "fedadam"} <= set(STRATEGIES)

    class Impostor(Strategy):
        name = "fedavg"

    with pytest.raises(ValueError, match="registered twice"):
        register(Impostor)
    assert STRATEGIES["fedavg"] is FedAvg


def _fake(seed: int, scale: float = 1.0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "w": (rng.standard_normal((3, 2)) * scale).astype(np.float32),
        "bn.running_var": (rng.random(2) + 0.5).astype(np.float32),
    }


def _sum(sites: dict[str, tuple[dict, int]]):
    return weighted_sum(
        {s: p for s, (p, _) in sites.items()},
        {s: float(n) for s, (_, n) in sites.items()},
        ["bn.running_var", "w"],
    )


def test_fedadam_is_reddis_server_adam_on_parameters_and_fedavg_on_buffers():
    x0 = _fake(0)
    s = FedAdam(server_lr=0.1, beta1=0.9, beta2=0.99, tau=1e-3)
    s.setup(x0, ["bn.running_var", "w"], {"bn.running_var"}, None)
    current, m, v = x0, 0.0, 0.0
    for rnd in (1, 2):
        sites = {"A": (_fake(10 * rnd + 1), 10), "B": (_fake(10 * rnd + 2), 30)}
        summed, total = _sum(sites)
        new = s.aggregate_fit(rnd, summed, total, current=current)
        mean = {k: summed[k] / total for k in summed}
        delta = mean["w"] - current["w"].astype(np.float64)
        m = 0.9 * m + 0.1 * delta
        v = 0.99 * v + 0.01 * delta**2
        expected = current["w"] + 0.1 * m / (np.sqrt(v) + 1e-3)
        np.testing.assert_allclose(new["w"], expected, rtol=1e-6)
        assert new["w"].dtype == np.float32
        np.testing.assert_allclose(new["bn.running_var"], mean["bn.running_var"], rtol=1e-6)
        current = new
    assert not np.allclose(current["w"], mean["w"], atol=1e-3)  # not FedAvg


def test_fedadam_without_momentum_and_with_a_huge_tau_is_fedavg():
    """x + (η/τ)·Δ/(1 + √v/τ) with η = τ ≫ √v: the FedAvg mean (to float32 rounding)."""
    x0 = _fake(0)
    s = FedAdam(server_lr=1e6, beta1=0.0, beta2=0.99, tau=1e6)
    s.setup(x0, ["bn.running_var", "w"], {"bn.running_var"}, None)
    summed, total = _sum({"A": (_fake(1), 3), "B": (_fake(2), 5)})
    got = s.aggregate_fit(1, summed, total, current=x0)
    want = FedAvg().aggregate_fit(1, summed, total, current=x0)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6)


def test_fedadam_resumes_from_its_state_dict_bit_for_bit():
    x0 = _fake(0)
    rounds = [_sum({"A": (_fake(r + 1), 4), "B": (_fake(r + 7), 6)}) for r in range(3)]

    def fresh():
        s = FedAdam()
        s.setup(x0, ["bn.running_var", "w"], {"bn.running_var"}, None)
        return s

    a, current = fresh(), x0
    for r, (summed, total) in enumerate(rounds, 1):
        current = a.aggregate_fit(r, summed, total, current=current)
    b, resumed = fresh(), x0
    for r, (summed, total) in enumerate(rounds[:2], 1):
        resumed = b.aggregate_fit(r, summed, total, current=resumed)
    c = fresh()  # a restarted server: the checkpoint's weights and the strategy's state
    c.load_state_dict(b.state_dict())
    resumed = c.aggregate_fit(3, *rounds[2], current=resumed)
    assert all(np.array_equal(current[k], resumed[k]) for k in current)
    with pytest.raises(ValueError, match="unexpected state entry"):
        c.load_state_dict({"x/w": np.zeros(1)})
    with pytest.raises(ValueError, match="keeps no server state"):
        FedAvg().load_state_dict({"m/w": np.zeros(1)})


@pytest.mark.parametrize("bad", [{"server_lr": 0.0}, {"beta1": 1.0}, {"tau": float("nan")}])
def test_fedadam_refuses_settings_out_of_range(bad):
    with pytest.raises(ValueError, match="fedadam"):
        FedAdam(**bad)


SIZE = 32


def _cfg() -> Config:
    return Config(
        seed=3,
        data=DataConfig(image_size=SIZE, window=(-160.0, 240.0)),
        model=ModelConfig(base=4, groups=4),
        train=TrainConfig(rounds=2, local_epochs=1, batch_size=4, lr=0.01),
    )


def _site(n: int, seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, SIZE, SIZE, generator=g)
    return TensorDataset(x, (torch.rand(n, 1, SIZE, SIZE, generator=g) > 0.8).float())


def test_the_simulator_runs_fedadam_through_its_hooks():
    """Each round: the sites train from the global model by their instructions, the float64 sum
    goes to FedAdam's aggregate_fit; its state lives across rounds (a hand-run loop agrees
    bit for bit)."""
    cfg, sites = _cfg(), {"A": _site(6, 0), "B": _site(10, 1)}
    fed = simulate_federation(cfg, "fedadam", sites, seed=11)
    strategy = strategy_for(cfg.model_copy(update={"seed": 11}), "fedadam")
    models = {s: model_for(cfg, "fedadam") for s in sites}
    keys = float_keys(models["A"])
    buffers = buffer_keys(models["A"]) & set(keys)
    current = get_params(models["A"])
    strategy.setup(current, keys, buffers, cfg)
    assert buffers and strategy.fingerprint()["strategy"] == "fedadam"
    for rnd in (1, 2):
        done = {}
        for s, ds in sites.items():
            set_params(models[s], current)
            loader = DataLoader(ds, batch_size=4, shuffle=True)
            train_local(models[s], loader, epochs=1, lr=0.01, seed=site_round_seed(11, rnd, s))
            done[s] = get_params(models[s])
        summed, total = aggregation_layer(
            cfg, done, {s: len(ds) for s, ds in sites.items()}, {k: current[k] for k in keys}
        )
        current = strategy.aggregate_fit(rnd, summed, total, current=current)
    assert all(np.array_equal(fed.global_params[k], current[k]) for k in keys)
    fedavg = simulate_federation(cfg, "fedavg", sites, seed=11)
    assert not np.array_equal(fedavg.global_params["head.weight"], current["head.weight"])


def test_the_simulator_samples_sites_as_the_server_does():
    """fl.fraction_fit < 1: the simulator trains the sites configure_fit picks (the server's
    choice for the same seed and round), not every site."""
    base = _cfg()
    cfg = base.model_copy(
        update={
            "fl": base.fl.model_copy(update={"fraction_fit": 0.5, "min_fit_sites": 1}),
            "train": base.train.model_copy(update={"rounds": 1}),
        }
    )
    sites = {s: _site(4, i) for i, s in enumerate("ABCD")}
    fed = simulate_federation(cfg, "fedavg", sites, seed=11)
    picked = strategy_for(cfg.model_copy(update={"seed": 11}), "fedavg").configure_fit(1, "ABCD")
    assert len(picked) == 2 and sorted(fed.metrics) == sorted(picked)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"lr": float("nan")}, "lr"),
        ({"round": 2}, "round 2 in a task of round 3"),
        ({"ddp": True}, "ddp_q"),
        (
            {
                "control_variates": True,
                "ddp": True,
                "ddp_q": 0.5,
                "ddp_clip": 1.0,
                "ddp_scale": 2.0,
                "ddp_mu_share": 1.0,
            },
            "not ddp",
        ),
        ({}, "extra tensors ['control/x']"),
    ],
)
def test_a_site_declines_a_round_whose_orders_are_hostile_and_trains_nothing(change, field):
    """client/app.py at the edge: the server's fit config is parsed before anything is loaded
    or trained; a bad one ends in a Decline naming the field, not an exception out of the site."""
    from client.app import SiteClient
    from common.wire.rpc import federation_pb2 as pb
    from common.wire.serde import ndarrays_to_proto, scalars_to_proto

    declined = []

    class Stub:
        def Decline(self, request, timeout, wait_for_ready):  # noqa: N802 (the gRPC name)
            declined.append(request)

    site = SiteClient.__new__(SiteClient)  # no server, no data: fit must stop before needing them
    site.site, site.run_id, site.stub, site.retry_timeout_s = "A", "run", Stub(), 0.0
    site.model = site.initial = None  # training or loading weights would fail loudly
    extras = {} if change else {"control/x": np.zeros(2, np.float32)}  # not asked for
    task = pb.FitTask(
        round=3,
        tensors=ndarrays_to_proto(extras),
        config=scalars_to_proto({**PLAIN.to_scalars(), **change}),
    )
    site.fit(task)
    assert len(declined) == 1 and declined[0].round == 3 and field in declined[0].reason


def test_a_site_beats_while_it_checks_and_trains_a_fit_task():
    """client/app.py: heartbeats run from a fit task's arrival, not only once training starts:
    the pre-fit check of the received model and DP-SGD's setup count (at the paper's size they
    took ~6 s of the 7 s the server gives a silent site, which skipped the dry run's round)."""
    from client.app import SiteClient
    from common.wire.rpc import federation_pb2 as pb

    beats, tasks = (
        [],
        iter(
            [
                pb.PullTaskResponse(fit=pb.FitTask(round=1)),
                pb.PullTaskResponse(finished=pb.FinishedTask(rounds_completed=1)),
            ]
        ),
    )

    class Stub:
        def PullTask(self, request, timeout, wait_for_ready):  # noqa: N802 (the gRPC names)
            return next(tasks)

        def Heartbeat(self, request, timeout):  # noqa: N802
            beats.append(request.round)

    site = SiteClient.__new__(SiteClient)
    site.site, site.run_id, site.stub, site.retry_timeout_s = "A", "run", Stub(), 0.0
    site.heartbeat_s, site.runs_left = 0.05, 0
    site.release = lambda: None
    site.fit = lambda task: time.sleep(0.5)  # stands for the check, the setup and the training
    assert site.run_one() is False
    assert len(beats) >= 3 and set(beats) == {1}
