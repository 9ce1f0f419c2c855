"""The site roster of a config (issue 27): names, certificate CNs and generator presets per site,
any number of sites; the default roster is A-E and generates what the fixed five sites did."""

from __future__ import annotations

import pytest

from common.config import (
    DEFAULT_SITE_NAMES,
    ConfigError,
    default_roster,
    load_profile,
    parse_config,
)
from common.data.build import plan, split_sizes
from common.data.sites import preset_labels, resolve_sites, roster_of
from common.data.store import check_roster
from common.wire.tls import certificate_cn, make_certs


def _cfg(sites, **sections):
    data = load_profile("smoke").model_dump(mode="json")
    data["sites"] = sites
    for k, v in sections.items():
        data[k] |= v
    return parse_config(data, "test")


def test_the_default_roster_is_the_five_presets_with_their_default_certificates():
    cfg = load_profile("smoke")
    assert cfg.site_names == list(DEFAULT_SITE_NAMES) == list("ABCDE")
    assert cfg.site_certs == {s: f"site-{s}" for s in "ABCDE"}
    assert preset_labels(cfg.sites) == [0, 1, 2, 3, 4]
    assert [s.name for s in resolve_sites(cfg.data, cfg.sites)] == list("ABCDE")
    assert [e.name for e in default_roster(3)] == ["A", "B", "C"]
    many = default_roster(12)
    assert [e.name for e in many][:2] == ["S001", "S002"] and len(many) == 12
    assert preset_labels(many) == [i % 5 for i in range(12)]  # the presets cycle A-E
    with pytest.raises(ValueError):
        default_roster(0)


def test_a_roster_site_follows_its_preset_and_keeps_its_name():
    cfg = _cfg([{"name": "north"}, {"name": "south", "preset": "E"}, {"name": "east"}])
    specs = resolve_sites(cfg.data, cfg.sites)
    presets = resolve_sites(cfg.data)  # A-E
    assert [s.name for s in specs] == ["north", "south", "east"]
    for got, want in zip(specs, [presets[0], presets[4], presets[2]], strict=True):
        assert got.to_dict() | {"name": want.name} == want.to_dict()
    assert preset_labels(cfg.sites) == [0, 4, 2]
    jobs = plan(cfg)
    assert {(j.spec.name, j.label) for j in jobs} == {("north", 0), ("south", 4), ("east", 2)}
    assert len(split_sizes(cfg)["test"]) == 3 and len(split_sizes(cfg)["attacker"]) == 3
    assert roster_of({"config": cfg.model_dump(mode="json")}) == cfg.sites
    assert [e.name for e in roster_of({"config": {}})] == list("ABCDE")  # before the roster


def test_the_overrides_and_stress_apply_to_roster_sites():
    cfg = _cfg(
        [{"name": "x"}, {"name": "y"}, {"name": "z"}],
        data={"overrides": {"y": {"dose": 0.5}}, "stress": "paper"},
    )
    x, y, _ = resolve_sites(cfg.data, cfg.sites)
    assert y.dose == 0.5 and max(x.size_mix) == pytest.approx(0.9)


@pytest.mark.parametrize(
    "sites, sections, fragment",
    [
        ([{"name": "A"}, {"name": "A"}], {}, "name A given twice"),
        ([{"name": "A", "cert_name": "h"}, {"name": "B", "cert_name": "h"}], {}, "cert_name h"),
        ([{"name": "../etc"}], {}, "site name '../etc'"),
        ([{"name": "-x"}], {}, "site name '-x'"),
        ([{"name": "A", "preset": "F"}], {}, "preset 'F'"),
        ([{"name": "A", "cert_name": "a b"}], {}, "cert_name 'a b'"),
        ([], {}, "sites"),
        ([{"name": "A"}, {"name": "B"}], {}, "min_fit_sites must be <= the roster's 2 sites"),
        (
            [{"name": "A"}, {"name": "B"}, {"name": "C"}],
            {"data": {"overrides": {"D": {"dose": 0.5}}}},
            "data.overrides: unknown site(s) ['D']",
        ),
        (
            [{"name": s} for s in "ABC"],
            {"secagg": {"threshold": 4}, "fl": {"min_fit_sites": 3}},
            "secagg.threshold must be <= the roster's 3 sites",
        ),
    ],
)
def test_a_bad_roster_is_one_error_naming_the_field(sites, sections, fragment):
    with pytest.raises(ConfigError) as err:
        _cfg(sites, **sections)
    assert fragment in str(err.value)


def test_a_dataset_of_another_roster_is_refused():
    cfg = _cfg([{"name": "north"}, {"name": "south"}, {"name": "east"}])
    check_roster({"site_names": ["north", "south", "east"]}, cfg.site_names, "--data d")
    with pytest.raises(ValueError, match=r"--data d: the dataset's sites are \['A'"):
        check_roster({"site_names": list("ABCDE")}, cfg.site_names, "--data d")
    with pytest.raises(ValueError, match="the roster's"):  # same sites, another order
        check_roster({"site_names": ["south", "north", "east"]}, cfg.site_names, "--data d")


def test_certificates_carry_the_rosters_common_names(tmp_path):
    cfg = _cfg([{"name": "north", "cert_name": "ct.north.example"}, {"name": "B"}, {"name": "C"}])
    dirs = make_certs(tmp_path / "c", cfg.site_names, common_names=cfg.site_certs)
    assert certificate_cn(dirs["site-north"]) == "ct.north.example"
    assert certificate_cn(dirs["site-B"]) == "site-B"


def test_a_site_outside_the_roster_or_with_the_wrong_certificate_is_refused(tmp_path, smoke_data):
    from client.app import SiteClient

    cfg = _cfg([{"name": "A", "cert_name": "ct.a.example"}, {"name": "B"}, {"name": "C"}])
    with pytest.raises(ValueError, match=r"site 'Q' is not in the profile's roster \(A, B, C\)"):
        SiteClient(cfg, "Q", "127.0.0.1:1", smoke_data, tmp_path / "st")
    dirs = make_certs(tmp_path / "c", ["A"])  # the default naming: CN site-A
    with pytest.raises(ValueError, match="common name is 'site-A', the roster gives site 'A'"):
        SiteClient(cfg, "A", "127.0.0.1:1", smoke_data, tmp_path / "st", tls_dir=dirs["site-A"])
