"""The "what each defence buys" table (bench/threats.py) from a run's per-seed results."""

from bench.threats import ROWS, isolation_counts, threats_table


def _results(seed, bb, wb):
    def mia(auc, wauc):
        return {
            "auc": auc,
            "auc_ci95": [auc - 0.05, auc + 0.05],
            "attack": "rmia",
            "whitebox": {
                "auc": wauc,
                "auc_ci95": [wauc - 0.05, wauc + 0.05],
                "attack": "wb_shadow",
            },
        }

    return {
        "seed": seed,
        "methods": {
            "groupnorm-pt": {"mia": mia(bb, wb), "epsilon": None},
            "dpsgd-pt": {"mia": mia(0.5, 0.5), "epsilon": 4.0},
        },
    }


def test_rows_read_their_release_and_the_lying_server_harness():
    table = threats_table({1: _results(1, 0.70, 0.80), 2: _results(2, 0.74, 0.84)}, 5, 3)
    rows = {r["configuration"]: r for r in table["rows"]}
    assert [r.name for r in ROWS] == list(rows)
    none, sa = rows["no defence"], rows["secure aggregation"]
    assert [a for a, _ci in none["black_box_aucs"]] == [0.70, 0.74]
    assert none["black_box"].startswith("0.720 ± 0.028") and "(rmia)" in none["black_box"]
    assert none["white_box"].startswith("0.820 ± 0.028") and "(wb_shadow)" in none["white_box"]
    assert sa["black_box"] == none["black_box"]  # secure aggregation releases the same model
    assert rows["per-site DP-SGD"]["epsilon"] == "4.00"
    ddp = rows["distributed DP (needs secure aggregation)"]
    assert ddp["black_box"] == "not run (-)" and ddp["epsilon"] == "not run"
    # the real harness: key substitution wins without TLS, nothing wins under mutual TLS
    assert table["isolation"] == isolation_counts(5, 3) == {"honest": (1, 4), "pki": (0, 4)}
    assert sa["isolation_no_tls"] == "1/4 attacks" and sa["isolation_mtls"] == "0/4 attacks"
    assert none["isolation_no_tls"].startswith("always")
    assert "| no defence | groupnorm-pt |" in table["markdown"]
