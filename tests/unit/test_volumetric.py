"""The volumetric study (open question 3): the 3D U-Net, the volume generator and the study's
cells, end to end at a tiny size (bench/volumetric.py)."""

import json

import numpy as np
import pytest
import torch

from common.config import resolve_config, with_overrides
from common.model import build_model, count_parameters


def test_the_3d_unet_keeps_the_shape_and_takes_only_volumes():
    m3 = build_model(4, "batch", 2, 0, dims=3)
    x = torch.randn(2, 1, 8, 16, 16)
    assert m3(x).shape == x.shape
    # 3x3x3 kernels: three times the 2D net's convolution weights, the same layout otherwise
    m2 = build_model(4, "batch", 2, 0)
    assert count_parameters(m3) > 2.5 * count_parameters(m2)
    with pytest.raises(ValueError, match="3D U-Net"):
        m3(torch.randn(2, 1, 16, 16))
    with pytest.raises(ValueError, match="multiple of 4"):
        m3(torch.randn(1, 1, 6, 16, 16))
    with pytest.raises(ValueError, match="dims"):
        build_model(4, dims=4)


def _spec():
    from common.data.sites import resolve_sites

    cfg = resolve_config("configs/volumetric.toml", None, None)
    return cfg, resolve_sites(cfg.data, cfg.sites)


def test_a_volume_is_one_patient_regenerated_bit_for_bit_with_a_lesion_in_the_liver():
    from common.data.anatomy import LABEL
    from common.data.volume import _extrude, render_volume

    cfg, specs = _spec()
    args = (42, 1, "train", 3, specs[1], 32, 8, 6.0, cfg.data.noise_ref_hu)
    a, b = render_volume(*args), render_volume(*args)
    assert a.image.shape == a.mask.shape == (8, 32, 32) and a.image.dtype == np.int16
    assert np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask)
    other = render_volume(42, 1, "holdout", 3, specs[1], 32, 8, 6.0, cfg.data.noise_ref_hu)
    assert not np.array_equal(a.image, other.image)  # each split has its own patients
    assert a.mask.any() and a.params["tumour"]["voxels"] == int(a.mask.sum())
    # neighbouring slices show the same organs: the anatomy is one patient's, not fresh slices
    tissue = _extrude((np.arange(32 * 32) % 7 == 0).reshape(32, 32).astype(np.uint8), 8, 0)
    assert (tissue[3] == tissue[4]).mean() > 0.9
    assert LABEL["liver"] > 0


def _tiny(tmp_path):
    cfg = resolve_config("configs/volumetric.toml", None, None)
    return with_overrides(
        cfg,
        **{
            "data.image_size": 32,
            "model.base": 4,
            "model.groups": 2,
            "train.rounds": 2,
            "train.local_epochs": 1,
            "train.batch_size": 16,
            "volume.depth": 8,
            "volume.train_per_site": 1,
            "volume.holdout_per_site": 1,
            "volume.test_per_site": 1,
            "volume.attacker_patients": 10,
            "volume.n_shadows": 2,
        },
    )


def test_both_arms_train_on_the_same_patients_and_the_study_reports_them(tmp_path, monkeypatch):
    import bench.volumetric as vol
    from bench.study import STUDIES, write_report

    cfg = _tiny(tmp_path)
    seen = []
    federate = vol.federate

    def spy(cfg_, dims, members, seed, test=None):
        seen.append(
            (dims, {s: int(np.asarray(i, np.int64).sum()) for s, (i, _) in members.items()})
        )
        return federate(cfg_, dims, members, seed, test)

    monkeypatch.setattr(vol, "federate", spy)
    summary = vol.run_volumetric(STUDIES["volumetric"], cfg, 1, tmp_path)
    targets = [m for d, m in seen if set(m) == {s.name for s in cfg.sites}]
    # per arm: the target (the cohort's members) and 2 shadows (halves of the attacker's pool)
    assert [d for d, _ in seen] == [2, 2, 2, 3, 3, 3]
    assert targets[0] == targets[3]  # the 2D and 3D targets saw the same member patients
    assert targets[1] != targets[2]  # the two shadows train on different halves
    cell2, cell3 = (summary["arms"][a]["seeds"]["42"]["fedavg"] for a in ("slices2d", "volumes3d"))
    for cell in (cell2, cell3):
        assert 0.0 <= cell["dice"] <= 1.0 and len(cell["dice_per_site"]) == 5
        assert len(cell["curve"]) == cfg.train.rounds
        assert cell["mia"]["n_members"] == 5 and cell["mia"]["n_nonmembers"] == 5
        assert cell["attack"] in ("loss", "lira") and cell["mia"]["selected_on"] == "shadows"
    assert cell3["n_params"] > 2.5 * cell2["n_params"]
    saved = json.loads((tmp_path / "study.json").read_text())
    assert saved["arms"]["volumes3d"]["overrides"] == {"model.dims": 3}
    text = write_report(saved, tmp_path)
    assert "3D U-Net on the volumes" in text and "volumes3d" not in text.split("## Verdicts")[0]
    assert "not distinguishable" in text  # one seed gives no interval
    assert (tmp_path / "plots" / "dice_per_site.png").is_file()


def test_the_pool_must_hold_two_shadow_federations(tmp_path):
    import bench.volumetric as vol

    cfg = with_overrides(_tiny(tmp_path), **{"volume.attacker_patients": 6})
    cohort = vol.make_cohort(cfg)
    with pytest.raises(ValueError, match="twice the members"):
        vol.audit(cfg, 2, build_model(4, "batch", 2, 0), cohort, 42, [s.name for s in cfg.sites])


def test_volumetric_refuses_ray_and_a_bad_depth(capsys):
    from bench import cli

    assert cli.main(["study", "volumetric", "--engine", "ray", "--out", "/nonexistent/x"]) == 2
    assert "ray" in capsys.readouterr().err
    with pytest.raises(ValueError, match="multiple of 4"):
        with_overrides(resolve_config("configs/volumetric.toml", None, None), **{"volume.depth": 6})
