import pytest

from bench.cli import main
from common.config import ConfigError, load_config, load_profile, parse_config, with_overrides


@pytest.mark.parametrize("name", ["smoke", "quick", "paper"])
def test_shipped_profiles_load(name):
    cfg = load_profile(name)
    assert cfg.profile == name
    assert cfg.attacker_seed != cfg.seed


def test_paper_profile_matches_the_paper():
    d = load_profile("paper").data
    assert d.image_size == 256
    assert 5 * d.test_per_site == 1000
    assert 5 * d.holdout_per_site >= 500  # room for 500 MIA non-members


def test_unknown_profile_lists_the_available_ones():
    with pytest.raises(ConfigError, match="unknown profile 'nope'.*quick"):
        load_profile("nope")


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"data": {"train_total": -3}}, "data.train_total"),
        ({"data": {"image_size": 100}}, "data.image_size"),
        ({"data": {"severity": "wild"}}, "data.severity"),
        ({"data": {"typo_field": 1}}, "data.typo_field"),
        ({"data": {"overrides": {"Z": {"dose": 1.0}}}}, "data.overrides"),
        (
            {"data": {"overrides": {"A": {"size_mix": [0.5, 0.5, 0.5, 0.5]}}}},
            "data.overrides.A.size_mix",
        ),
        ({"data": {"overrides": {"A": {"dose": 0}}}}, "data.overrides.A.dose"),
        ({"seed": 3, "data": {"attacker_seed": 3}}, "attacker_seed"),
    ],
)
def test_bad_config_names_the_field(data, field):
    with pytest.raises(ConfigError) as err:
        parse_config(data, "test.toml")
    assert field in str(err.value)
    assert "test.toml" in str(err.value)


def test_config_is_frozen():
    cfg = load_profile("smoke")
    with pytest.raises(Exception, match="frozen"):
        cfg.seed = 3  # type: ignore[misc]


def test_bad_toml_file(tmp_path):
    p = tmp_path / "x.toml"
    p.write_text("[data\nimage_size=")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(p)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.toml")


def test_with_overrides_revalidates():
    cfg = load_profile("smoke")
    assert with_overrides(cfg, **{"data.image_size": 32}).data.image_size == 32
    with pytest.raises(ConfigError, match="data.image_size"):
        with_overrides(cfg, **{"data.image_size": 33})


def test_cli_reports_bad_profile(tmp_path, capsys):
    rc = main(["data", "--profile", "nope", "--out", str(tmp_path / "d")])
    assert rc == 2
    assert "unknown profile" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


def test_cli_help_lists_subcommands(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "data" in out and "bench" in out


def test_a_methods_recipe_overrides_train_and_dp_for_that_method_only():
    cfg = parse_config(
        {
            "train": {"batch_size": 16, "lr": 1e-3},
            "dp": {"noise_multiplier": 1.2},
            "recipes": {"dpsgd-pt": {"train": {"batch_size": 48}, "dp": {"target_epsilon": 4.0}}},
        }
    )
    own = cfg.for_method("dpsgd-pt")
    assert own.train.batch_size == 48 and own.train.lr == 1e-3
    assert own.dp.target_epsilon == 4.0 and own.dp.noise_multiplier is None
    assert own.recipes == {} and own.for_method("dpsgd-pt") == own  # applying twice is harmless
    other = cfg.for_method("dpsgd")
    assert other is cfg and other.train.batch_size == 16 and other.dp.noise_multiplier == 1.2


@pytest.mark.parametrize(
    ("recipes", "needle"),
    [
        ({"dpsgd-xl": {"train": {"batch_size": 4}}}, "unknown method 'dpsgd-xl'"),
        ({"dpsgd": {"train": {"batch_size": 0}}}, "recipes.dpsgd"),
        ({"dpsgd": {"train": {"batchsize": 4}}}, "batchsize"),
        ({"dpsgd": {"dp": {"target_epsilon": 2.0, "noise_multiplier": 1.0}}}, "exactly one"),
    ],
)
def test_a_bad_recipe_is_an_error_naming_it(recipes, needle):
    with pytest.raises(ConfigError, match=needle):
        parse_config({"recipes": recipes})


def test_a_typo_inside_a_recipe_names_its_full_path():
    from common.config import ConfigError, load_profile, parse_config

    data = load_profile("smoke").model_dump(mode="json")
    data["recipes"] = {"dpsgd-pt": {"dp": {"target_epsilonn": 4.0}, "train": {"lr": "fast"}}}
    with pytest.raises(ConfigError) as err:
        parse_config(data, "typo.toml").for_method("dpsgd-pt")
    text = str(err.value)
    assert "recipes.dpsgd-pt.dp.target_epsilonn: Extra inputs are not permitted" in text
    assert "recipes.dpsgd-pt.train.lr: Input should be a valid number" in text
    assert "pydantic.dev" not in text and "<root>" not in text
