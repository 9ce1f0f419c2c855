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


def test_seed_summary_gives_mean_and_sample_sd_per_method():
    from bench.report import seed_summary

    def res(dice, auc, eps=None):
        return {"methods": {"fedavg": {"dice": dice, "epsilon": eps,
                                       "mia": {"auc": auc, "tpr_at_1pct_fpr": 0.01}}}}  # fmt: skip

    s = seed_summary({1: res(0.5, 0.6), 2: res(0.7, 0.8), 3: res(0.6, None)})["fedavg"]
    assert s["dice"]["mean"] == pytest.approx(0.6) and s["dice"]["sd"] == pytest.approx(0.1)
    assert s["dice"]["per_seed"] == {"1": 0.5, "2": 0.7, "3": 0.6} and s["dice"]["n"] == 3
    assert s["mia_auc"]["n"] == 2 and s["mia_auc"]["mean"] == pytest.approx(0.7)
    assert s["epsilon"]["mean"] is None and s["epsilon"]["sd"] is None  # no DP: no epsilon
    one = seed_summary({1: res(0.5, 0.6)})["fedavg"]["dice"]
    assert one["mean"] == 0.5 and one["sd"] is None  # one seed has no spread
