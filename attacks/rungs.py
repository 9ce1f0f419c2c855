"""The rungs of the attack ladder as one registry: a name, what the rung needs, one score function.

Choosing the strongest rung on shadow data (each shadow in turn plays the target,
``attacks.ladder.select_on_shadows``), scoring the real target's candidates
(``attacks.ladder.run_ladder``), the auditor's online rungs (``attacks.auditor``), the referee's
choice of the quoted rung (``bench/audit.py``), the report's columns (``bench/report.py``) and
the time breakdown (``bench/perf/time_bench.py``) all read this table, and selection and final
scoring call the same ``score`` on the same kind of ``Evidence``: a rung cannot be scored one way
when it is chosen and another way when it is quoted.

A new rung: a function of ``Evidence`` (higher = member) and its ``Rung`` row below.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from attacks.calibrated import lira_offline, lira_online, rmia_scores
from attacks.features import IDX, image_features


@dataclass
class Evidence:
    """What every rung scores from, for one target on N slices (``*_t`` the target's signals,
    (V, N) or (N,); ``*_r`` the references', (S, V, N) or (S, N); ``*_z`` on RMIA's population
    samples). ``out`` (S, N): which references did not train on each slice (None: none did);
    ``inside`` (S, N): which did (the auditor's online rungs). The learned rungs train on the
    references' answers on their own pool slices (``train_probs``, one (P, H, W) array per
    reference, their ``train_masks``, and ``train_members`` (S, P))."""

    masks: np.ndarray  # (N, H, W) true masks of the slices scored
    probs: np.ndarray  # (N, H, W) the target's answers on them (the identity view)
    loss: np.ndarray  # (V, N) the loss rung's score per view
    lira_t: np.ndarray
    lira_r: np.ndarray
    rmia_t: np.ndarray
    rmia_r: np.ndarray
    rmia_tz: np.ndarray
    rmia_rz: np.ndarray
    train_probs: Sequence[np.ndarray] = ()
    train_masks: np.ndarray | None = None
    train_members: np.ndarray | None = None
    images: np.ndarray | None = None  # (N, H, W) HU: the blind baseline's only input
    out: np.ndarray | None = None
    inside: np.ndarray | None = None
    gamma: float = 1.0  # RMIA's gamma
    a: float | None = None  # RMIA's offline a (None: calibrate it first, select_on_shadows)
    classifier: str = "auto"
    seed: int = 0

    @functools.cached_property
    def features(self) -> np.ndarray:
        return image_features(self.probs, self.masks)

    @functools.cached_property
    def train_features(self) -> np.ndarray:
        return np.concatenate([image_features(p, self.train_masks) for p in self.train_probs])

    def rmia_kwargs(self) -> dict:
        """``rmia_scores``'s arguments but ``a`` (offline: the OUT references)."""
        return {
            "target_x": self.rmia_t,
            "reference_x": self.rmia_r,
            "use_x": self.out,
            "target_z": self.rmia_tz,
            "reference_z": self.rmia_rz,
            "gamma": self.gamma,
        }


@dataclass(frozen=True)
class Rung:
    name: str
    summary: str
    score: Callable[[Evidence], np.ndarray]
    queries: bool = True  # asks the target model (the blind baseline does not)
    shadows: bool = True  # needs shadow models (as references or as training data)
    auditor: bool = False  # the auditor's online rung (it knows which shadows trained on what)
    fallback: int | None = None  # with one shadow nothing is measured: lowest rank is quoted


BLIND_WEIGHTS = np.array([1.0, 0.25, 0.25])  # tumor area, mean HU, HU std (see blind_scores)


def blind_scores(cand_images: np.ndarray, cand_masks: np.ndarray) -> np.ndarray:
    """A fixed score from the candidate alone (no model, no labels, nothing fitted).

    A weighted sum of z-scored statistics (z over the candidates; no labels): tumor area
    (weight 1, the main driver of a slice's loss, so the confounder that matters most for the
    loss-based rungs), mean HU and HU standard deviation (scanner offset and noise, weight 0.25
    each). Members and non-members drawn from the same site distributions give AUC ≈ 0.5; a split
    that differs in prevalence or tumor size (or, more weakly, scanner) moves it away from 0.5.
    A fixed score only sees a bias along its own statistics: it is a tripwire, not a proof that
    the split is unbiased.
    """
    images = np.asarray(cand_images, dtype=np.float64)
    masks = np.asarray(cand_masks)
    if images.ndim != 3 or images.shape != masks.shape:
        raise ValueError(f"expected (N, H, W) images and masks, got {images.shape}, {masks.shape}")
    n = len(images)
    stats = np.stack(
        [
            masks.reshape(n, -1).mean(axis=1),
            images.reshape(n, -1).mean(axis=1),
            images.reshape(n, -1).std(axis=1),
        ],
        axis=1,
    )
    sd = stats.std(axis=0)
    z = (stats - stats.mean(axis=0)) / np.where(sd > 0, sd, 1.0)
    return z @ BLIND_WEIGHTS


def _classifier(kind: str, n_rows: int):
    from sklearn.ensemble import GradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if kind == "auto":
        kind = "gb" if n_rows >= 200 else "lr"
    if kind == "lr":
        return make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000))
    if kind == "gb":
        return GradientBoostingClassifier(
            n_estimators=200, max_depth=3, subsample=0.8, learning_rate=0.05, random_state=0
        )
    raise ValueError(f"unknown classifier {kind!r}; use 'auto', 'lr' or 'gb'")


def shadow_from_features(
    train_x: np.ndarray, train_y: np.ndarray, target_x: np.ndarray, classifier: str
) -> np.ndarray:
    if train_y.all() or not train_y.any():
        raise ValueError("the shadow training set needs both members and non-members")
    clf = _classifier(classifier, len(train_y))
    clf.fit(train_x, train_y)
    return clf.predict_proba(target_x)[:, 1]


def _blind(ev: Evidence) -> np.ndarray:
    return blind_scores(ev.images, ev.masks)


def _shadow(ev: Evidence) -> np.ndarray:
    return shadow_from_features(
        ev.train_features, np.ravel(ev.train_members), ev.features, ev.classifier
    )


def _map(ev: Evidence) -> np.ndarray:
    import torch

    from attacks.maps import map_attack_scores, map_inputs

    train = torch.cat([map_inputs(p, ev.train_masks) for p in ev.train_probs])
    return map_attack_scores(
        train, np.ravel(ev.train_members), map_inputs(ev.probs, ev.masks), ev.seed
    )


def _rmia(ev: Evidence) -> np.ndarray:
    if ev.a is None:
        raise ValueError("rmia: the offline a is not set (calibrate it on shadow data first)")
    return rmia_scores(**ev.rmia_kwargs(), a=ev.a)


def _rmia_online(ev: Evidence) -> np.ndarray:
    return rmia_scores(ev.rmia_t, ev.rmia_r, ev.rmia_tz, ev.rmia_rz, gamma=ev.gamma, a=None)


RUNGS: tuple[Rung, ...] = (
    Rung(
        "blind",
        "a fixed function of the candidate's image and mask: the split's bias check",
        _blind,
        queries=False,
        shadows=False,
    ),
    Rung(
        "loss",
        "Yeom et al.: minus the per-image training loss",
        lambda ev: ev.loss.mean(axis=0),
        shadows=False,
        fallback=4,
    ),
    Rung(
        "shadow",
        "Shokri et al.: a classifier on per-image features, trained on the shadows",
        _shadow,
        fallback=3,
    ),
    Rung(
        "map", "He et al. / Chobola et al.: a small CNN on the per-pixel loss map", _map, fallback=2
    ),
    Rung(
        "lira",
        "offline LiRA with a fixed variance",
        lambda ev: lira_offline(ev.lira_t, ev.lira_r, ev.out),
        fallback=0,
    ),
    Rung("rmia", "offline RMIA against population samples from the pool", _rmia, fallback=1),
    Rung(
        "lira_online",
        "online LiRA against the auditor's IN/OUT shadows",
        lambda ev: lira_online(ev.lira_t, ev.lira_r, ev.inside),
        auditor=True,
    ),
    Rung(
        "rmia_online",
        "online RMIA (Pr(x) over IN and OUT shadows alike)",
        _rmia_online,
        auditor=True,
    ),
)
BY_NAME: dict[str, Rung] = {r.name: r for r in RUNGS}
ORDER: tuple[str, ...] = tuple(r.name for r in RUNGS)  # the report's column order
LADDER: tuple[str, ...] = tuple(r.name for r in RUNGS if not r.auditor)  # the attacker's
QUERY_RUNGS: tuple[str, ...] = tuple(r for r in LADDER if BY_NAME[r].queries)  # chosen among
AUDITOR_RUNGS: tuple[str, ...] = tuple(r.name for r in RUNGS if r.auditor)
FALLBACK: str = min((r for r in RUNGS if r.fallback is not None), key=lambda r: r.fallback).name


def loss_of(features: np.ndarray) -> np.ndarray:
    """The loss rung's per-view score from per-image features (``attacks.features``)."""
    return -features[:, IDX["seg_loss"]]
