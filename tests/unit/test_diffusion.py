"""The optional diffusion generator on a tiny configuration (32x32, two UNet levels, few steps)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")

from bench.cli import main  # noqa: E402
from common.config import ConfigError, load_config, load_profile, parse_config  # noqa: E402
from common.data.diffusion.generate import (
    build_dataset,  # noqa: E402
    regenerate_slice,  # noqa: E402
)
from common.data.diffusion.model import (  # noqa: E402
    build_unet,
    hu_to_unit,
    load_model,
    model_sha256,
    unit_to_hu,
)
from common.data.diffusion.sample import composite_weight, generate_hu, sample_unit  # noqa: E402
from common.data.diffusion.train import render_many  # noqa: E402
from common.data.loader import ct_dataset, load_arrays  # noqa: E402
from common.data.store import load_shard, read_manifest  # noqa: E402

TINY_TOML = """
profile = "tiny-diffusion"
seed = 5
[data]
image_size = 32
train_total = 10
holdout_per_site = 1
test_per_site = 2
attacker_size = 5
shard_size = 4
[model]
base = 4
[diffusion]
block_out_channels = [16, 32]
norm_num_groups = 8
attention = false
train_slices = 40
steps = 40
batch_size = 8
lr = 0.001
warmup_steps = 5
checkpoint_every = 20
ddim_steps = 3
sample_batch = 4
dilate_px = 1
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(config path, model dir): trained once through the CLI, reused by every test."""
    root = tmp_path_factory.mktemp("diff")
    cfg_path = root / "tiny.toml"
    cfg_path.write_text(TINY_TOML)
    out = root / "model"
    assert main(["diffusion", "train", "--config", str(cfg_path), "--out", str(out)]) == 0
    return cfg_path, out


@pytest.fixture(scope="module")
def model(trained):
    return load_model(trained[1])


def _masks(n=3, size=32):
    masks = np.zeros((n, size, size), np.uint8)
    masks[0, 10:16, 8:13] = 1
    masks[1, 18:21, 14:20] = 1
    return masks  # the third slice has no tumour


def test_training_loss_decreases_and_writes_the_model_dir(trained):
    _, out = trained
    losses = json.loads((out / "loss.json").read_text())
    assert len(losses) == 40
    assert np.mean(losses[-10:]) < 0.7 * np.mean(losses[:10])
    for f in (
        "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors",
        "scheduler/scheduler_config.json",
        "diffusion.json",
        "loss.png",
        "checkpoints/step-20/unet/config.json",
        "checkpoints/step-20/state.pt",
    ):
        assert (out / f).is_file(), f
    meta = json.loads((out / "diffusion.json").read_text())
    assert meta["image_size"] == 32 and meta["steps"] == 40
    assert meta["final_loss"] < meta["first_loss"]


def test_existing_model_dir_needs_resume(trained, tmp_path):
    cfg_path, out = trained
    with pytest.raises(FileExistsError, match="--resume"):
        from common.data.diffusion.train import train_diffusion

        train_diffusion(load_config(cfg_path), out, steps=1)


def test_resume_continues_exactly_from_the_last_checkpoint(trained, tmp_path):
    from common.config import with_overrides
    from common.data.diffusion.train import train_diffusion

    cfg = with_overrides(load_config(trained[0]), **{"diffusion.checkpoint_every": 2})
    slices = render_many(cfg, 10, 1)
    straight = train_diffusion(cfg, tmp_path / "a", steps=6, slices=slices)
    train_diffusion(cfg, tmp_path / "b", steps=4, slices=slices)  # checkpoint at step 2
    resumed = train_diffusion(cfg, tmp_path / "b", steps=6, resume=True, slices=slices)
    la = json.loads((tmp_path / "a" / "loss.json").read_text())
    lb = json.loads((tmp_path / "b" / "loss.json").read_text())
    assert len(lb) == 6 and np.allclose(la, lb, rtol=1e-5)
    for p, q in zip(straight.unet.parameters(), resumed.unet.parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-6)


def test_sampling_shape_dtype_and_hu_range(model):
    masks = _masks()
    hu = generate_hu(model, masks, np.array([0, 3, 4]), [1, 2, 3], mode="whole", steps=3)
    assert hu.shape == (3, 32, 32) and hu.dtype == np.int16
    knots = model.knots
    assert hu.min() >= knots[0] and hu.max() <= knots[3]
    x = sample_unit(model, masks, np.array([0, 3, 4]), [1, 2, 3], steps=3)
    assert x.dtype == np.float32 and x.min() >= -1 and x.max() <= 1


def test_same_seed_reproduces_and_batching_does_not_matter(model):
    masks, sites = _masks(), np.array([1, 2, 0])
    a = sample_unit(model, masks, sites, [7, 8, 9], steps=3)
    b = sample_unit(model, masks, sites, [7, 8, 9], steps=3)
    assert np.allclose(a, b, atol=1e-6)
    alone = sample_unit(model, masks[1:2], sites[1:2], [8], steps=3)
    assert np.allclose(a[1], alone[0], atol=1e-5)
    other = sample_unit(model, masks, sites, [70, 80, 90], steps=3)
    assert np.abs(a - other).mean() > 1e-2


def test_save_load_round_trip(trained, model, tmp_path):
    from common.data.diffusion.model import save_model

    save_model(model, tmp_path / "copy")
    again = load_model(tmp_path / "copy")
    for (k, p), (k2, q) in zip(
        model.unet.state_dict().items(), again.unet.state_dict().items(), strict=True
    ):
        assert k == k2 and torch.equal(p, q)
    assert again.meta == model.meta and model_sha256(tmp_path / "copy") == model_sha256(trained[1])
    masks, sites = _masks(), np.array([0, 1, 2])
    a = sample_unit(model, masks, sites, [1, 2, 3], steps=2)
    b = sample_unit(again, masks, sites, [1, 2, 3], steps=2)
    assert np.allclose(a, b, atol=1e-5)


def test_load_rejects_a_non_model_dir(tmp_path):
    with pytest.raises(ValueError, match="not a diffusion model directory"):
        load_model(tmp_path)


def test_composite_only_changes_the_region_around_the_tumour(model):
    masks = _masks()
    bg = np.full((3, 32, 32), 100, np.int16)
    out = generate_hu(
        model,
        masks,
        np.array([0, 1, 2]),
        [4, 5, 6],
        mode="composite",
        steps=3,
        background_hu=bg,
        dilate_px=1,
        blur_px=1.0,
    )
    for m, o in zip(masks, out, strict=True):
        _, w = composite_weight(m, 1, 1.0)
        assert np.array_equal(o[w == 0], bg[0][w == 0])
    assert np.array_equal(out[2], bg[2])  # no tumour: the procedural slice, untouched
    assert not np.array_equal(out[0][masks[0] == 1], bg[0][masks[0] == 1])


def test_bad_inputs_are_value_errors(model):
    with pytest.raises(ValueError, match="masks must be"):
        sample_unit(model, np.zeros((2, 16, 16), np.uint8), np.zeros(2), [1, 2], steps=2)
    with pytest.raises(ValueError, match="seeds"):
        sample_unit(model, np.zeros((2, 32, 32), np.uint8), np.zeros(2), [1], steps=2)
    with pytest.raises(ValueError, match="composite mode needs"):
        generate_hu(
            model, np.zeros((1, 32, 32), np.uint8), np.zeros(1), [1], mode="composite", steps=2
        )
    with pytest.raises(ValueError, match="unknown mode"):
        generate_hu(model, np.zeros((1, 32, 32), np.uint8), np.zeros(1), [1], mode="x", steps=2)


def test_hu_map_round_trips_and_keeps_soft_tissue_resolution():
    knots = (-1024.0, -160.0, 240.0, 1500.0)
    hu = np.array([-1024, -500, -160, 0, 40, 240, 900, 1500], np.float32)
    assert np.allclose(unit_to_hu(hu_to_unit(hu, knots), knots), hu, atol=1e-3)
    # 80% of the model's range covers the soft-tissue window: 50 HU is 0.2 units
    assert np.isclose(hu_to_unit(np.float32(90), knots) - hu_to_unit(np.float32(40), knots), 0.2)


@pytest.mark.parametrize("mode", ["composite", "whole"])
def test_diffusion_dataset_loads_like_a_procedural_one(trained, tmp_path, mode):
    cfg_path, model_dir = trained
    cfg = load_config(cfg_path)
    d = cfg.model_dump(mode="json")
    d["data"].update(generator="diffusion", diffusion_model=str(model_dir))
    d["diffusion"]["mode"] = mode
    out = tmp_path / "ds"
    manifest = build_dataset(parse_config(d, "test"), out, workers=1, gallery=False)
    m = read_manifest(out)
    assert m["generator"] == "diffusion" and manifest["diffusion"]["mode"] == mode
    assert m["diffusion"]["model_sha256"] == model_sha256(model_dir)
    for e in m["shards"]:
        load_shard(out, e)  # sha256 and counts against the manifest
    images, masks, index, _ = load_arrays(out, "train", "A", m)
    assert images.dtype == np.int16 and masks.dtype == np.uint8 and images.shape[1:] == (32, 32)
    assert list(index) == list(range(len(index)))
    assert len(ct_dataset(out, "test")) == 10
    procedural = build_dataset(
        parse_config(
            {**d, "data": {**d["data"], "generator": "procedural", "diffusion_model": None}}, "t"
        ),
        tmp_path / "p",
        workers=1,
        gallery=False,
    )
    p_images, p_masks, _, _ = load_arrays(tmp_path / "p", "train", "A", procedural)
    assert np.array_equal(p_masks, masks)  # same masks: labels come from the procedural draw
    tumour = masks.reshape(len(masks), -1).any(1)
    if mode == "composite":
        assert np.array_equal(p_images[~tumour], images[~tumour])
    assert not np.array_equal(p_images[tumour], images[tumour])
    k = int(np.flatnonzero(tumour)[0])
    s = regenerate_slice(out, "train", "A", int(index[k]))
    assert np.array_equal(s.image, images[k]) and np.array_equal(s.mask, masks[k])
    assert s.params["diffusion"]["mode"] == mode


def test_dataset_refuses_a_model_of_another_size_or_none(trained, tmp_path):
    _, model_dir = trained
    with pytest.raises(ConfigError, match="needs diffusion_model"):
        parse_config({"data": {"generator": "diffusion"}}, "t")
    cfg = parse_config(
        {"data": {"image_size": 64, "generator": "diffusion", "diffusion_model": str(model_dir)}},
        "t",
    )
    with pytest.raises(ValueError, match="makes 32px slices"):
        build_dataset(cfg, tmp_path / "x", workers=1)
    assert not (tmp_path / "x").exists()


def test_missing_diffusers_is_a_clear_error(trained, tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "diffusers" else real(name, *a),
    )
    cfg = load_config(trained[0])
    d = cfg.model_dump(mode="json")
    d["data"].update(generator="diffusion", diffusion_model=str(trained[1]))
    with pytest.raises(ValueError, match=r"pip install -e '\.\[diffusion\]'"):
        build_dataset(parse_config(d, "t"), tmp_path / "x", workers=1)


def test_cli_data_with_the_diffusion_generator(trained, tmp_path, capsys):
    cfg_path, model_dir = trained
    out = tmp_path / "cli"
    rc = main(
        [
            "data",
            "--config",
            str(cfg_path),
            "--generator",
            "diffusion",
            "--model",
            str(model_dir),
            "--out",
            str(out),
            "--workers",
            "1",
            "--no-gallery",
        ]
    )
    assert rc == 0 and "generator diffusion" in capsys.readouterr().out
    assert read_manifest(out)["generator"] == "diffusion"
    rc = main(
        [
            "data",
            "--config",
            str(cfg_path),
            "--generator",
            "diffusion",
            "--out",
            str(tmp_path / "no"),
        ]
    )
    assert rc == 2 and "needs diffusion_model" in capsys.readouterr().err


def test_report_writes_realism_and_fidelity(trained, model, tmp_path):
    from common.data.diffusion.report import diffusion_report

    cfg = load_config(trained[0])
    r = diffusion_report(
        cfg, trained[1], tmp_path / "rep", n=10, seg_slices=10, seg_epochs=1, model=model
    )
    for f in ("report.json", "report.md", "gallery.png", "hu_histograms.png", "nps.png"):
        assert (tmp_path / "rep" / f).is_file(), f
    assert set(r["fidelity"]) == {"procedural", "whole", "composite", "control"}
    for f in r["fidelity"].values():
        assert 0.0 <= f["dice_global"] <= 1.0
    # composite = procedural outside the generated ring, so labelled tissue stats agree closely
    p, c = r["labelled"]["procedural"]["liver"], r["labelled"]["composite"]["liver"]
    assert p["n"] == c["n"] and abs(p["mean"] - c["mean"]) < 5
    assert len(r["noise"]["whole"]["nps"]) == 16 and r["timing_s_per_slice"]["whole"] > 0


def test_noise_measurement_sees_white_vs_correlated_noise():
    from scipy import ndimage

    from common.data.diffusion.report import noise_stats

    rng = np.random.default_rng(0)
    white = 50 + 10 * rng.standard_normal((4, 64, 64))
    smooth = 50 + 10 * ndimage.gaussian_filter(rng.standard_normal((4, 64, 64)), (0, 1, 1)) / 0.28
    w, s = noise_stats(white, np.arange(4)), noise_stats(smooth, np.arange(4))
    assert 6 < w["sigma_all"] < 10  # the high-pass residual keeps most of white noise
    assert s["sigma_all"] < w["sigma_all"]  # correlated noise has less high-frequency power
    assert s["nps_mean_freq"] < w["nps_mean_freq"]


@pytest.mark.parametrize("name", ["diffusion-small", "diffusion-256"])
def test_shipped_diffusion_profiles_build(name):
    cfg = load_profile(name)
    unet = build_unet(cfg.diffusion, cfg.data.image_size)
    n = sum(p.numel() for p in unet.parameters())
    assert unet.config.sample_size == cfg.data.image_size
    assert (1e6 < n < 5e6) if name == "diffusion-small" else (2e7 < n < 4e7)


def test_unet_size_must_divide_the_levels():
    cfg = parse_config({"diffusion": {"block_out_channels": [8, 8, 8, 8, 8, 8]}}, "t")
    with pytest.raises(ValueError, match="not divisible"):
        build_unet(cfg.diffusion, 48)
    with pytest.raises(ConfigError, match="must divide"):
        parse_config({"diffusion": {"block_out_channels": [12, 24], "norm_num_groups": 8}}, "t")


def test_paths_are_never_fetched_from_a_hub(tmp_path):
    # a hub-style id instead of a directory is refused before diffusers could try to download
    with pytest.raises(ValueError, match="not a diffusion model directory"):
        load_model(Path("google/ddpm-cifar10-32"))
