"""The paper's claims and the standard profile's goals, judged from a run's results.json."""

import numpy as np

from bench.audit_metrics import audit_metrics
from bench.claims import paper_claims, standard_goals


def _attack(auc, lo, hi, tpr, tests=None):
    ceiling = {"epsilon": 4.0, "tests": tests} if tests else None
    return {
        "auc": auc,
        "auc_ci95": [lo, hi],
        "tpr_at_1pct_fpr": tpr,
        "attack": "lira",
        "attacks": {"lira": {"dp_ceiling": ceiling}},
    }


def _test(violates, tpr=0.12, bound=0.4, p=0.9):
    return {
        "tpr_at_10pct_fpr": {
            "estimable": True,
            "violates": violates,
            "tpr": tpr,
            "bound": bound,
            "p_value": p,
        },
        "tpr_at_1pct_fpr": {"estimable": False, "reason": "needs >= 1,000"},
    }


def _entry(dice, mia, eps=None, sites=(0.5,) * 5):
    return {
        "dice": dice,
        "epsilon": eps,
        "mia": mia,
        "dice_per_site": list(sites),
        "dice_site_mean": sum(sites) / len(sites),
    }


def _results(
    fedavg_auc_lo=0.6,
    dp_dice=0.65,
    eps=6.0,
    wall=900.0,
    twin_lo=0.60,
    fedbn_sites=(0.8,) * 5,
    violates=False,
):
    return {
        "wall_s": wall,
        "methods": {
            "fedavg": _entry(0.75, _attack(0.70, fedavg_auc_lo, 0.78, 0.08), sites=(0.7,) * 5),
            "fedbn": _entry(0.74, _attack(0.68, 0.6, 0.75, 0.06), sites=fedbn_sites),
            "dpsgd": _entry(dp_dice, _attack(0.52, 0.46, 0.58, 0.02, _test(violates)), eps=eps),
            "groupnorm": _entry(0.72, _attack(0.66, twin_lo, 0.74, 0.05)),
        },
    }


def _line(lines, start):
    return next(x for x in lines if x.startswith(start))


def test_claims_name_the_numbers_and_the_verdict():
    lines = paper_claims(_results())
    assert lines[0].startswith("FedAvg leaks") and lines[0].endswith(": reproduced")
    assert "AUC 0.700 [0.60, 0.78]" in lines[0]
    assert _line(lines, "DP lowers leakage (dpsgd vs groupnorm").endswith(": reproduced")
    cost = _line(lines, "DP costs little Dice")
    assert "0.650 vs 0.720 (0.90x)" in cost and cost.endswith(": reproduced")
    fedbn = _line(lines, "FedBN helps")
    assert "on 5 of 5 sites, sign test p 0.031" in fedbn and fedbn.endswith(": reproduced")
    # a CI that covers 0.5 is no leak; a DP model far below its twin is not "little cost"
    lines = paper_claims(_results(fedavg_auc_lo=0.48, dp_dice=0.3))
    assert lines[0].endswith(": not distinguishable")
    assert _line(lines, "DP costs").endswith(": not reproduced")


def test_claims_are_reproduced_only_when_the_intervals_separate():
    # the case: dpsgd 0.444 [0.38, 0.51] vs groupnorm 0.515 [0.45, 0.57], both at chance
    res = _results()
    res["methods"]["dpsgd"]["mia"] = _attack(0.444, 0.38, 0.51, 0.0)
    res["methods"]["groupnorm"]["mia"] = _attack(0.515, 0.45, 0.57, 0.0)
    assert _line(paper_claims(res), "DP lowers").endswith(": not distinguishable")
    # touching intervals do not separate; a twin CI wholly below the DP one is the opposite
    assert _line(paper_claims(_results(twin_lo=0.58)), "DP lowers").endswith(
        ": not distinguishable"
    )
    res["methods"]["groupnorm"]["mia"] = _attack(0.30, 0.25, 0.35, 0.0)
    assert _line(paper_claims(res), "DP lowers").endswith(
        ": not reproduced (the opposite, significantly)"
    )
    # FedBN better on 4 of 5 sites is a sign-test p of 0.19: not distinguishable
    fedbn = _line(paper_claims(_results(fedbn_sites=(0.8,) * 4 + (0.6,))), "FedBN helps")
    assert "4 of 5 sites, sign test p 0.19" in fedbn and fedbn.endswith(": not distinguishable")


def test_claims_on_real_audit_metrics_use_their_cis():
    """The same wording from audit_metrics' own output: a leaking twin against a DP method at
    chance separates; two methods at chance do not."""
    rng = np.random.default_rng(0)
    y = np.r_[np.ones(200), np.zeros(200)]

    def mia(shift):
        m = audit_metrics(rng.normal(size=400) + shift * y, y, epsilon=4.0, n_boot=300)
        return {**m, "attack": "x", "attacks": {"x": m}}

    res = _results()
    res["methods"]["dpsgd"]["mia"], res["methods"]["groupnorm"]["mia"] = mia(0.0), mia(1.0)
    assert _line(paper_claims(res), "DP lowers").endswith(": reproduced")
    assert "TPR@1%FPR" in _line(paper_claims(res), "DP lowers") and "] vs AUC" in _line(
        paper_claims(res), "DP lowers"
    )
    res["methods"]["groupnorm"]["mia"] = mia(0.0)
    assert _line(paper_claims(res), "DP lowers").endswith(": not distinguishable")
    goal = next(x for x in standard_goals(res) if " dpsgd keeps" in x)
    assert "TPR@10%FPR" in goal and "bound" in goal  # the estimable test, at 10% FPR


def test_claims_without_the_methods_say_not_measured():
    lines = paper_claims({"methods": {"fedavg": _entry(0.5, None)}})
    assert lines[0].endswith(": not measured") and lines[-1].endswith(": not measured")


def test_goals_pass_and_fail_per_goal():
    ok = standard_goals(_results())
    assert [x[:4] for x in ok] == ["PASS", "PASS", "PASS", "PASS", "PASS", "PASS"]
    assert "TPR@10%FPR 0.120 <= bound 0.400 (p 0.9)" in ok[-1]
    bad = standard_goals(_results(fedavg_auc_lo=0.5, eps=9.0, wall=1500.0))
    verdicts = {x.split(" ")[1]: x[:4] for x in bad[2:]}
    assert bad[0].startswith("FAIL") and "25.0 min" in bad[0]
    assert verdicts == {"fedavg": "FAIL", "fedbn": "PASS", "groupnorm": "PASS", "dpsgd": "FAIL"}
    # the DP ceiling part is the binomial test: violated, or no estimable test, fails
    assert standard_goals(_results(violates=True))[-1].startswith("FAIL")
    res = _results()
    res["methods"]["dpsgd"]["mia"]["attacks"]["lira"]["dp_ceiling"]["tests"] = {
        "tpr_at_1pct_fpr": {"estimable": False, "reason": "needs >= 1,000"}
    }
    assert standard_goals(res)[-1].startswith("FAIL")
    assert "no estimable ceiling test" in standard_goals(res)[-1]
