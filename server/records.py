"""What crosses the server's service edge, as named records (no protobuf, no positional tuples).

The servicer decodes every request into one of the result records below, after validating it;
the round state stores them; the round loop and the secure-aggregation driver read them by field.
What the server hands a site in a secure-aggregation stage is one of the ``*Stage`` records,
which the servicer encodes. ``TaskKind`` names every kind of task a site can be given.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import numpy as np


class TaskKind(str, enum.Enum):
    FIT = "fit"  # train and push the weighted update (secure aggregation off)
    ADVERTISE_KEYS = "advertise_keys"  # train, keep the update, advertise fresh public keys
    SHARE_KEYS = "share_keys"  # secure aggregation, stage 2
    MASKED_INPUT = "masked_input"  # stage 3
    CONSISTENCY = "consistency"  # stage 4
    UNMASK = "unmask"  # stage 5
    EVALUATE = "evaluate"  # evaluate the shared weights with the site's own norm layers
    WAIT = "wait"
    FINISHED = "finished"

    def __str__(self) -> str:  # "fit", not "TaskKind.FIT", in messages
        return self.value


SECAGG_STAGES = (
    TaskKind.SHARE_KEYS,
    TaskKind.MASKED_INPUT,
    TaskKind.CONSISTENCY,
    TaskKind.UNMASK,
)


# -- results a site sends ------------------------------------------------------------------------


@dataclass(frozen=True)
class FitResult:
    """A plain update: ``weighted`` = n_k * params_k per shared key (secure aggregation off)."""

    weighted: dict[str, np.ndarray]
    num_examples: int
    metrics: dict


@dataclass(frozen=True)
class EvalResult:
    num_examples: int
    metrics: dict


@dataclass(frozen=True)
class KeyAdvertisement:
    """Secure aggregation, stage 1: the site trained and keeps its update; only n_k (not secret),
    its training metrics and two fresh public keys leave it (under mutual TLS with its signature
    over them and its certificate, which the server relays: ``common.keybind``)."""

    enc_pk: bytes
    mask_pk: bytes
    num_examples: int
    metrics: dict
    signature: bytes = b""
    certificate: bytes = b""


@dataclass(frozen=True)
class SharedKeys:
    """Stage 2: ciphertexts of the site's Shamir shares, by recipient."""

    ciphertexts: dict[str, bytes]


@dataclass(frozen=True)
class MaskedInput:
    """Stage 3: the quantised update plus masks (uint32 words)."""

    masked: np.ndarray
    metrics: dict


@dataclass(frozen=True)
class Confirmation:
    """Stage 4: the site's MAC of the survivor set, by recipient (its neighbours among them)."""

    tags: dict[str, bytes]


@dataclass(frozen=True)
class UnmaskReply:
    """Stage 5: the site's shares for the survivors' self masks / the dropped sites' keys."""

    shares: dict[str, bytes]


# -- what the server hands a site in a secure-aggregation stage ---------------------------------


@dataclass(frozen=True)
class ShareKeysStage:
    public_keys: dict[str, tuple[bytes, bytes]]  # site -> (enc_pk, mask_pk)
    threshold: int
    neighbours: list[str] = field(default_factory=list)
    bindings: dict[str, tuple[bytes, bytes]] = field(default_factory=dict)  # site -> (sig, cert)


@dataclass(frozen=True)
class MaskedInputStage:
    ciphertexts: dict[str, bytes]  # sender -> ciphertext for this site
    scale: float
    clip: float


@dataclass(frozen=True)
class ConsistencyStage:
    survivors: list[str]


@dataclass(frozen=True)
class UnmaskStage:
    survivors: list[str]
    dropped: list[str]
    confirmations: dict[str, bytes] = field(default_factory=dict)  # sender -> its tag to me
