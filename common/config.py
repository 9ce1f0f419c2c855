"""Run configuration: frozen pydantic models loaded from TOML.

A profile (``configs/<name>.toml``) holds everything a run needs. Models forbid unknown keys, so a
typo is an error that names the field instead of a silently ignored setting. Environment variables
are only for deployment facts (addresses, site id, TLS paths), never for these settings.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from common.device import DEVICES, device_spec
from common.methods import DEFAULT_METHODS, METHOD_NAMES, get_method
from common.seeds import ATTACKER_POOL_OFFSET, DIFFUSION_TRAIN_OFFSET, PUBLIC_POOL_OFFSET

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

# The default roster: five sites, named as the generator's five site presets (their scanners and
# patient mixes, common/data/sites.py). A profile's [[sites]] tables replace it.
SITE_PRESETS = ("A", "B", "C", "D", "E")
SITE_CERT_PREFIX = "site-"  # a site's certificate CN is this and its name, unless cert_name says


def default_cert_name(site: str) -> str:
    """The CN of a site's client certificate when the roster names none (`fedonco certs`')."""
    return f"{SITE_CERT_PREFIX}{site}"


SITE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,31}")  # a site's ID: also a path part and a CN
SIZE_CLASSES = ("tiny", "small", "medium", "large")
# The shipped profiles; FEDONCO_CONFIG_DIR points elsewhere (an installed wheel has no configs/).
CONFIG_DIR = Path(
    os.environ.get("FEDONCO_CONFIG_DIR") or Path(__file__).resolve().parent.parent / "configs"
)


class ConfigError(ValueError):
    """A configuration file or value is invalid; the message names the file and the field."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class SiteOverride(_Frozen):
    """Per-site knobs a profile may set on top of the severity preset (all optional)."""

    size_fraction: float | None = Field(None, gt=0)
    dose: float | None = Field(None, gt=0, description="relative tube current-time product")
    kernel_cutoff: float | None = Field(None, ge=0.2, le=3.0)
    psf_mm: float | None = Field(None, ge=0)
    hu_offset: float | None = Field(None, ge=-100, le=100)
    hu_gain: float | None = Field(None, ge=0.8, le=1.2)
    fov_mm: float | None = Field(None, ge=250, le=500)
    prevalence: float | None = Field(None, ge=0, le=1)
    size_mix: tuple[float, float, float, float] | None = None
    contrast_hu: tuple[float, float] | None = None

    @field_validator("size_mix")
    @classmethod
    def _mix(cls, v):
        if v is not None and (min(v) < 0 or abs(sum(v) - 1.0) > 1e-6):
            raise ValueError("size_mix must be 4 non-negative probabilities summing to 1")
        return v

    @field_validator("contrast_hu")
    @classmethod
    def _contrast(cls, v):
        if v is not None and not (0 < v[0] <= v[1]):
            raise ValueError("contrast_hu must be [lo, hi] with 0 < lo <= hi")
        return v


class SiteEntry(_Frozen):
    """One site of the federation (a ``[[sites]]`` table of a profile)."""

    name: str = Field(description="the site's ID: letters, digits, '-' and '_', at most 32")
    cert_name: str | None = Field(
        None,
        description="CN of its client certificate (default: site-<name>, as `fedonco tls init` issues)",
    )
    preset: str | None = Field(
        None,
        description="which of the procedural generator's site presets (A-E) its synthetic data "
        "follows; default: the roster position's, A, B, C, D, E, A, ...",
    )

    @field_validator("name")
    @classmethod
    def _name(cls, v):
        if not SITE_NAME.fullmatch(v):
            raise ValueError(
                f"site name {v!r}: 1-32 of letters, digits, '-' and '_', not starting with '-' or '_'"
            )
        return v

    @field_validator("cert_name")
    @classmethod
    def _cert(cls, v):
        if v is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", v):
            raise ValueError(f"cert_name {v!r}: 1-64 of letters, digits, '.', '-' and '_'")
        return v

    @field_validator("preset")
    @classmethod
    def _preset(cls, v):
        if v is not None and v not in SITE_PRESETS:
            raise ValueError(f"preset {v!r}: one of {', '.join(SITE_PRESETS)}")
        return v

    @property
    def common_name(self) -> str:
        """The CN the server requires of this site's client certificate."""
        return self.cert_name or default_cert_name(self.name)


def default_roster(n: int = len(SITE_PRESETS)) -> tuple[SiteEntry, ...]:
    """``n`` sites: A-E for up to five, else S001, S002, ... (presets cycling A-E)."""
    if n < 1:
        raise ValueError("a federation has at least one site")
    if n <= len(SITE_PRESETS):
        return tuple(SiteEntry(name=p) for p in SITE_PRESETS[:n])
    return tuple(SiteEntry(name=f"S{i + 1:03d}") for i in range(n))


DEFAULT_ROSTER = default_roster()
DEFAULT_SITE_NAMES = tuple(e.name for e in DEFAULT_ROSTER)


class DataConfig(_Frozen):
    """The synthetic CT generator and the splits it writes (train, holdout, test, attacker)."""

    generator: Literal["procedural", "diffusion"] = "procedural"
    diffusion_model: str | None = Field(
        None, description="model directory of `fedonco diffusion train` (generator=diffusion)"
    )
    image_size: int = Field(256, ge=32, le=1024)
    severity: Literal["iid", "mild", "moderate", "extreme"] = "moderate"
    stress: Literal["none", "paper"] = "none"
    train_total: int = Field(4000, ge=5, description="training slices over all sites")
    holdout_per_site: int = Field(200, ge=1)
    test_per_site: int = Field(200, ge=1)
    attacker_size: int = Field(
        1000, ge=0, description="attacker pool, spread evenly over the sites"
    )
    attacker_seed: int | None = Field(None, ge=0, description="default: seed + 1000003")
    noise_ref_hu: float = Field(
        12.0, gt=0, description="noise sigma at dose 1, ref kernel, 380/256 mm pixel (paper's 256²)"
    )
    window: tuple[float, float] = (-160.0, 240.0)
    shard_size: int = Field(256, ge=1)
    overrides: dict[str, SiteOverride] = Field(default_factory=dict)

    @field_validator("image_size")
    @classmethod
    def _size(cls, v):
        if v % 16:
            raise ValueError("image_size must be a multiple of 16 (the U-Net pools twice)")
        return v

    @field_validator("window")
    @classmethod
    def _window(cls, v):
        if not v[0] < v[1]:
            raise ValueError("window must be [lo, hi] HU with lo < hi")
        return v

    @model_validator(mode="after")
    def _diffusion_model(self):
        if self.generator == "diffusion" and not self.diffusion_model:
            raise ValueError("generator 'diffusion' needs diffusion_model (a trained model dir)")
        return self


class ModelConfig(_Frozen):
    """The paper's 2D U-Net (common/model.py); base 52 gives ~1.2M parameters."""

    base: int = Field(16, ge=4, le=128)
    norm: Literal["batch", "group"] = "batch"
    groups: int = Field(4, ge=1, description="GroupNorm groups (must divide base)")
    dims: Literal[2, 3] = Field(
        2, description="2: the paper's slice model; 3: the volumetric study's 3D U-Net"
    )


class TrainConfig(_Frozen):
    """Local training at every site, the same for every method."""

    rounds: int = Field(3, ge=1)
    local_epochs: int = Field(1, ge=1)
    batch_size: int = Field(16, ge=1)
    lr: float = Field(1e-3, gt=0)
    optimizer: Literal["adam", "sgd"] = "adam"
    eval_batch_size: int = Field(64, ge=1)
    device: str = Field(
        "cpu",
        description=f"where every process computes: {DEVICES} (--device overrides it; docs/gpu.md)",
    )

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        return device_spec(v)  # the syntax; the hardware is checked when a process starts


class FLConfig(_Frozen):
    """Federation: which methods the benchmark runs and how rounds are organised."""

    methods: tuple[str, ...] = DEFAULT_METHODS
    proximal_mu: float = Field(0.01, ge=0)
    # FedAdam's server optimizer (common/fl/fedadam.py; Reddi et al. 2021's defaults, not tuned)
    server_lr: float = Field(1e-2, gt=0, description="FedAdam: the server's step size eta")
    server_beta1: float = Field(0.9, ge=0, lt=1, description="FedAdam: first-moment decay")
    server_beta2: float = Field(0.99, ge=0, lt=1, description="FedAdam: second-moment decay")
    server_tau: float = Field(1e-3, gt=0, description="FedAdam: adaptivity bound tau")
    fraction_fit: float = Field(1.0, gt=0, le=1)
    min_fit_sites: int = Field(
        3, ge=1, description="fewer updates -> the round is skipped (<= the roster's sites)"
    )
    round_timeout_s: float = Field(600.0, gt=0, description="a site later than this is left out")
    wait_for_sites_s: float = Field(120.0, gt=0, description="how long to wait for registration")
    heartbeat_s: float = Field(2.0, gt=0)
    max_examples_per_site: int = Field(
        100_000,
        ge=1,
        le=2**31 - 1,
        description="the operator's cap on a site's claimed "
        "training-set size (its weight in the average); a larger claim is refused",
    )
    max_skipped_rounds: int = Field(
        5,
        ge=1,
        description="consecutive rounds skipped for want of min_fit_sites live sites "
        "before the run stops (status 'stopped')",
    )
    skip_wait_s: float = Field(10.0, gt=0, description="wait before retrying a skipped round")

    @field_validator("methods")
    @classmethod
    def _methods(cls, v):
        bad = [m for m in v if m not in METHOD_NAMES]
        if bad or not v:
            raise ValueError(f"unknown method(s) {bad}; known: {list(METHOD_NAMES)}")
        return v


class SecAggConfig(_Frozen):
    """Pairwise-masking secure aggregation (Bonawitz et al. 2017); on by default everywhere."""

    enabled: bool = True
    threshold: int = Field(3, ge=2, description="t: shares needed to unmask; fewer survivors abort")
    clip: float = Field(64.0, gt=0, description="per-element clip of params before quantisation")
    neighbours: int | None = Field(
        None, ge=2, description="SecAgg+ k-regular graph; None = complete"
    )


class DPConfig(_Frozen):
    """DP-SGD at each site (method ``dpsgd``): Opacus, Poisson sampling, one accountant per site."""

    noise_multiplier: float | None = Field(1.2, gt=0, description="sigma; null with target_epsilon")
    max_grad_norm: float = Field(1.0, gt=0, description="C, the per-slice clipping norm")
    delta: float = Field(1e-5, gt=0, lt=1, description="must also be < 1/N of every site")
    accountant: Literal["rdp", "prv"] = "rdp"
    target_epsilon: float | None = Field(None, gt=0, description="sigma computed before training")
    max_epsilon: float | None = Field(None, gt=0, description="a site stops contributing beyond")
    ddp_sample_rate: float = Field(
        1.0,
        gt=0,
        le=1,
        description="ddp-sgd: the Poisson rate of every slice at every site per step (1: every "
        "slice every step, full-batch DP-GD, whose accounting needs no subsampling bound)",
    )
    adjacency: Literal["replace-one", "add-remove"] = Field(
        "replace-one",
        description="the neighbouring relation epsilon is stated (and target_epsilon met) for: "
        "replace-one, since every site releases its n_k; add-remove only to compare with papers",
    )
    randomness: Literal["site-secret", "seeded-simulation"] = Field(
        "site-secret",
        description="where a site's DP noise comes from: a key only the site holds, or (a "
        "simulation: the server can subtract the noise) the run's public seed. `fedonco bench` "
        "uses seeded-simulation; a site refuses it without --allow-seeded-noise",
    )

    @model_validator(mode="after")
    def _one_of(self):
        if (self.noise_multiplier is None) == (self.target_epsilon is None):
            raise ValueError("give exactly one of noise_multiplier and target_epsilon")
        if self.adjacency == "replace-one" and self.accountant != "rdp":
            raise ValueError(
                "the prv accountant has no replace-one analysis here: use "
                "accountant = 'rdp' or adjacency = 'add-remove'"
            )
        return self


MIA_VIEWS = ("id", "hflip", "vflip", "right", "left", "down", "up")  # attacks.views


class MIAConfig(_Frozen):
    """The membership-inference audit run by the benchmark (the attacker only queries Predict)."""

    enabled: bool = True
    n_members: int = Field(
        500, ge=10, description="drawn from the train splits, stratified by site"
    )
    nonmember_ratio: int = Field(
        1,
        ge=1,
        le=20,
        description="non-members per member (matched per site and tumour presence; TPR at 0.1% "
        "FPR needs >= 1,000 non-members, the DP-ceiling test at FPR x >= 10 / x)",
    )
    n_shadows: int = Field(
        1,
        ge=1,
        description="shadow federations of the attacker (>= 2: the strongest rung and "
        "RMIA's a are chosen on them)",
    )
    bootstrap: int = Field(1000, ge=100)
    views: tuple[str, ...] = Field(
        ("id",),
        description="query views of each candidate (attacks.views): id, hflip, vflip, "
        "right, left, down, up; each is one Predict per slice",
    )
    population: int = Field(200, ge=10, description="RMIA's population samples z from the pool")
    rmia_gamma: float = Field(1.0, gt=0, description="RMIA's likelihood-ratio threshold")
    rmia_a: float | None = Field(
        None, ge=0, le=1, description="RMIA's offline scaling; None: calibrated on the shadows"
    )
    query_budget: int | None = Field(
        None, ge=1, description="target queries per released model; views beyond it are dropped"
    )
    auditor_shadows: int = Field(
        0, ge=0, description="the auditor's online shadows (even, >= 2; 0: no auditor run)"
    )
    whitebox: bool = Field(
        False,
        description="also run the white-box attacker on the released weights "
        "(attacks/whitebox.py; results' mia.whitebox)",
    )

    @field_validator("views")
    @classmethod
    def _views(cls, v):
        if not v or v[0] != "id" or len(set(v)) != len(v) or set(v) - set(MIA_VIEWS):
            raise ValueError(
                f"views must be distinct names from {', '.join(MIA_VIEWS)}, starting with 'id'; "
                f"got {', '.join(v) or 'none'}"
            )
        return v

    @field_validator("auditor_shadows")
    @classmethod
    def _even(cls, v):
        if v and (v < 2 or v % 2):
            raise ValueError(f"auditor_shadows must be 0 or an even number >= 2, got {v}")
        return v


class DiffusionConfig(_Frozen):
    """The optional mask-conditioned diffusion generator (`fedonco diffusion train`).

    A diffusers UNet2DModel at ``data.image_size``, input = noisy slice + tumour mask channel,
    class label = site; trained from scratch (DDPM, epsilon prediction) on procedural slices drawn
    with ``train_seed``, sampled with DDIM.
    """

    block_out_channels: tuple[int, ...] = (32, 64, 128)
    layers_per_block: int = Field(1, ge=1, le=4)
    norm_num_groups: int = Field(8, ge=1)
    attention: bool = Field(False, description="self-attention at the lowest resolution")
    site_conditioning: bool = Field(True, description="site id as a class label (keeps non-IID)")
    num_train_timesteps: int = Field(1000, ge=10)
    beta_schedule: Literal["linear", "squaredcos_cap_v2"] = "squaredcos_cap_v2"
    train_slices: int = Field(2000, ge=1, description="procedural training slices, all sites")
    train_seed: int | None = Field(None, ge=0, description="default: seed + 2000003")
    steps: int = Field(3000, ge=1, description="optimizer steps")
    batch_size: int = Field(16, ge=1)
    lr: float = Field(2e-4, gt=0)
    warmup_steps: int = Field(100, ge=0)
    tumor_weight: float = Field(4.0, ge=1, description="loss weight inside a dilated tumour mask")
    checkpoint_every: int = Field(500, ge=1)
    ddim_steps: int = Field(25, ge=1)
    sample_batch: int = Field(32, ge=1)
    mode: Literal["composite", "whole"] = Field(
        "composite", description="whole slice from noise, or inpaint around the tumour"
    )
    dilate_px: int = Field(2, ge=0, description="composite: generated region around the mask")
    blur_px: float = Field(1.0, ge=0, description="composite: Gaussian blend edge (sigma)")
    hu_knots: tuple[float, float, float, float] = Field(
        (-1024.0, -160.0, 240.0, 1500.0),
        description="HU -> [-1,1]: [k0,k1]->[-1,-0.8], [k1,k2]->[-0.8,0.8], [k2,k3]->[0.8,1]",
    )

    @field_validator("block_out_channels")
    @classmethod
    def _blocks(cls, v):
        if not 2 <= len(v) <= 6 or min(v) < 4:
            raise ValueError("block_out_channels needs 2-6 levels of >= 4 channels")
        return v

    @field_validator("hu_knots")
    @classmethod
    def _knots(cls, v):
        if not v[0] < v[1] < v[2] < v[3]:
            raise ValueError("hu_knots must be strictly increasing")
        return v

    @model_validator(mode="after")
    def _groups(self):
        bad = [c for c in self.block_out_channels if c % self.norm_num_groups]
        if bad:
            raise ValueError(f"norm_num_groups {self.norm_num_groups} must divide channels {bad}")
        return self


class PretrainConfig(_Frozen):
    """Public pretraining (methods marked ``pretrained``, e.g. ``dpsgd-pt``): before round 1 the
    initial model is trained centrally on a public pool — procedural slices from another seed and
    one declared public scanner (the reference profile of common/data/sites.py, not any site's),
    never member data, so it costs no privacy budget. Everyone (server, attacker) derives the same
    weights from this section: it is public."""

    public_size: int = Field(400, ge=8, description="slices in the public pool")
    seed: int | None = Field(None, ge=0, description="public pool seed; default: seed + 4000037")
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(16, ge=1)
    lr: float = Field(1e-3, gt=0)
    holdout_size: int = Field(
        64,
        ge=0,
        description="public holdout slices (the public scanner's holdout split) the pretrained "
        "model is checked on; 0: no check",
    )
    min_dice: float = Field(
        0.0,
        ge=0,
        le=1,
        description="a pretrained model whose Dice on the public holdout is below this has "
        "collapsed (e.g. it predicts no tumour anywhere) and is trained again from another "
        "public init; 0 (default): measured and recorded, never judged (tiny test profiles "
        "learn nothing in their few steps); the standard and threats profiles set 0.05",
    )
    attempts: int = Field(3, ge=1, description="pretrainings tried before giving up")


class Recipe(_Frozen):
    """One method's own training recipe: keys of ``[train]`` and ``[dp]`` that differ for it
    (``[recipes.<method>]``, e.g. a DP method's larger batch and target ε)."""

    train: dict[str, Any] = Field(default_factory=dict)
    dp: dict[str, Any] = Field(default_factory=dict)


class VolumeConfig(_Frozen):
    """The volumetric study (``fedonco study volumetric``, bench/volumetric.py): synthetic
    patients as volumes of ``depth`` axial slices of ``data.image_size`` pixels, each site with
    its own patients; the 3D U-Net trains on the volumes, its 2D twin on their slices."""

    depth: int = Field(16, ge=4, le=256, description="axial slices per volume (multiple of 4)")
    slice_mm: float = Field(6.0, gt=0, le=20, description="slice spacing (mm)")
    train_per_site: int = Field(8, ge=1, description="member patients per site")
    holdout_per_site: int = Field(8, ge=1, description="non-member patients per site (audit)")
    test_per_site: int = Field(4, ge=1, description="test patients per site (Dice)")
    attacker_patients: int = Field(
        80, ge=2, description="the attacker's pool: each shadow trains on a random half"
    )
    n_shadows: int = Field(2, ge=1, le=16, description="shadow federations per model")

    @field_validator("depth")
    @classmethod
    def _depth(cls, v: int) -> int:
        if v % 4:
            raise ValueError("depth must be a multiple of 4 (the 3D U-Net pools twice)")
        return v


class Config(_Frozen):
    profile: str = "custom"
    seed: int = Field(0, ge=0)
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    fl: FLConfig = Field(default_factory=FLConfig)
    secagg: SecAggConfig = Field(default_factory=SecAggConfig)
    dp: DPConfig = Field(default_factory=DPConfig)
    mia: MIAConfig = Field(default_factory=MIAConfig)
    diffusion: DiffusionConfig = Field(default_factory=DiffusionConfig)
    pretrain: PretrainConfig = Field(default_factory=PretrainConfig)
    volume: VolumeConfig = Field(default_factory=VolumeConfig)
    recipes: dict[str, Recipe] = Field(default_factory=dict)
    sites: tuple[SiteEntry, ...] = DEFAULT_ROSTER

    @model_validator(mode="after")
    def _roster(self):
        if not self.sites:
            raise ValueError("sites: the roster needs at least one [[sites]] entry")
        names = [s.name for s in self.sites]
        certs = [s.common_name for s in self.sites]
        for what, seen in (("name", names), ("cert_name", certs)):
            twice = sorted({x for x in seen if seen.count(x) > 1})
            if twice:
                raise ValueError(f"sites: {what} {', '.join(twice)} given twice")
        unknown = sorted(set(self.data.overrides) - set(names))
        if unknown:
            raise ValueError(
                f"data.overrides: unknown site(s) {unknown}; the roster's sites are {names}"
            )
        return self

    @property
    def site_names(self) -> list[str]:
        """The roster's site IDs, in order."""
        return [s.name for s in self.sites]

    @property
    def site_certs(self) -> dict[str, str]:
        """Each site's ID -> the CN its client certificate must carry."""
        return {s.name: s.common_name for s in self.sites}

    @model_validator(mode="after")
    def _recipes_apply(self):
        for method, recipe in self.recipes.items():
            if "device" in recipe.train:
                raise ValueError(
                    f"recipes.{method}.train.device: the device is one for the "
                    "whole run; set train.device (or --device)"
                )
            get_method(method)  # a recipe for an unknown method is a typo
            self.for_method(method)  # every recipe must give a valid config
        return self

    def shape_fingerprint(self) -> str:
        """What a site and the server must agree on for their tensors to fit, in words:
        the image size, the HU window and the U-Net (base width, groups, normalisation)."""
        d, m = self.data, self.model
        return (
            f"{d.image_size}px window {d.window[0]:g}..{d.window[1]:g} HU, U-Net base "
            f"{m.base} groups {m.groups} norm {m.norm}"
        )

    def for_method(self, method: str) -> Config:
        """The config ``method`` runs with: ``[train]`` and ``[dp]`` with ``[recipes.<method>]``
        applied (a recipe giving ``target_epsilon`` drops ``noise_multiplier`` and the other way
        round). Every layer that trains or accounts for a method (server, site, attacker, report)
        reads its settings from here."""
        recipe = self.recipes.get(method)
        if recipe is None:
            return self
        dp = {**self.dp.model_dump(), **recipe.dp}
        if "target_epsilon" in recipe.dp and "noise_multiplier" not in recipe.dp:
            dp["noise_multiplier"] = None
        if "noise_multiplier" in recipe.dp and "target_epsilon" not in recipe.dp:
            dp["target_epsilon"] = None
        problems = []
        for section, model, data in (
            ("train", TrainConfig, {**self.train.model_dump(), **recipe.train}),
            ("dp", DPConfig, dp),
        ):
            try:
                model.model_validate(data)
            except ValidationError as err:  # one line per field, with its full path
                for e in err.errors():
                    loc = ".".join(str(p) for p in e["loc"])
                    problems.append(
                        f"recipes.{method}.{section}{'.' + loc if loc else ''}: {e['msg']}"
                    )
        if problems:
            raise ValueError("; ".join(problems))
        train = TrainConfig.model_validate({**self.train.model_dump(), **recipe.train})
        dp_cfg = DPConfig.model_validate(dp)
        return self.model_copy(update={"train": train, "dp": dp_cfg, "recipes": {}})

    @model_validator(mode="after")
    def _secagg_threshold(self):
        if self.fl.min_fit_sites > len(self.sites):
            raise ValueError(f"fl.min_fit_sites must be <= the roster's {len(self.sites)} sites")
        if self.secagg.enabled and self.secagg.threshold > len(self.sites):
            raise ValueError(f"secagg.threshold must be <= the roster's {len(self.sites)} sites")
        k = self.secagg.neighbours
        if self.secagg.enabled and k is not None and self.secagg.threshold > k + 1:
            raise ValueError("secagg.threshold must be <= secagg.neighbours + 1")
        size = len(self.sites) if k is None or k >= len(self.sites) - 1 else k + 1
        if self.secagg.enabled and 2 * self.secagg.threshold <= size:
            raise ValueError(
                f"secagg.threshold must be a majority of a site's neighbourhood (> {size}/2): "
                "with fewer, a server showing two groups of sites different survivor sets could "
                "collect both kinds of share of one site and unmask its update alone "
                "(docs/threat-model.md)"
            )
        if self.secagg.enabled and self.fl.min_fit_sites < self.secagg.threshold:
            raise ValueError("fl.min_fit_sites must be >= secagg.threshold (fewer cannot unmask)")
        return self

    @model_validator(mode="after")
    def _seeds_differ(self):
        if self.data.attacker_seed is not None and self.data.attacker_seed == self.seed:
            raise ValueError("data.attacker_seed must differ from seed (the pool is public data)")
        return self

    @property
    def attacker_seed(self) -> int:
        s = self.data.attacker_seed
        return self.seed + ATTACKER_POOL_OFFSET if s is None else s

    @property
    def public_seed(self) -> int:
        """Seed of the public pretraining pool (never the benchmark's or the attacker's)."""
        s = self.pretrain.seed
        return self.seed + PUBLIC_POOL_OFFSET if s is None else s

    @property
    def diffusion_train_seed(self) -> int:
        """Seed of the procedural slices the diffusion model learns from (not the benchmark's)."""
        s = self.diffusion.train_seed
        return self.seed + DIFFUSION_TRAIN_OFFSET if s is None else s


def _format(err: ValidationError, source: str) -> str:
    lines = [f"invalid configuration in {source}:"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        msg = e["msg"].removeprefix("Value error, ")  # a validator's own message names its field
        lines.append(f"  {loc}: {msg}" if loc else f"  {msg}")
    return "\n".join(lines)


def parse_config(data: dict[str, Any], source: str = "<dict>") -> Config:
    try:
        return Config.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format(err, source)) from None


def load_config(path: str | Path) -> Config:
    """Load a TOML profile (or a run's resolved config.json). Raises ConfigError naming the file and the offending field."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    if path.suffix == ".json":  # a run's resolved config.json
        try:
            return parse_config(json.loads(path.read_text()), str(path))
        except json.JSONDecodeError as err:
            raise ConfigError(f"{path}: not valid JSON: {err}") from None
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML: {err}") from None
    return parse_config(data, str(path))


def available_profiles() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.toml"))


def load_profile(name: str) -> Config:
    path = CONFIG_DIR / f"{name}.toml"
    if not path.is_file():
        raise ConfigError(f"unknown profile {name!r}; available: {', '.join(available_profiles())}")
    return load_config(path)


def resolve_config(config: str | None, profile: str | None, seed: int | None = None) -> Config:
    """CLI helper: exactly one of --config PATH or --profile NAME (default profile: quick), and
    --seed (None keeps the profile's)."""
    if config and profile:
        raise ConfigError("give either --config or --profile, not both")
    cfg = load_config(config) if config else load_profile(profile or "quick")
    return cfg if seed is None else with_overrides(cfg, seed=seed)


def with_device(cfg: Config, device: str | None) -> Config:
    """``cfg`` with a command's ``--device`` as ``train.device`` (None keeps the config's); a
    malformed one is a ``DeviceError`` in one line. ``common.device.resolve_device`` then checks
    it against the machine."""
    if device is None:
        return cfg
    return with_overrides(cfg, **{"train.device": device_spec(device)})


def with_overrides(cfg: Config, **fields: Any) -> Config:
    """A copy of cfg with top-level or dotted fields replaced, re-validated. A missing parent is
    created (``recipes.dpsgd-pt.dp`` on a profile without that recipe); validation refuses one
    that names no field."""
    data = cfg.model_dump(mode="json")
    for key, value in fields.items():
        node = data
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return parse_config(data, "overrides")
