import pytest

from common.config import parse_config
from common.data.sites import REFERENCE, resolve_sites, split_counts


def _sites(**data):
    return resolve_sites(parse_config({"data": data}).data)


def _spread(sites):
    return sum(
        abs(s.dose - REFERENCE.dose) + abs(s.kernel_cutoff - REFERENCE.kernel_cutoff) for s in sites
    )


def test_iid_sites_share_one_distribution():
    sites = _sites(severity="iid")
    assert [s.name for s in sites] == list("ABCDE")
    for s in sites:
        d = s.to_dict()
        d.pop("name")
        ref = REFERENCE.to_dict()
        ref.pop("name")
        assert d == ref


def test_severity_increases_heterogeneity():
    spreads = [_spread(_sites(severity=s)) for s in ("iid", "mild", "moderate", "extreme")]
    assert spreads == sorted(spreads)
    assert spreads[0] == 0 and spreads[-1] > spreads[1] > 0


def test_paper_stress_setting():
    sites = _sites(stress="paper")
    assert sites[0].size_mix[3] == pytest.approx(0.9)  # A: 90% large
    assert sites[1].size_mix[1] == pytest.approx(0.9)  # B: 90% small
    assert sum(sites[0].size_mix) == pytest.approx(1.0)


def test_overrides_apply_last():
    sites = _sites(stress="paper", overrides={"A": {"dose": 0.1, "size_mix": [1, 0, 0, 0]}})
    assert sites[0].dose == 0.1 and sites[0].size_mix == (1, 0, 0, 0)


def test_split_counts():
    assert split_counts(10, [1, 1, 1, 1, 1]) == [2] * 5
    c = split_counts(101, [0.32, 0.26, 0.2, 0.14, 0.08])
    assert sum(c) == 101 and c == sorted(c, reverse=True)
    assert min(split_counts(6, [0.9, 0.01, 0.01, 0.01, 0.07])) >= 1
    with pytest.raises(ValueError, match="smaller than the number of sites"):
        split_counts(3, [1] * 5)
