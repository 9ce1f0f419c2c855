"""The table of methods (common/methods.py): consistent with the strategies, the model and the
fit config the server emits."""

import pytest

from common.config import load_profile
from common.fl.instructions import TrainMode
from common.fl.strategy import STRATEGIES, strategy_for
from common.methods import DEFAULT_METHODS, METHOD_NAMES, METHODS, get_method
from common.model import build_model, float_keys, get_params, model_for, norm_keys


def test_every_method_is_in_the_table_with_a_known_strategy():
    assert (
        METHOD_NAMES[:5] == DEFAULT_METHODS == ("fedavg", "fedprox", "fedbn", "dpsgd", "groupnorm")
    )
    assert {"dpsgd-pt", "groupnorm-pt", "pooled", "local"} <= set(METHOD_NAMES)
    assert {m.kind for m in METHODS.values()} == {"federated", "pooled", "local"}
    assert load_profile("quick").fl.methods == DEFAULT_METHODS  # new methods are opt-in
    assert all(m.strategy in STRATEGIES for m in METHODS.values())
    with pytest.raises(ValueError, match="unknown method 'fedsgd'; known: fedavg"):
        get_method("fedsgd")


FEDERATED = [n for n in METHOD_NAMES if METHODS[n].kind == "federated"]


@pytest.mark.parametrize("name", FEDERATED)
def test_local_norm_layers_mean_site_evaluation_and_per_site_release(name):
    """A strategy that keeps norm layers at the sites cannot be evaluated or released centrally."""
    m = get_method(name)
    model = build_model(base=4, norm=m.norm_type("batch"), groups=2, seed=0)
    floats, norms = float_keys(model), norm_keys(model)
    strategy = STRATEGIES[m.strategy]()
    keeps_local = set(strategy.shared_keys(floats, norms)) != set(floats)
    assert keeps_local == (m.evaluated_at == "sites") == (m.release == "per_site")


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_the_strategy_emits_the_whole_fit_config(name):
    cfg = load_profile("smoke")
    m = get_method(name)
    strategy = strategy_for(cfg, name)
    model = model_for(cfg, name)
    strategy.setup(get_params(model), float_keys(model), set(), cfg)  # ddp: the run's plan
    orders = strategy.configure_fit(1, list("ABCDE"))["A"]
    # per-site DP-SGD for dp methods; distributed DP adds a noise share instead
    mode = TrainMode.DDP if m.distributed_dp else TrainMode.DP if m.dp else TrainMode.PLAIN
    assert orders.mode is mode and orders.secagg is cfg.secagg.enabled
    assert (orders.ddp is not None) is m.distributed_dp is (strategy.ring_plan() is not None)
    assert orders.proximal_mu == (cfg.fl.proximal_mu if m.proximal else 0.0)
    conf = orders.to_scalars()  # the wire's keys, as sites of every version read them
    assert (
        conf["dp"] is (m.dp and not m.distributed_dp) and conf.get("ddp", False) is m.distributed_dp
    )
    # every site of a round gets the same orders but its seed: secure aggregation binds the
    # sites' masks to them (common.secagg.round_digest), the server sends one digest's round
    everyone = strategy.configure_fit(1, list("ABCDE"))
    common = {
        s: {k: v for k, v in o.to_scalars().items() if k != "seed"} for s, o in everyone.items()
    }
    assert all(c == common["A"] for c in common.values()), common
    assert len({o.seed for o in everyone.values()}) == 5
    norm_types = {type(mod).__name__ for mod in model_for(cfg, name).modules()}
    assert ("GroupNorm" in norm_types) == (m.norm == "group" or cfg.model.norm == "group")
    assert ("BatchNorm2d" in norm_types) == (m.norm_type(cfg.model.norm) == "batch")


@pytest.mark.parametrize("name", [n for n in METHOD_NAMES if METHODS[n].dp])
def test_a_dp_method_and_its_twin_differ_only_in_dp(name):
    m = get_method(name)
    twin = get_method(m.twin)
    assert not twin.dp and twin.twin is None
    fields = ["norm", "proximal", "evaluated_at", "release", "pretrained"]
    if not m.distributed_dp:  # distributed DP's rounds are single steps: its own strategy
        fields.append("strategy")
    for field in fields:
        assert getattr(m, field) == getattr(twin, field), field


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_keeps_norm_local_is_the_strategys_rule(name):
    m = get_method(name)
    model = build_model(base=4, norm=m.norm_type("batch"), groups=2, seed=0)
    floats, norms = float_keys(model), norm_keys(model)
    shared = set(STRATEGIES[m.strategy]().shared_keys(floats, norms))
    assert m.keeps_norm_local == (shared == set(floats) - norms) == (shared != set(floats))


def test_a_server_refuses_a_reference_row(tmp_path):
    from server.app import Server

    with pytest.raises(ValueError, match="pooled is a reference row"):
        Server(load_profile("smoke"), "pooled", tmp_path, tmp_path / "run", resume=False)
