"""What a site may report (server/validation.py) and what reaches a file path (common/io.py)."""

import math

import numpy as np
import pytest

from common.io import safe_name, save_npz, write_bytes_atomic
from common.metrics import SUM_KEYS
from common.secagg import dequantize, quantization_scale, quantize
from server.records import TaskKind
from server.validation import MAX_ECHO, MAX_METRICS, check_metrics, check_num_examples, clip_text

GOOD_FIT = {"loss": 0.3, "prox": 0.0, "steps": 8.0, "num_examples": 40.0, "train_time_s": 1.5}
GOOD_EVAL = dict.fromkeys(SUM_KEYS, 1.0)


@pytest.mark.parametrize(
    ("kind", "metrics", "match"),
    [  # the five crashes of issue 15, then the other ways a metric can be wrong
        (TaskKind.FIT, {**GOOD_FIT, "train_time_s": "x"}, "must be a number"),
        (TaskKind.ADVERTISE_KEYS, {**GOOD_FIT, "train_time_s": "x"}, "must be a number"),
        (TaskKind.MASKED_INPUT, {"clipped": "x"}, "must be a number"),
        (TaskKind.EVALUATE, {}, "lack"),
        (TaskKind.EVALUATE, {**GOOD_EVAL, "pixels": "x"}, "must be a number"),
        (TaskKind.MASKED_INPUT, {"mask_s": 0.1}, "lack clipped"),
        (TaskKind.FIT, {**GOOD_FIT, "loss": math.nan}, "outside"),
        (TaskKind.FIT, {**GOOD_FIT, "loss": math.inf}, "outside"),
        (TaskKind.FIT, {**GOOD_FIT, "steps": -1.0}, "outside"),
        (TaskKind.FIT, {**GOOD_FIT, "sample_rate": 2.0}, "outside"),
        (TaskKind.FIT, {**GOOD_FIT, "loss": True}, "must be a number"),
        (TaskKind.FIT, {**GOOD_FIT, "weights": 1.0}, "not one a site reports"),
        (TaskKind.FIT, {**GOOD_FIT, "accountant": "r" * 17}, "text of at most 16"),
        (TaskKind.FIT, {**GOOD_FIT, "accountant_history": "x" * 30_000}, "text of at most"),
        (TaskKind.FIT, {f"k{i}": 1.0 for i in range(MAX_METRICS + 1)}, "limit"),
    ],
)
def test_bad_metrics_are_refused(kind, metrics, match):
    with pytest.raises(ValueError, match=match):
        check_metrics(kind, metrics)


def test_good_metrics_pass_unchanged():
    dp = {
        **GOOD_FIT,
        "sample_rate": 0.2,
        "noise_multiplier": 1.2,
        "max_grad_norm": 1.0,
        "delta": 1e-5,
        "epsilon": 3.1,
        "accountant": "rdp",
        "steps_total": 40.0,
        "accountant_history": "[[1.2,0.2,40]]",
        "decode_s": 0.1,
        "bytes_up": 1e6,
    }
    assert check_metrics(TaskKind.FIT, dp) is dp
    assert check_metrics(TaskKind.EVALUATE, GOOD_EVAL) is GOOD_EVAL
    assert check_metrics(TaskKind.MASKED_INPUT, {"clipped": 0, "mask_s": 0.2})


def test_num_examples_is_positive_and_capped():
    assert check_num_examples(40, 100) == 40
    for bad in (0, -3):
        with pytest.raises(ValueError, match="positive"):
            check_num_examples(bad, 100)
    with pytest.raises(ValueError, match="exceeds this federation's cap of 100"):
        check_num_examples(10**9, 100)


def test_caller_strings_are_clipped_in_messages():
    long = "A" * (1 << 20)
    shown = clip_text(long)
    assert len(shown) < MAX_ECHO + 40 and shown.endswith(f"({1 << 20} characters)")
    assert clip_text("short") == "short"


def test_quantisation_works_for_any_legal_total():
    # 2**22 claimed examples used to abort the round (m defaulted to the weight)
    total = float(5 * 2**22)
    s = quantization_scale(64.0, total, max_sites=5)
    rng = np.random.default_rng(0)
    parts = [rng.normal(0, 1, 100) * 2**22 for _ in range(5)]
    q = [quantize(p, 2**22, 64.0, s)[0] for p in parts]
    acc = np.zeros(100, np.uint32)
    for x in q:
        acc += x
    np.testing.assert_allclose(dequantize(acc, s), np.sum(parts, axis=0), rtol=0, atol=5 * 1.0 / s)


@pytest.mark.parametrize("bad", ["../x", "..", "a/b", "", "x" * 65, ".hidden", "a b", None, 3])
def test_names_from_the_network_never_become_paths(bad):
    with pytest.raises(ValueError, match="not a safe name"):
        safe_name(bad, "run id")


def test_safe_names_pass():
    assert safe_name("fedavg-0a1b2c3d4e5f", "run id") == "fedavg-0a1b2c3d4e5f"
    assert safe_name("dpsgd_pt", "method") == "dpsgd_pt"


def test_weights_are_owner_only_and_a_stale_temporary_keeps_no_old_mode(tmp_path):
    import os

    path = tmp_path / "w.npz"
    save_npz(path, {"a": np.zeros(2, np.float32)})
    assert path.stat().st_mode & 0o777 == 0o600
    stale = tmp_path / f".k.pem.tmp-{os.getpid()}"
    stale.write_bytes(b"old")
    stale.chmod(0o666)
    write_bytes_atomic(tmp_path / "k.pem", b"secret", mode=0o600)
    assert (tmp_path / "k.pem").stat().st_mode & 0o777 == 0o600
    assert not stale.exists()


def test_a_release_is_group_readable_and_nothing_else_is(tmp_path):
    """The release service may run as another user of the deployment's group: released weights
    are 0640 (never world-readable); the release description is public."""
    from common.release import export_release

    export_release(tmp_path / "rel", {"a": np.zeros(2, np.float32)}, {"method": "fedavg"})
    assert (tmp_path / "rel" / "model.npz").stat().st_mode & 0o777 == 0o640
    assert (tmp_path / "rel" / "release.json").stat().st_mode & 0o777 == 0o644


def test_what_every_emitter_reports_is_in_the_metric_table(tmp_path):
    """common/metrics.py's table is the allow-list: each thing a site sends for a task (plain
    training, a DP round, distributed DP's noisy sum, the client's timings and device, the
    evaluation sums) has its row and passes the server's check."""
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from client.dp_site import DPState
    from common.config import load_profile, with_overrides
    from common.device import device_record
    from common.evaluation import evaluate_sums
    from common.fl.instructions import FitInstructions, TrainMode
    from common.metrics import EVAL_METRICS, FIT_METRICS
    from common.model import build_model
    from common.training.ddp import DDPSite
    from common.training.dp.randomness import SITE_SECRET, AttemptLog, NoiseSource
    from common.training.local import train_local

    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(8, 1, 16, 16, generator=g), (torch.rand(8, 1, 16, 16, generator=g) > 0.8)
    data = TensorDataset(x, y.float())
    client_side = {"decode_s": 0.1, "encode_s": 0.1, "bytes_up": 10.0, **device_record("cpu")}
    plain = train_local(
        build_model(base=4, seed=0), DataLoader(data, batch_size=4), epochs=1, lr=1e-3, seed=0
    )
    cfg = with_overrides(load_profile("smoke"), **{"train.batch_size": 4})
    dp = DPState(
        cfg,
        len(data),
        tmp_path,
        "run",
        NoiseSource(b"s" * 32, SITE_SECRET, "run"),
        AttemptLog(tmp_path, "run"),
    ).train(
        build_model(base=4, norm="group", groups=2, seed=0),
        list(zip(x, y.float(), strict=True)),
        FitInstructions(round=1, seed=1, local_epochs=1, lr=1e-3, batch_size=4, mode=TrainMode.DP),
        None,
    )
    model = build_model(base=4, norm="group", groups=2, seed=0)
    site = DDPSite(model)
    _vec, ddp = site.noisy_sum(
        data,
        sorted(k for k, _ in model.named_parameters()),
        q=0.5,
        clip=1.0,
        scale=100.0,
        mu_share=1.0,
        seed=0,
    )
    site.close()
    ddp = {**ddp, "randomness": SITE_SECRET, "attempt": 1}  # what client/app.py adds
    for sent in (plain, dp, ddp):
        report = {**sent, **client_side}
        assert set(report) <= set(FIT_METRICS), set(report) - set(FIT_METRICS)
        assert check_metrics(TaskKind.FIT, report) == report
    sums = evaluate_sums(build_model(base=4, seed=0), x, y.squeeze(1).numpy(), 4)
    assert set(sums) == set(EVAL_METRICS) and check_metrics(TaskKind.EVALUATE, sums) == sums
