"""The table of federated methods: what each one is, in one place.

Every layer reads a method's facts from here (the server's strategy and evaluation, the site's
training mode and release, the model's normalisation, the attacker's shadow recipe, the
benchmark's checks) instead of comparing method names.

- ``strategy``: the name of its ``Strategy`` (``common/fl/``): what the sites are told and how the
  server combines their sum, in the gRPC server and in the shadow simulator alike;
- ``norm``: ``"config"`` uses ``model.norm`` of the profile (BatchNorm by default), ``"group"`` the
  GroupNorm twin of the U-Net (Opacus cannot train BatchNorm);
- ``dp``: the method is differentially private (ε in the results): DP-SGD at every site with one
  accountant per site, or (strategy ``ddpsgd``) distributed DP — one DP-SGD step per round over
  the union of the sites' samples, noise added in shares under secure aggregation, one central
  accountant at the server (``common/training/ddp.py``);
- ``proximal``: the sites add FedProx's proximal term (``fl.proximal_mu``);
- ``evaluated_at``: ``"server"`` evaluates the global model centrally, ``"sites"`` has each site
  evaluate its own model (its normalisation layers never leave it);
- ``release``: ``"global"`` (the server releases one model) or ``"per_site"`` (each site
  releases the shared weights plus its own normalisation layers);
- ``twin``: a DP method's non-DP twin (same network, same recipe, no DP);
- ``pretrained``: the run starts from public pretraining instead of random weights;
- ``kind``: ``"federated"`` (a real federation: server, sites, secure aggregation) or a
  reference row the benchmark trains in one process with the same schedule (FLamby's baselines):
  ``"pooled"`` (all sites' training slices in one place) or ``"local"`` (each site alone).

A method's training settings are the profile's ``[train]`` and ``[dp]`` with its own
``[recipes.<method>]`` on top (``common.config.Config.for_method``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class Method:
    name: str
    strategy: str  # a registered common.fl strategy (tests/unit/test_methods.py checks)
    norm: Literal["config", "group"]
    dp: bool
    proximal: bool
    evaluated_at: Literal["server", "sites"]
    release: Literal["global", "per_site"]
    summary: str
    twin: str | None = (
        None  # the same recipe without DP (a DP method's cost is measured against it)
    )
    pretrained: bool = False  # starts from public pretraining (common/training/pretrain.py)
    kind: Literal["federated", "pooled", "local"] = "federated"  # reference rows: not federations

    @property
    def distributed_dp(self) -> bool:
        """Noise added in shares by the sites, seen only summed (secure aggregation required)."""
        return self.strategy == "ddpsgd"

    @property
    def keeps_norm_local(self) -> bool:
        """The normalisation layers never leave a site (FedBN's aggregation rule)."""
        return self.strategy == "fedbn"

    def norm_type(self, configured: str) -> str:
        """The model's normalisation for a profile whose ``model.norm`` is ``configured``."""
        return configured if self.norm == "config" else self.norm


_TABLE = (
    Method(
        "fedavg",
        "fedavg",
        "config",
        False,
        False,
        "server",
        "global",
        "FedAvg: sample-weighted mean of parameters and BatchNorm statistics",
    ),
    Method(
        "fedprox",
        "fedprox",
        "config",
        False,
        True,
        "server",
        "global",
        "FedProx: FedAvg whose sites add (mu/2)·||w − w_global||²",
    ),
    Method(
        "fedbn",
        "fedbn",
        "config",
        False,
        False,
        "sites",
        "per_site",
        "FedBN: normalisation layers stay at their site",
    ),
    Method(
        "dpsgd",
        "fedavg",
        "group",
        True,
        False,
        "server",
        "global",
        "FedAvg with DP-SGD at every site (GroupNorm U-Net)",
        twin="groupnorm",
    ),
    Method(
        "groupnorm",
        "fedavg",
        "group",
        False,
        False,
        "server",
        "global",
        "FedAvg with the GroupNorm U-Net, no DP (dpsgd's non-DP twin)",
    ),
    Method(
        "dpsgd-pt",
        "fedavg",
        "group",
        True,
        False,
        "server",
        "global",
        "DP-SGD at every site, starting from public pretraining",
        twin="groupnorm-pt",
        pretrained=True,
    ),
    Method(
        "groupnorm-pt",
        "fedavg",
        "group",
        False,
        False,
        "server",
        "global",
        "FedAvg with the GroupNorm U-Net from public pretraining, no DP (dpsgd-pt's twin)",
        pretrained=True,
    ),
    Method(
        "ddp-sgd",
        "ddpsgd",
        "group",
        True,
        False,
        "server",
        "global",
        "Distributed DP-SGD: one step per round over the union of the sites' samples, each "
        "site adds a share of the Skellam noise, secure aggregation reveals only the noisy sum",
        twin="groupnorm",
    ),
    Method(
        "ddp-sgd-pt",
        "ddpsgd",
        "group",
        True,
        False,
        "server",
        "global",
        "Distributed DP-SGD starting from public pretraining",
        twin="groupnorm-pt",
        pretrained=True,
    ),
    Method(
        "fedadam",
        "fedadam",
        "config",
        False,
        False,
        "server",
        "global",
        "FedAdam: FedAvg's mean change as a pseudo-gradient for an Adam step at the server",
    ),
    Method(
        "scaffold",
        "scaffold",
        "config",
        False,
        False,
        "server",
        "global",
        "SCAFFOLD: FedAvg whose sites correct each step by the drift c − c_i of control variates",
    ),
    Method(
        "pooled",
        "fedavg",
        "config",
        False,
        False,
        "server",
        "global",
        "Reference: one model trained centrally on every site's training slices, same schedule "
        "(the ceiling federation approaches)",
        kind="pooled",
    ),
    Method(
        "local",
        "fedavg",
        "config",
        False,
        False,
        "sites",
        "per_site",
        "Reference: each site trains alone on its own slices, same schedule (what a hospital "
        "gets without federating)",
        kind="local",
    ),
)
METHODS: dict[str, Method] = {m.name: m for m in _TABLE}
METHOD_NAMES: tuple[str, ...] = tuple(METHODS)
# What a profile runs when ``fl.methods`` does not say: the paper's five.
DEFAULT_METHODS: tuple[str, ...] = ("fedavg", "fedprox", "fedbn", "dpsgd", "groupnorm")
# A privacy-utility sweep runs the DP method once per setting, and its non-DP twin (same network,
# same seed) once as the reference.
SWEEP_METHOD = "dpsgd"
SWEEP_REFERENCE = METHODS[SWEEP_METHOD].twin


def get_method(name: str) -> Method:
    """The method called ``name``; a ``ValueError`` naming the known ones otherwise."""
    try:
        return METHODS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown method {name!r}; known: {', '.join(METHOD_NAMES)}") from None
