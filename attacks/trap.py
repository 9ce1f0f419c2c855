"""Trap weights: a crafted global model the server sends every site alike, built so that one
site's update gives back 3x3 patches of its training slices.

The idea is Boenisch et al.'s trap weights and Fowl et al.'s imprint bins ("Robbing the Fed"),
adapted to the project's U-Net, which has no linear layer but starts with a 3x3 convolution ->
BatchNorm -> ReLU block (``enc1``) whose weights, scale, shift and running statistics the server
sets:

- every trap channel of the first convolution gets the same kernel ``w`` (a random direction:
  its response to a 3x3 patch has few ties) and BatchNorm scale ``s`` and shift ``-s * k_c``,
  with thresholds ``k_1 > k_2 > ...`` chosen on PUBLIC slices so that channel c fires (in the
  site's own batch normalisation) on about c positions of a batch: nested sets, whose
  differences (the *bins*) hold about one position each;
- the second convolution gets the same outgoing weights for every input channel, so the error
  reaching channel c at a position is the same for every channel that fires there;
- one channel (``STAT``) is the centre pixel with a shift that never fires; with the running
  statistics set to zero, the update's running mean and variance give the site's pixel mean
  and variance, and the trap channels' the exact batch standard deviation of their response.

From one plain-SGD step (the update is ``lr`` times the gradient) BatchNorm's backward gives,
for a bin holding one position with patch ``P``:
``P = dW_bin / dbeta_bin * sigma / s + mean + (dgamma_bin / dbeta_bin) * Cov w / sigma``, where
``dW_bin``, ``dbeta_bin``, ``dgamma_bin`` are differences of consecutive channels' gradients,
``sigma`` the response's batch std, ``mean`` the mean patch and ``Cov`` the patch covariance.
Two approximations: the mean patch is the pixel mean in every slot (zero padding makes the
border slots differ) and ``Cov`` is the public slices' covariance scaled to the site's pixel
variance. Everything else in the model is the global model the server would have sent.

What it can reach, by construction: one 3x3 patch per bin, at most ``base - 1`` patches of the
site's batch per round (23 at base 24: 207 of a 64x64 slice's 4096 pixels), never a whole slice;
deeper layers could trap more and are not built here. What it obtains per configuration is
measured by ``python -m bench.trap`` (tests/unit/test_trap.py): one site's update in the clear
gives back every one-position bin; the sum of the sites (secure aggregation: bins then mix
positions of sites normalised with their own statistics), several local steps or Adam (the
update is no longer one gradient) and per-site norm layers the server does not set (FedBN)
stop it but for a bin holding one position over all sites; the site's own check of the model
it is sent (``common.modelcheck``) refuses it, and the variant built to pass that check
(``offset``, ``cosine``: dense units, kernels apart) gets bins that mix many positions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from attacks.inversion import RECOVERED_PSNR, psnr  # a patch's PSNR on the [0, 1] window

CONV, NORM, NEXT = "enc1.0.weight", "enc1.1", "enc1.3.weight"
# A small norm scale and shift: the next norm layer undoes the scale in the forward pass and
# divides the error by it, so their one-step update is 1/NORM_SCALE^2 larger relative to them
# and stands out of float32 at the profile's lr (at scale 1 a step of lr 1e-3 is lost in it).
NORM_SCALE = 0.01
# The same for the trap kernel (its gradient grows as 1/scale while it shrinks), down to where
# its response's variance on public slices is EPS_MARGIN x BatchNorm's eps (fixed by reasoning
# on public data, not tuned on a site's).
EPS_MARGIN = 100.0
STAT = 0  # the channel that measures the site's pixels and never fires
BN_EPS, BN_MOMENTUM = 1e-5, 0.1  # torch's BatchNorm defaults, which build_model keeps
NEVER = 100.0  # the stat channel's shift: x_hat > 100 never happens


@dataclass(frozen=True)
class Trap:
    """What the server keeps of the model it crafted (all public or its own choice)."""

    kernel: np.ndarray  # (9,) the trap channels' shared 3x3 kernel
    kernels: np.ndarray  # (n, 9) each trap channel's kernel: ``kernel``, or near it (``cosine``)
    thresholds: np.ndarray  # (n,) descending: channel STAT+1+j fires where x_hat > thresholds[j]
    cov: np.ndarray  # (9, 9) the public slices' 3x3 patch covariance
    var_centre: float  # the public slices' pixel variance (cov's centre entry)


def patches(images: np.ndarray) -> np.ndarray:
    """Every 3x3 patch (zero padded, as the convolution sees it) of (N, H, W) [0, 1] images:
    (N, H*W, 9), row-major positions."""
    x = torch.from_numpy(np.asarray(images, np.float32)).unsqueeze(1)
    return F.unfold(x, 3, padding=1).transpose(1, 2).double().numpy()


def _xhat(p: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """The kernel's normalised response x_hat per position, as the site's BatchNorm computes it
    in training over its whole batch, given as the batch's patches (positions, 9)."""
    z = p @ kernel
    return (z - z.mean()) / np.sqrt(z.var() + BN_EPS)


def craft(
    params: Mapping[str, np.ndarray],
    public: np.ndarray,
    batch_slices: int = 1,
    seed: int = 0,
    offset: int = 0,
    cosine: float = 1.0,
) -> tuple[dict[str, np.ndarray], Trap]:
    """The crafted global model (``params`` with enc1's first block replaced) and its ``Trap``.

    ``public``: (N, H, W) public slices on the [0, 1] window (the attacker pool); thresholds
    are set on batches of ``batch_slices`` of them, the sites' batch size (public orders), so
    that channel c fires on about ``offset`` + c positions of a site's batch. ``cosine`` < 1:
    each trap channel's kernel is turned away from the shared one to that cosine (a random
    direction per channel). Both make an attacker who evades the site's check
    (``common.modelcheck``: units firing on at least 1%, kernels no closer than its limit)."""
    if not 0 < cosine <= 1 or offset < 0:
        raise ValueError(f"cosine must be in (0, 1] and offset >= 0, got {cosine}, {offset}")
    weight = np.asarray(params[CONV])
    b = weight.shape[0]
    if weight.shape[1:] != (1, 3, 3) or b < 3:
        raise ValueError(f"the trap needs enc1's first conv (b, 1, 3, 3), b >= 3: {weight.shape}")
    public = np.asarray(public, np.float64)
    if public.ndim != 3 or len(public) < batch_slices:
        raise ValueError(f"public slices must be (N, H, W) with N >= {batch_slices}")
    rng = np.random.default_rng(seed)
    kernel = rng.standard_normal(9)
    p = patches(public).reshape(-1, 9)
    cov = np.cov(p.T)
    kernel *= np.sqrt(EPS_MARGIN * BN_EPS / (kernel @ cov @ kernel))
    n = b - 1
    turn = rng.standard_normal((n, 9))
    turn -= np.outer(turn @ kernel / (kernel @ kernel), kernel)  # orthogonal to the kernel
    turn *= np.linalg.norm(kernel) / np.linalg.norm(turn, axis=1, keepdims=True)
    angle = np.arccos(cosine)
    kernels = np.cos(angle) * kernel + np.sin(angle) * turn
    k = len(public) // batch_slices
    batches = p[: k * batch_slices * public.shape[1] * public.shape[2]].reshape(k, -1, 9)

    # the public batches' x_hat, ranked: the threshold for "about c positions" is the mean of
    # the (c + 1/2)-th largest response over batches
    def ranked(w, ranks):  # kernel w's x_hat at ranks [first, last] (1 = largest)
        return np.stack([-np.sort(-_xhat(x, w))[: ranks[-1]] for x in batches])[:, ranks[0] - 1 :]

    if cosine == 1.0:  # one kernel: channel j's threshold between ranks offset + j and + j + 1
        r = ranked(kernel, [offset + 1, offset + n + 1])
        thresholds = ((r[:, :n] + r[:, 1:]) / 2).mean(0)
    else:  # each channel its own kernel, its own threshold at the same rank
        thresholds = np.array(
            [ranked(w, [offset + j + 1, offset + j + 2]).mean() for j, w in enumerate(kernels)]
        )
    out = {name: np.array(v, copy=True) for name, v in params.items()}
    conv = np.zeros_like(weight)
    conv[STAT, 0, 1, 1] = 1.0
    conv[STAT + 1 :, 0] = kernels.reshape(n, 3, 3)
    out[CONV] = conv
    scale = np.full(b, NORM_SCALE, weight.dtype)
    scale[STAT] = 1.0
    out[f"{NORM}.weight"] = scale
    shift = np.empty(b, weight.dtype)
    shift[STAT] = -NEVER
    shift[STAT + 1 :] = -NORM_SCALE * thresholds
    out[f"{NORM}.bias"] = shift
    # zero running statistics: the site's update then carries 0.1 x its batch's mean and
    # variance at full float32 precision (next to 0.9 x 1 it would lose them)
    out[f"{NORM}.running_mean"] = np.zeros(b, weight.dtype)
    out[f"{NORM}.running_var"] = np.zeros(b, weight.dtype)
    nxt = np.asarray(params[NEXT])
    out[NEXT] = np.repeat(nxt[:, :1], b, axis=1)  # the same outgoing weights for every channel
    return out, Trap(kernel, kernels, thresholds, cov, float(cov[4, 4]))


def recover(
    trap: Trap,
    sent: Mapping[str, np.ndarray],
    held: Mapping[str, np.ndarray],
    lr: float,
    positions: int,
) -> np.ndarray:
    """The server's estimate of each bin's patch, (n, 9) on the [0, 1] window, from what it sent
    and what it holds after one plain-SGD step of ``lr`` over a batch of ``positions`` pixels:
    one site's weights (no secure aggregation) or the sites' mean."""

    def grad(key):
        return (np.asarray(sent[key], np.float64) - np.asarray(held[key], np.float64)) / lr

    def batch_stat(key):
        new, old = np.asarray(held[key], np.float64), np.asarray(sent[key], np.float64)
        return (new - (1 - BN_MOMENTUM) * old) / BN_MOMENTUM

    d_w = grad(CONV).reshape(len(trap.thresholds) + 1, 9)
    d_gamma, d_beta = grad(f"{NORM}.weight"), grad(f"{NORM}.bias")
    mean = batch_stat(f"{NORM}.running_mean")
    var = batch_stat(f"{NORM}.running_var") * (positions - 1) / positions  # unbiased -> biased
    sigma = float(np.sqrt(max(np.mean(var[STAT + 1 :]), 0.0) + BN_EPS))
    pixel_mean, pixel_var = mean[STAT], max(var[STAT], 0.0)
    v = trap.cov @ trap.kernel * (pixel_var / trap.var_centre) / sigma
    traps = slice(STAT + 1, None)
    s_w = sigma / NORM_SCALE * d_w[traps]
    prev = lambda a: np.concatenate([np.zeros_like(a[:1]), a[:-1]])  # noqa: E731
    bin_w = s_w - prev(s_w)
    bin_beta = d_beta[traps] - prev(d_beta[traps])
    bin_gamma = d_gamma[traps] - prev(d_gamma[traps])
    with np.errstate(divide="ignore", invalid="ignore"):
        est = bin_w / bin_beta[:, None] + pixel_mean + (bin_gamma / bin_beta)[:, None] * v
    return np.clip(np.nan_to_num(est, nan=pixel_mean), 0.0, 1.0)


def true_bins(trap: Trap, batches: Sequence[np.ndarray]) -> list[list[np.ndarray]]:
    """For scoring (the benchmark knows the slices): each bin's true patches, over the sites'
    batches (each (B, H, W) on the [0, 1] window, normalised on its own as at its site). Bin j
    is what trap channel j's gradient has beyond channel j-1's: the positions where j fires and
    j-1 does not, and, with kernels that differ (``cosine`` < 1), those where j-1 fires and j
    does not (they enter with the opposite sign: such a bin is a mix)."""
    return _bins(trap, [patches(batch).reshape(-1, 9) for batch in batches])


def _bins(trap: Trap, batches: Sequence[np.ndarray]) -> list[list[np.ndarray]]:
    """``true_bins`` of batches given as their patches (positions, 9)."""
    bins: list[list[np.ndarray]] = [[] for _ in trap.thresholds]
    for p in batches:
        fired = [_xhat(p, k) > t for k, t in zip(trap.kernels, trap.thresholds, strict=True)]
        before = np.zeros(len(p), bool)
        for j, now in enumerate(fired):
            bins[j].extend(p[now & ~before])
            bins[j].extend(p[before & ~now])
            before = now
    return bins


def public_guess(trap: Trap, public: np.ndarray, batch_slices: int = 1) -> np.ndarray:
    """What the server knows of each bin without any view: the mean public patch that falls in
    it (public batches of ``batch_slices`` slices), (n, 9). The baseline an estimate must beat:
    the top responses of one kernel look alike, so a bin's patches resemble each other."""
    n = len(public) // batch_slices
    p = patches(public[: n * batch_slices])
    overall = p.reshape(-1, 9).mean(0)
    batches = p.reshape(n, -1, 9)
    return np.stack([np.mean(b, 0) if b else overall for b in _bins(trap, batches)])


def score(estimates: np.ndarray, bins: list[list[np.ndarray]], pixels: int) -> dict:
    """Each bin's estimate against its true patches. A bin is recovered when it holds exactly
    one position, that patch is not flat (its standard deviation is at least 10^(-threshold/20):
    no constant patch, a guess that needs no view, comes within the threshold of it) and the
    estimate matches it at ``RECOVERED_PSNR`` dB or above. A bin of several positions gives a
    mix and is never counted. ``pixels``: how many pixels the view covers (the fraction
    recovered, 9 pixels per recovered bin over it, is an upper bound: patches can overlap)."""
    flat_std = 10 ** (-RECOVERED_PSNR / 20)
    single = [(e, t[0]) for e, t in zip(estimates, bins, strict=True) if len(t) == 1]
    shaped = [psnr(e, t) for e, t in single if np.std(t) >= flat_std]
    recovered = sum(p >= RECOVERED_PSNR for p in shaped)
    return {
        "bins": len(bins),
        "bins_filled": sum(len(t) > 0 for t in bins),
        "bins_single": len(single),
        "bins_single_shaped": len(shaped),
        "recovered": recovered,
        "psnr_shaped_median": float(np.median(shaped)) if shaped else None,
        "pixel_fraction": min(1.0, 9 * recovered / pixels),
        "threshold_db": RECOVERED_PSNR,
    }
