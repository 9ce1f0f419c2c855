"""Writing and loading datasets: determinism, manifest, regeneration, integrity, atomic writes."""

import json
from pathlib import Path

import numpy as np
import pytest

from bench.cli import main
from common.config import parse_config
from common.data import build as build_mod
from common.data.build import build_dataset, split_sizes
from common.data.loader import ct_dataset, load_arrays, regenerate_slice, sample_params
from common.data.store import DatasetIntegrityError, read_manifest

TINY = {
    "profile": "tiny",
    "seed": 3,
    "data": {
        "image_size": 48,
        "severity": "extreme",
        "train_total": 30,
        "holdout_per_site": 3,
        "test_per_site": 4,
        "attacker_size": 10,
        "shard_size": 4,
    },
}


def _cfg(**over):
    d = json.loads(json.dumps(TINY))
    for k, v in over.items():
        if k == "seed":
            d["seed"] = v
        else:
            d["data"][k] = v
    return parse_config(d, "test")


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    out = tmp_path_factory.mktemp("d") / "ds"
    build_dataset(_cfg(), out, workers=1)
    return out


def _shas(root):
    return {e["file"]: e["sha256"] for e in read_manifest(root)["shards"]}


def test_layout_and_counts(ds):
    m = read_manifest(ds)
    for f in ("manifest.json", "summary.md", "gallery.png"):
        assert (ds / f).is_file()
    sizes = split_sizes(_cfg())
    for split, counts in sizes.items():
        for site, n in zip("ABCDE", counts, strict=True):
            images, masks, index, sites = load_arrays(ds, split, site, m)
            assert len(images) == n == len(masks) and list(index) == list(range(n))
            assert set(sites) <= {site}
            assert images.dtype == np.int16 and masks.dtype == np.uint8
    assert sum(sizes["train"]) == 30 and sizes["test"] == [4] * 5
    assert not list(ds.parent.glob(".ds.tmp-*"))


def test_same_seed_same_bytes_any_worker_count(ds, tmp_path):
    build_dataset(_cfg(), tmp_path / "again", workers=2, gallery=False)
    assert _shas(ds) == _shas(tmp_path / "again")
    for e in read_manifest(ds)["shards"]:
        assert (ds / e["file"]).read_bytes() == (tmp_path / "again" / e["file"]).read_bytes()
    build_dataset(_cfg(seed=4), tmp_path / "other", workers=1, gallery=False)
    assert not set(_shas(ds).values()) & set(_shas(tmp_path / "other").values())


def test_attacker_pool_uses_a_different_seed(ds):
    m = read_manifest(ds)
    assert m["attacker_seed"] != m["seed"]
    att, _, _, _ = load_arrays(ds, "attacker", "A", m)
    tr, _, _, _ = load_arrays(ds, "train", "A", m)
    n = min(len(att), len(tr))
    assert not np.array_equal(att[:n], tr[:n])


def test_regenerate_any_slice_from_the_manifest(ds):
    m = read_manifest(ds)
    for split, site, idx in (
        ("train", "A", 5),
        ("test", "C", 3),
        ("attacker", "E", 1),
        ("holdout", "B", 2),
    ):
        images, masks, index, _ = load_arrays(ds, split, site, m)
        s = regenerate_slice(ds, split, site, idx)
        assert np.array_equal(s.image, images[idx]) and np.array_equal(s.mask, masks[idx])
        assert s.params == sample_params(m, split, site)[idx]


def test_manifest_records_sample_parameters(ds):
    m = read_manifest(ds)
    p = sample_params(m, "train", "B")[0]
    assert {"site", "split", "index", "has_tumor", "tumor", "anatomy", "noise"} <= set(p)
    assert m["sites"][1]["name"] == "B" and "kernel" in m["sites"][1]
    assert all(len(e["sha256"]) == 64 for e in m["shards"])


def test_measured_noise_ordered_as_configured(tmp_path):
    cfg = _cfg(image_size=64, holdout_per_site=12, test_per_site=12, attacker_size=0)
    m = build_dataset(cfg, tmp_path / "n", workers=1, gallery=False)
    measured = {r["site"]: r["noise_sigma_liver_hu"] for r in m["summary"]}
    configured = {
        site: sample_params(m, "test", site)[0]["noise"]["sigma_centre_hu"] for site in "ABCDE"
    }
    for a in "ABCDE":
        for b in "ABCDE":
            if configured[a] > 1.25 * configured[b]:
                assert measured[a] > measured[b], (a, b, measured, configured)


def test_torch_dataset_uses_a_fixed_window(ds):
    d = ct_dataset(ds, "test", "B")
    img, mask = d[0]
    assert img.shape == (1, 48, 48) and mask.shape == (1, 48, 48)
    assert float(img.min()) >= 0.0 and float(img.max()) <= 1.0
    images, _, _, _ = load_arrays(ds, "test", "B")
    lo, hi = read_manifest(ds)["window"]
    expected = (np.clip(images[0].astype(np.float32), lo, hi) - lo) / (hi - lo)
    assert np.allclose(img[0].numpy(), expected)
    assert len(ct_dataset(ds, "train")) == 30


def test_corrupted_shard_is_detected(ds, tmp_path):
    import shutil

    copy = tmp_path / "c"
    shutil.copytree(ds, copy)
    shard = copy / read_manifest(copy)["shards"][0]["file"]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(DatasetIntegrityError, match="corrupted"):
        load_arrays(copy, "train", "A")
    shard.unlink()
    with pytest.raises(DatasetIntegrityError, match="missing shard"):
        load_arrays(copy, "train", "A")
    with pytest.raises(DatasetIntegrityError, match="no manifest"):
        load_arrays(tmp_path, "train", "A")


def test_loader_rejects_unknown_split_and_site(ds):
    with pytest.raises(ValueError, match="unknown split"):
        load_arrays(ds, "val")
    with pytest.raises(ValueError, match="unknown site"):
        load_arrays(ds, "train", "Q")


def test_existing_output_needs_force(ds, tmp_path):
    out = tmp_path / "x"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    with pytest.raises(FileExistsError, match="--force"):
        build_dataset(_cfg(), out, workers=1, gallery=False)
    assert (out / "keep.txt").read_text() == "precious"
    inode = out.stat().st_ino
    build_dataset(_cfg(), out, workers=1, gallery=False, force=True)
    assert not (out / "keep.txt").exists() and (out / "manifest.json").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["x"]
    # OUT itself is never renamed (a container's bind-mounted /data cannot be: EBUSY), and no
    # temporary is left inside it
    assert out.stat().st_ino == inode
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_unwritable_output_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a dir")
    with pytest.raises(OSError, match="cannot write the dataset"):
        build_dataset(_cfg(), blocker / "sub", workers=1)


def test_failure_mid_generation_leaves_nothing_behind(tmp_path, monkeypatch):
    calls = {"n": 0}
    real = build_mod.make_shard

    def flaky(job):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("disk full (simulated)")
        return real(job)

    monkeypatch.setattr(build_mod, "make_shard", flaky)
    with pytest.raises(RuntimeError, match="simulated"):
        build_dataset(_cfg(), tmp_path / "ds", workers=1)
    assert list(Path(tmp_path).iterdir()) == []


def test_cli_writes_dataset_and_summary(tmp_path, capsys):
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(
        'profile = "tiny"\nseed = 1\n[data]\nimage_size = 32\ntrain_total = 10\n'
        "holdout_per_site = 1\ntest_per_site = 1\nattacker_size = 0\n"
    )
    rc = main(["data", "--config", str(cfg), "--out", str(tmp_path / "o"), "--workers", "1"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "| A |" in out and "noise σ liver" in out
    assert (tmp_path / "o" / "gallery.png").stat().st_size > 1000
    rc = main(["data", "--config", str(cfg), "--out", str(tmp_path / "o")])
    assert rc == 2 and "already exists" in capsys.readouterr().err
