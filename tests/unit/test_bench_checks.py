import pytest

from bench.run import check_dp, parse_sweep
from common.config import load_profile, with_overrides

SUMMARY = {
    "summary": [
        {"site": s, "n_train": n} for s, n in zip("ABCDE", (168, 144, 120, 96, 72), strict=True)
    ]
}


def test_dp_settings_are_checked_against_every_site_before_a_run():
    check_dp(load_profile("quick"), SUMMARY)
    with pytest.raises(ValueError, match="site A: delta"):
        check_dp(with_overrides(load_profile("quick"), **{"dp.delta": 0.05}), SUMMARY)
    with pytest.raises(ValueError, match="site E: batch_size 80"):
        check_dp(with_overrides(load_profile("quick"), **{"train.batch_size": 80}), SUMMARY)


def test_parse_sweep():
    assert parse_sweep("noise_multiplier=0.5,1.2") == ("noise_multiplier", [0.5, 1.2])
    for bad in ("sigma=1", "noise_multiplier", "noise_multiplier=a,b", "noise_multiplier=0,1"):
        with pytest.raises(ValueError, match="--sweep"):
            parse_sweep(bad)
