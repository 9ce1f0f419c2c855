"""The paper's claims and the standard profile's goals, judged from a run's results.json."""

from bench.claims import paper_claims, standard_goals


def _attack(auc, lo, hi, tpr, cap=None):
    return {"auc": auc, "auc_ci95": [lo, hi], "tpr_at_1pct_fpr": tpr, "attack": "lira",
            "attacks": {"lira": {"dp_ceiling": {"tpr_at_1pct_fpr": cap} if cap else None}}}  # fmt: skip


def _entry(dice, mia, eps=None, sites=(0.5,) * 5):
    return {"dice": dice, "epsilon": eps, "mia": mia, "dice_per_site": list(sites),
            "dice_site_mean": sum(sites) / len(sites)}  # fmt: skip


def _results(fedavg_auc_lo=0.6, dp_dice=0.65, eps=6.0, wall=900.0):
    return {
        "wall_s": wall,
        "methods": {
            "fedavg": _entry(0.75, _attack(0.70, fedavg_auc_lo, 0.78, 0.08), sites=(0.7,) * 5),
            "fedbn": _entry(
                0.74, _attack(0.68, 0.6, 0.75, 0.06), sites=(0.8, 0.8, 0.8, 0.6, 0.6)
            ),  # fmt: skip
            "dpsgd": _entry(dp_dice, _attack(0.52, 0.46, 0.58, 0.02, cap=0.05), eps=eps),
            "groupnorm": _entry(0.72, _attack(0.66, 0.58, 0.74, 0.05)),
        },
    }


def test_claims_name_the_numbers_and_the_verdict():
    lines = paper_claims(_results())
    assert lines[0].startswith("FedAvg leaks") and lines[0].endswith(": reproduced")
    assert "AUC 0.700 [0.60, 0.78]" in lines[0]
    assert any(x.startswith("DP lowers leakage (dpsgd vs groupnorm)") and x.endswith(": reproduced")
               for x in lines)  # fmt: skip
    cost = next(x for x in lines if x.startswith("DP costs little Dice"))
    assert "0.650 vs 0.720 (0.90x)" in cost and cost.endswith(": reproduced")
    fedbn = next(x for x in lines if x.startswith("FedBN helps"))
    assert "on 3 of 5 sites" in fedbn and fedbn.endswith(": reproduced")
    # a CI that covers 0.5 is not a leak; a DP model far below its twin is not "little cost"
    lines = paper_claims(_results(fedavg_auc_lo=0.48, dp_dice=0.3))
    assert lines[0].endswith(": not reproduced")
    assert next(x for x in lines if x.startswith("DP costs")).endswith(": not reproduced")


def test_claims_without_the_methods_say_not_measured():
    lines = paper_claims({"methods": {"fedavg": _entry(0.5, None)}})
    assert lines[0].endswith(": not measured") and lines[-1].endswith(": not measured")


def test_goals_pass_and_fail_per_goal():
    ok = standard_goals(_results())
    assert [x[:4] for x in ok] == ["PASS", "PASS", "PASS", "PASS", "PASS", "PASS"]
    bad = standard_goals(_results(fedavg_auc_lo=0.5, eps=9.0, wall=1500.0))
    verdicts = {x.split(" ")[1]: x[:4] for x in bad[2:]}
    assert bad[0].startswith("FAIL") and "25.0 min" in bad[0]
    assert verdicts == {"fedavg": "FAIL", "fedbn": "PASS", "groupnorm": "PASS", "dpsgd": "FAIL"}
