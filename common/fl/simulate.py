"""A federation in one process: the sites' local training and the method's own aggregation,
without the network, the masks of secure aggregation or restarts.

The attacker's shadow federations use it (``attacks.ladder``): a shadow trained the way the target
was (five non-IID sites, the target's method, rounds, local epochs, DP-SGD per site) is a far
better reference model than one trained centrally on pooled data. It drives the method's
``Strategy`` (``common/fl/strategy.py``) exactly as the gRPC server does: ``setup``, then per
round ``configure_fit`` (which sites, with what ``FitInstructions``) and ``payload_down``, the
sites' training by those instructions (``train_local``, ``DPTrainer`` or distributed DP's noisy
sum, with the same per-(seed, round, site) seeds; SCAFFOLD's correction with each site's own
control variate) and ``aggregate_fit`` on the example-weighted sum of what the sites upload
(the shared weights and the strategy's ``payload_up`` extras), computed as the real
aggregation layer computes it (secure aggregation's quantised sum, or the plain sum of float32
uploads): with the same thread count a simulated run is the federation's, bit for bit. What
it leaves out: timeouts and dropouts, secure aggregation's masks (they cancel in the sum), and a
real site's secret DP randomness (a simulated site draws what a real site draws under
``dp.randomness = 'seeded-simulation'``, from the public seed: the same ``NoiseSource``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from common.fl.instructions import FitInstructions, TrainMode
from common.fl.strategy import Strategy, strategy_for, sum_weighted_updates
from common.methods import get_method
from common.model import buffer_keys, float_keys, get_params, model_for, norm_keys, set_params
from common.progress import progress
from common.training.scaffold import ControlVariates

log = logging.getLogger(__name__)


@dataclass
class RoundView:
    """One round as the server sees it: the global weights it sent (``sent``), every site's
    upload in the clear (``uploads``, site -> weights; what a server without secure aggregation
    holds; empty for distributed DP, whose sites upload only a noisy ring share), and what the
    aggregation layer gives it (``summed``, the example-weighted sum, or distributed DP's
    decoded noisy gradient sum; ``total``, the sum of the weights)."""

    rnd: int
    sent: dict[str, np.ndarray]
    uploads: dict[str, dict[str, np.ndarray]]
    weights: dict[str, float]
    summed: dict[str, np.ndarray]
    total: float


Observer = Callable[[RoundView], None]


@dataclass
class SimulatedFederation:
    """What a simulated run leaves: the global shared weights and every site's full model."""

    shared_keys: list[str]
    global_params: dict[str, np.ndarray]  # the final average (local keys: their mean over sites)
    site_params: dict[str, dict[str, np.ndarray]]  # site -> final shared weights + its own local
    metrics: dict[str, dict] = field(default_factory=dict)  # site -> last round's metrics
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))  # it trained on

    def model(self, cfg, method: str, site: str | None = None) -> nn.Module:
        """The released model, on the device the federation trained on: the global one, or
        (``site`` given) that site's own model (FedBN: the shared weights and the site's
        normalisation layers)."""
        model = model_for(cfg, method).to(self.device)
        set_params(model, self.global_params if site is None else self.site_params[site])
        return model


def weighted_mean(
    params: Mapping[str, Mapping[str, np.ndarray]], weights: Mapping[str, float], keys: list[str]
) -> dict[str, np.ndarray]:
    """The example-weighted mean of ``keys`` over sites, summed in float64 in sorted site order
    and cast back to each key's dtype."""
    summed, total = weighted_sum(params, weights, keys)
    first = params[sorted(params)[0]]
    return {k: (summed[k] / total).astype(np.asarray(first[k]).dtype) for k in keys}


def simulate_federation(
    cfg,
    method: str,
    sites: Mapping[str, object],
    *,
    seed: int,
    device: torch.device | None = None,
    desc: str | None = None,
    observe: Observer | None = None,
    initial: Mapping[str, np.ndarray] | None = None,
):
    """Run the rounds of ``method`` (``cfg.for_method(method)``) over ``sites`` (site -> dataset of
    (image (1, H, W), mask (1, H, W)) items) on ``device`` (default CPU) and return a
    ``SimulatedFederation``. ``observe``: called once a round with what the aggregation layer
    hands the server (``RoundView``; the inversion attack's view, ``bench/threats.py``).
    ``initial``: the weights round 1 starts from (default: the method's initial model, after
    its public pretraining if it has one).

    Deterministic on CPU for a ``seed`` (it replaces ``cfg.seed`` for the sites' seeds and the
    site sampling). A DP method trains every site with DP-SGD (its own σ for its size and its
    own accountant, as at a real site); a site whose budget (``dp.max_epsilon``) is exhausted
    stops contributing, as a real site declines. ``desc``: report the rounds' progress under
    that name (``common.progress``).
    """
    from common.training.pretrain import initial_model

    spec = get_method(method)
    cfg = cfg.for_method(method)  # the method's own recipe, as at the server and the sites
    device = torch.device(device or "cpu")
    names = sorted(s for s, ds in sites.items() if len(ds) > 0)
    if not names:
        raise ValueError("a simulated federation needs at least one site with data")
    # no site ever drops out here: a federation of fewer sites than min_fit_sites (a reference
    # row's single site) trains them all
    fl = cfg.fl.model_copy(update={"min_fit_sites": min(cfg.fl.min_fit_sites, len(names))})
    strategy = strategy_for(cfg.model_copy(update={"seed": seed, "fl": fl}), method)
    if initial is None:
        initial = get_params(initial_model(cfg, method, device))  # public pretraining, if any
    models = {s: model_for(cfg, method).to(device) for s in names}
    for m in models.values():
        set_params(m, initial)
    first = models[names[0]]
    shared = strategy.shared_keys(float_keys(first), norm_keys(first))
    buffers = buffer_keys(first) & set(shared)
    strategy.setup(initial, shared, buffers, cfg)
    bar = progress(cfg.train.rounds, desc, "round") if desc else None
    if strategy.ring_plan() is not None:
        noise = {s: _seeded_noise(seed, method, s) for s in names}
        return _simulate_ddp(
            cfg, strategy, sites, names, first, shared, noise, device, bar, observe
        )
    global_params = {k: initial[k] for k in shared}
    dp = _DPSites(cfg, models, sites, seed, method) if spec.dp else None
    metrics: dict[str, dict] = {}
    control: dict[str, dict[str, np.ndarray]] = {s: {} for s in names}  # SCAFFOLD's c_i per site
    try:
        for rnd in range(1, cfg.train.rounds + 1):
            done: dict[str, dict[str, np.ndarray]] = {}
            round_metrics: dict[str, dict] = {}
            orders_of = strategy.configure_fit(rnd, names)
            down = strategy.payload_down(rnd)  # extra tensors with the weights
            for s, orders in orders_of.items():
                set_params(models[s], global_params, strict=False)
                cv = None
                if orders.control_variates:  # SCAFFOLD: the server's c and the site's own c_i
                    cv = ControlVariates(models[s], down, control[s])
                m = _train_site(cfg, models[s], sites[s], orders, global_params, dp, s, cv)
                if m is None:  # DP budget exhausted: the site declines from now on
                    continue
                metrics[s] = round_metrics[s] = m
                done[s] = get_params(models[s])
                if cv is not None:
                    control[s], delta = cv.finish()
                    done[s].update(delta)
            if not done:
                log.info("simulated federation: no site left in round %d; stopping", rnd)
                break
            weights = {s: len(sites[s]) for s in done}
            summed, total = aggregation_layer(
                cfg,
                done,
                weights,
                strategy.upload_template(global_params),
                exact=spec.kind != "federated",
            )
            if observe is not None:
                sent = dict(global_params)
                observe(RoundView(rnd, sent, done, dict(weights), summed, total))
            global_params = strategy.aggregate_fit(
                rnd, summed, total, round_metrics, current=global_params
            )
            if bar is not None:
                bar.update()
    finally:
        if dp is not None:
            dp.close()
        if bar is not None:
            bar.close()
    final = {s: {**get_params(models[s]), **global_params} for s in names}
    all_float = float_keys(first)
    averaged = weighted_mean(final, {s: float(len(sites[s])) for s in names}, all_float)
    return SimulatedFederation(shared, averaged, final, metrics, device)


def _train_site(
    cfg, model, dataset, orders: FitInstructions, global_params, dp, site: str, grad_hook=None
):
    """One site's round by its instructions; its metrics, or None when its DP budget is spent.
    ``grad_hook``: SCAFFOLD's correction (``ControlVariates``), if the instructions ask for it."""
    from torch.utils.data import DataLoader

    from common.training.local import train_local

    if orders.mode is TrainMode.DP:
        return dp.train(site, orders, global_params, grad_hook)
    if orders.mode is not TrainMode.PLAIN:
        raise ValueError(f"site {site}: a {orders.mode.value} round in a weights federation")
    loader = DataLoader(dataset, batch_size=orders.batch_size, shuffle=True)
    return train_local(
        model,
        loader,
        epochs=orders.local_epochs,
        lr=orders.lr,
        seed=orders.seed,
        proximal_mu=orders.proximal_mu,
        global_params=global_params,
        optimizer=cfg.train.optimizer,
        grad_hook=grad_hook,
    )


def weighted_sum(
    params: Mapping[str, Mapping[str, np.ndarray]], weights: Mapping[str, float], keys: list[str]
) -> tuple[dict[str, np.ndarray], float]:
    """The example-weighted float64 sum of ``keys`` over sites, in sorted site order, and the
    total weight: what a strategy receives (in the real system, from secure aggregation)."""
    sites = sorted(params)
    out = {}
    for k in keys:
        acc = np.zeros(np.shape(params[sites[0]][k]), np.float64)
        for s in sites:
            acc += np.asarray(params[s][k], np.float64) * float(weights[s])
        out[k] = acc
    return out, float(sum(weights[s] for s in sites))


def aggregation_layer(
    cfg,
    uploads: Mapping[str, Mapping[str, np.ndarray]],
    weights: Mapping[str, int],
    template: Mapping[str, np.ndarray],
    exact: bool = False,
) -> tuple[dict[str, np.ndarray], float]:
    """(the sum of n_k * upload_k, the sum of n_k) as the real aggregation layer computes it,
    bit for bit: with secure aggregation (``cfg.secagg.enabled``) each site's vector quantised at
    the round's scale (no site dropping out) and the integer sum dequantised, else the float64 sum
    in sorted site order of each site's float32 n_k * upload_k (``weighted_contribution``). A
    reference row (``exact``: a single model trained in one place) takes the float64 sum."""
    from common.secagg import dequantize, flatten, quantization_scale, quantize, unflatten
    from common.training.local import weighted_contribution

    keys = sorted(template)
    if exact:
        return weighted_sum(uploads, {s: float(n) for s, n in weights.items()}, keys)
    if not cfg.secagg.enabled:
        return sum_weighted_updates(
            {
                s: (weighted_contribution({k: u[k] for k in keys}, weights[s]), weights[s])
                for s, u in uploads.items()
            }
        )
    total = float(sum(weights.values()))
    clip = cfg.secagg.clip
    scale = quantization_scale(clip, total, max_sites=len(uploads))
    ring = np.zeros(sum(np.size(template[k]) for k in keys), np.uint32)
    for s in sorted(uploads):
        n = weights[s]
        ring += quantize(flatten(uploads[s], keys) * n, n, clip, scale)[0]  # wraps mod 2**32
    return unflatten(dequantize(ring, scale), dict(template), keys), total


def _seeded_noise(seed: int, method: str, site: str):
    """A simulated site's DP randomness: the ``NoiseSource`` a real site uses under
    ``dp.randomness = 'seeded-simulation'`` (a public function of the run's seed, the site and the
    method), first attempt of every round; so a simulated DP run is the seeded federation's."""
    from common.training.dp.randomness import NoiseSource

    return NoiseSource.seeded(seed, site, method)


def _simulate_ddp(
    cfg, strategy: Strategy, sites, names, model, shared, noise, device, bar=None, observe=None
) -> SimulatedFederation:
    """Distributed DP-SGD in one process: each round, every site's noisy integer sum (the same
    ``DDPSite.noisy_sum`` and seeds as a real site), their sum modulo 2**32 (what secure
    aggregation reveals), and the strategy's step."""
    from common.secagg import unflatten
    from common.training.ddp import DDPSite, from_ring_sum

    params = get_params(model)
    plan = strategy.ring_plan()
    site = DDPSite(model)
    total_n = float(sum(len(sites[s]) for s in names))
    try:
        for rnd in range(1, cfg.train.rounds + 1):
            ring = np.zeros(plan.dim, np.uint32)
            for s, orders in strategy.configure_fit(rnd, names).items():
                if orders.mode is not TrainMode.DDP:
                    raise ValueError(f"site {s}: a {orders.mode.value} round in a ddp federation")
                p = orders.ddp
                vec, _m = site.noisy_sum(
                    sites[s],
                    shared,
                    q=p.q,
                    clip=p.clip,
                    scale=p.scale,
                    mu_share=p.mu_share,
                    rngs=noise[s].ddp_rngs(rnd, 1),
                    chunk=orders.batch_size,
                )
                ring += vec  # uint32 arithmetic wraps modulo 2**32, as secure aggregation's
            noisy = unflatten(from_ring_sum(ring, plan.scale), params, shared)
            if observe is not None:
                weights = {s: float(len(sites[s])) for s in names}
                observe(RoundView(rnd, dict(params), {}, weights, noisy, total_n))
            params = strategy.aggregate_fit(rnd, noisy, total_n, current=params)
            set_params(model, params, strict=False)
            if bar is not None:
                bar.update()
    finally:
        site.close()
        if bar is not None:
            bar.close()
    final = get_params(model)
    return SimulatedFederation(shared, final, {s: final for s in names}, {}, device)


class _DPSites:
    """Each site's DP-SGD trainer, σ and accountant for one simulated run."""

    def __init__(
        self, cfg, models: Mapping[str, nn.Module], sites: Mapping[str, object], seed, method
    ):
        from common.training.dp import DPSettings, DPTrainer, SiteAccountant

        t = cfg.train
        self.cfg, self.sites = cfg, sites
        self.settings = DPSettings.from_config(cfg.dp)
        # A simulated site smaller than the batch (a shadow site cut from a small attacker pool)
        # samples every slice each step (q = 1) instead of being refused as a real site is.
        self.batch = {s: min(t.batch_size, len(sites[s])) for s in models}
        for s, b in self.batch.items():
            if b < t.batch_size:
                log.warning(
                    "simulated site %s: %d slices < batch_size %d; batch %d (q = 1)",
                    s,
                    len(sites[s]),
                    t.batch_size,
                    b,
                )
        self.sigma = {
            s: self.settings.run_sigma(len(sites[s]), self.batch[s], t.rounds, t.local_epochs)
            for s in models
        }
        self.accountants = {
            s: SiteAccountant(self.settings.accountant, self.settings.adjacency) for s in models
        }
        self.trainers = {s: DPTrainer(m, self.settings) for s, m in models.items()}
        self.noise = {s: _seeded_noise(seed, method, s) for s in models}

    def train(
        self, site: str, orders: FitInstructions, global_params, grad_hook=None
    ) -> dict | None:
        from common.training.dp import PrivacyBudgetExhausted

        noise, rnd = self.noise[site], orders.round
        try:
            return self.trainers[site].train_round(
                self.sites[site],
                epochs=orders.local_epochs,
                lr=orders.lr,
                batch_size=min(orders.batch_size, self.batch[site]),
                seed=orders.seed,
                sigma=self.sigma[site],
                accountant=self.accountants[site],
                proximal_mu=orders.proximal_mu,
                global_params=global_params,
                optimizer=self.cfg.train.optimizer,
                generator_seeds=noise.dp_seeds(rnd, 1),
                grad_hook=grad_hook,
            )
        except PrivacyBudgetExhausted as err:
            log.info("simulated site %s, round %d: %s", site, orders.round, err)
            return None

    def close(self) -> None:
        for trainer in self.trainers.values():
            trainer.close()


def simulate_method(
    cfg,
    method: str,
    sites: Mapping[str, object],
    *,
    seed: int,
    device: torch.device | None = None,
    desc: str | None = None,
):
    """``method`` trained over ``sites`` in one process, whatever its kind: a federation
    (``simulate_federation``), the ``pooled`` reference (every site's slices as one site, the
    same schedule) or the ``local`` reference (each site alone, the same schedule; its
    ``site_params`` are the sites' own models and ``global_params`` their example-weighted mean,
    which nobody releases). ``device``: where it trains (default CPU)."""
    from torch.utils.data import ConcatDataset

    kind = get_method(method).kind
    if kind == "pooled":
        union = ConcatDataset([sites[s] for s in sorted(sites) if len(sites[s]) > 0])
        return simulate_federation(
            cfg, method, {"pooled": union}, seed=seed, device=device, desc=desc
        )
    if kind == "local":
        runs = {
            s: simulate_federation(
                cfg,
                method,
                {s: sites[s]},
                seed=seed,
                device=device,
                desc=desc and f"{desc}, site {s}",
            )
            for s in sorted(sites)
            if len(sites[s]) > 0
        }
        if not runs:
            raise ValueError("the local reference needs at least one site with data")
        own = {s: r.global_params for s, r in runs.items()}
        keys = sorted(next(iter(own.values())))
        mean = weighted_mean(own, {s: float(len(sites[s])) for s in own}, keys)
        metrics = {s: r.metrics[s] for s, r in runs.items()}
        return SimulatedFederation([], mean, own, metrics, torch.device(device or "cpu"))
    return simulate_federation(cfg, method, sites, seed=seed, device=device, desc=desc)
