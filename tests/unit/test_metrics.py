from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from common.metrics import SegMetrics, seg_loss, segmentation_metrics


def _masks() -> np.ndarray:
    m = np.zeros((3, 4, 4), np.uint8)
    m[0, :2, :2] = 1  # 4-pixel tumor
    m[1, :, :] = 1  # 16-pixel tumor
    return m  # image 2 is tumor-free


def test_perfect_prediction() -> None:
    m = _masks()
    out = segmentation_metrics(m.astype(np.float32), m)
    assert out["dice"] == 1.0 and out["dice_global"] == 1.0
    assert out["fp_rate_empty"] == 0.0
    assert out["ce_loss"] == pytest.approx(0.0, abs=1e-6)
    assert (out["n_tumor_images"], out["n_empty_images"]) == (2.0, 1.0)


def test_disjoint_prediction_is_zero() -> None:
    m = _masks()[:1]
    p = np.zeros_like(m, dtype=np.float32)
    p[0, 2:, 2:] = 0.9
    out = segmentation_metrics(p, m)
    assert out["dice"] == 0.0 and out["dice_global"] == 0.0


def test_empty_mask_rule_and_fp_rate() -> None:
    m = np.zeros((4, 4, 4), np.uint8)
    m[0, 0, 0] = 1
    p = np.zeros((4, 4, 4), np.float32)
    p[0, 0, 0] = 1.0
    p[1, 3, 3] = 0.7  # one false pixel on a tumor-free image
    p[2, 3, 3] = 0.5  # exactly at the threshold: not predicted (prob > 0.5)
    out = segmentation_metrics(p, m)
    assert out["dice"] == 1.0  # tumor-free images do not enter the primary Dice
    assert out["fp_rate_empty"] == pytest.approx(1 / 3)


def test_per_image_vs_global_dice_differ() -> None:
    m = _masks()
    p = m.astype(np.float32).copy()
    p[0] = 0.0  # miss the small tumor entirely, get the large one right
    out = segmentation_metrics(p, m)
    assert out["dice"] == pytest.approx(0.5)  # mean of (0, 1)
    assert out["dice_global"] == pytest.approx(2 * 16 / (16 + 20))


def test_no_tumor_and_no_empty_images() -> None:
    zeros = np.zeros((2, 4, 4), np.uint8)
    out = segmentation_metrics(zeros.astype(np.float32), zeros)
    assert math.isnan(out["dice"]) and out["dice_global"] == 1.0
    ones = np.ones((2, 1, 4, 4), np.uint8)  # (N, 1, H, W) accepted
    assert math.isnan(segmentation_metrics(ones.astype(np.float32), ones)["fp_rate_empty"])


def test_bce_by_hand() -> None:
    m = np.array([[[1, 0]]], np.uint8)
    p = np.array([[[0.8, 0.4]]], np.float32)
    expected = -(np.log(0.8) + np.log(0.6)) / 2
    assert segmentation_metrics(p, m)["ce_loss"] == pytest.approx(expected, rel=1e-6)


def test_accumulator_equals_one_shot() -> None:
    rng = np.random.default_rng(0)
    m = (rng.random((10, 8, 8)) > 0.8).astype(np.uint8)
    m[[2, 5]] = 0
    p = rng.random((10, 8, 8)).astype(np.float32)
    acc = SegMetrics()
    for i in range(0, 10, 3):
        acc.update(p[i : i + 3], m[i : i + 3])
    one = segmentation_metrics(p, m)
    for k, v in acc.compute().items():
        assert v == pytest.approx(one[k])


def test_input_validation() -> None:
    m = _masks()
    with pytest.raises(ValueError, match="shape"):
        segmentation_metrics(m[:2].astype(np.float32), m)
    with pytest.raises(ValueError, match="probabilities"):
        segmentation_metrics(m * 2.0, m)
    with pytest.raises(ValueError, match="binary"):
        segmentation_metrics(m.astype(np.float32), m * 2)


def test_seg_loss_by_hand() -> None:
    logits = torch.tensor([[[[0.0, 2.0]]]])
    masks = torch.tensor([[[[1.0, 0.0]]]])
    p = torch.sigmoid(logits).flatten()
    bce = -(torch.log(p[0]) + torch.log(1 - p[1])) / 2
    dice = (2 * p[0] + 1) / (p.sum() + 1 + 1)
    assert float(seg_loss(logits, masks)) == pytest.approx(float(bce + 1 - dice), rel=1e-6)


def test_seg_loss_is_per_sample() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 1, 8, 8, generator=g)
    masks = (torch.rand(4, 1, 8, 8, generator=g) > 0.7).float()
    per = seg_loss(logits, masks, reduction="none")
    assert per.shape == (4,)
    assert float(seg_loss(logits, masks)) == pytest.approx(float(per.mean()))
    # changing another sample leaves sample 0's loss untouched
    logits2, masks2 = logits.clone(), masks.clone()
    logits2[1:] = torch.randn(3, 1, 8, 8, generator=g) * 5
    masks2[1:] = 1.0 - masks2[1:]
    assert torch.equal(seg_loss(logits2, masks2, reduction="none")[0], per[0])
    # and each per-sample loss equals that sample's loss computed alone
    for i in range(4):
        alone = seg_loss(logits[i : i + 1], masks[i : i + 1], reduction="none")[0]
        assert float(alone) == pytest.approx(float(per[i]), rel=1e-6)
    # the gradient w.r.t. sample 0 does not depend on sample 1
    x = logits.clone().requires_grad_(True)
    seg_loss(x, masks, reduction="none")[0].backward()
    assert torch.count_nonzero(x.grad[1:]) == 0


def test_seg_loss_validation() -> None:
    with pytest.raises(ValueError, match="shape"):
        seg_loss(torch.zeros(2, 1, 4, 4), torch.zeros(2, 1, 4, 5))
    with pytest.raises(ValueError, match="reduction"):
        seg_loss(torch.zeros(2, 1, 4, 4), torch.zeros(2, 1, 4, 4), reduction="sum")  # type: ignore[arg-type]


def test_pooled_sums_equal_metrics_of_the_union():
    from common.metrics import SegMetrics, metrics_from_sums, pool_sums

    rng = np.random.default_rng(0)
    masks = (rng.random((10, 8, 8)) > 0.7).astype(np.uint8)
    masks[[2, 5]] = 0  # some tumor-free images
    probs = rng.random((10, 8, 8))
    whole = SegMetrics()
    whole.update(probs, masks)
    a, b = SegMetrics(), SegMetrics()
    a.update(probs[:4], masks[:4])
    b.update(probs[4:], masks[4:])
    pooled = metrics_from_sums(pool_sums([a.sums(), b.sums()]))
    for k, v in whole.compute().items():
        assert pooled[k] == pytest.approx(v), k
