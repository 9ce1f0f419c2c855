"""The table of methods (common/methods.py): consistent with the strategies, the model and the
fit config the server emits."""

import pytest

from common.config import load_profile
from common.methods import METHOD_NAMES, METHODS, get_method
from common.model import build_model, float_keys, model_for, norm_keys
from server.app import make_strategy
from server.strategies import STRATEGIES


def test_every_method_is_in_the_table_with_a_known_strategy():
    assert METHOD_NAMES == ("fedavg", "fedprox", "fedbn", "dpsgd", "groupnorm")
    assert all(m.strategy in STRATEGIES for m in METHODS.values())
    with pytest.raises(ValueError, match="unknown method 'fedsgd'; known: fedavg"):
        get_method("fedsgd")


@pytest.mark.parametrize("name", METHOD_NAMES)
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
    conf = make_strategy(cfg, name).configure_fit(1, list("ABCDE"))["A"]
    assert conf["dp"] is m.dp and conf["secagg"] is cfg.secagg.enabled
    assert conf["proximal_mu"] == (cfg.fl.proximal_mu if m.proximal else 0.0)
    norm_types = {type(mod).__name__ for mod in model_for(cfg, name).modules()}
    assert ("GroupNorm" in norm_types) == (m.norm == "group" or cfg.model.norm == "group")
    assert ("BatchNorm2d" in norm_types) == (m.norm_type(cfg.model.norm) == "batch")
