"""Named seed streams: every random draw of the project derives from the run's seed through one
of these, so two purposes never share a stream and a number never appears twice in the code.

The values are part of the benchmark's reproducibility contract (changing one changes every
result that depends on it): add new streams, never renumber old ones.
"""

from __future__ import annotations

import zlib

import numpy as np

# Offsets of whole datasets from the benchmark seed.
ATTACKER_POOL_OFFSET = 1_000_003  # the attacker's pool: the public generator, another seed
DIFFUSION_TRAIN_OFFSET = 2_000_003  # the procedural slices the diffusion model learns from
DIFFUSION_REPORT_OFFSET = 3_000_017  # the diffusion report's slices
PUBLIC_POOL_OFFSET = 4_000_037  # the public pretraining pool (``[pretrain]``)

# Stream tags mixed into a SeedSequence with the run seed.
DP_STREAM = 0x0D9  # DP-SGD: Poisson sampling and noise generators of a site's round
DIFFUSION_STREAM = 0xD1FF  # DDIM sampling noise of a slice (apart from its procedural stream)
CANDIDATES_STREAM = 0xA0D17  # the audit's draw of members and non-members

# The shadow models of the attacker: shadow i of a run, round r of a shadow.
SHADOW_MULTIPLIER = 1009
SHADOW_ROUND_MULTIPLIER = 100_003

SPLITS = ("train", "holdout", "test", "attacker")
SPLIT_CODE = {name: i for i, name in enumerate(SPLITS)}


def slice_rng(seed: int, site_index: int, split: str, index: int) -> np.random.Generator:
    """The generator of one procedural slice: ``SeedSequence([seed, site, split, index])``."""
    return np.random.Generator(
        np.random.PCG64(np.random.SeedSequence([seed, site_index, SPLIT_CODE[split], index]))
    )


def diffusion_slice_seed(seed: int, site_index: int, split_code: int, index: int) -> int:
    """The torch seed of one slice's diffusion sampling."""
    ss = np.random.SeedSequence([seed, site_index, split_code, index, DIFFUSION_STREAM])
    return int(ss.generate_state(1, np.uint64)[0] >> 1)


def site_round_seed(seed: int, rnd: int, site: str) -> int:
    """A per-(run seed, round, site) training seed, stable across processes and restarts."""
    return int(np.random.SeedSequence([seed, rnd, zlib.crc32(site.encode())]).generate_state(1)[0])


def dp_generator_seeds(seed: int) -> tuple[int, int]:
    """(sampling, noise) torch seeds of one DP-SGD round."""
    seeds = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, DP_STREAM]).generate_state(2, np.uint64)
    return int(seeds[0]) >> 1, int(seeds[1]) >> 1


def candidates_rng(seed: int) -> np.random.Generator:
    """The audit's draw of candidates."""
    return np.random.default_rng([seed, CANDIDATES_STREAM])


def shadow_seed(seed: int, shadow: int) -> int:
    return seed * SHADOW_MULTIPLIER + shadow


def shadow_round_seed(seed: int, rnd: int) -> int:
    return seed * SHADOW_ROUND_MULTIPLIER + rnd
