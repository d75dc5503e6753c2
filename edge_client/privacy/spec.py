"""The differential-privacy spec string (`central:1.0:0.5`, `distributed:z=1,clip=1,bits=20`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from enum import Enum

from fedge.edge_client.errors import PrivacyError

DEFAULT_DELTA = 1e-5
DEFAULT_CLIP_LEARNING_RATE = 0.2
DEFAULT_BITS = 32
DEFAULT_BETA = math.exp(-0.5)
MIN_BITS = 4
MAX_BITS = 32


class DPMode(Enum):
    """Where the noise is added."""

    CENTRAL = "central"  # by a trusted server, to the sum of clipped updates
    DISTRIBUTED = "distributed"  # by each device, to its quantized update, under secure aggregation


class DistributedNoise(Enum):
    """Integer noise each device adds in distributed mode."""

    DGAUSS = "dgauss"  # discrete Gaussian (Kairouz, Liu, Steinke 2021)
    SKELLAM = "skellam"  # difference of two Poissons (Agarwal, Kairouz, Liu 2021)


class AccountingMethod(Enum):
    """How epsilon is computed from the noise multiplier and the sampling rate."""

    RDP = "rdp"
    PLD = "pld"


@dataclass(frozen=True)
class DPSpec:
    """A parsed, validated differential-privacy setting.

    Attributes
    ----------
    mode : central or distributed noise.
    noise_multiplier : noise standard deviation of the round's sum over the clip norm (z).
    clip : L2 clip norm of each device's update (the initial one when adaptive).
    delta : target delta of the (epsilon, delta) guarantee.
    target_epsilon : budget; the job stops before a round would exceed it (None: no budget).
    adaptive_quantile : target quantile of adaptive clipping (None: fixed clip). Central only.
    clip_learning_rate : eta_C of the geometric clip update.
    bit_noise : standard deviation of the noise on the clipped count (None: clients / 20).
    bits : width of the secure-aggregation ring, modulus 2**bits. Distributed only.
    noise : integer noise of distributed mode.
    beta : conditional-rounding parameter in [0, 1) (0: plain stochastic rounding).
    accounting : RDP or PLD accountant (distributed mode accounts with RDP only).
    """

    mode: DPMode
    noise_multiplier: float
    clip: float
    delta: float = DEFAULT_DELTA
    target_epsilon: float | None = None
    adaptive_quantile: float | None = None
    clip_learning_rate: float = DEFAULT_CLIP_LEARNING_RATE
    bit_noise: float | None = None
    bits: int = DEFAULT_BITS
    noise: DistributedNoise = DistributedNoise.DGAUSS
    beta: float = DEFAULT_BETA
    accounting: AccountingMethod = AccountingMethod.RDP

    def __post_init__(self) -> None:
        _validate(self)

    @property
    def requires_secagg(self) -> bool:
        """True when the noise is only private if devices' updates are securely aggregated."""
        return self.mode is DPMode.DISTRIBUTED

    @property
    def adaptive(self) -> bool:
        """True when the clip norm adapts toward `adaptive_quantile`."""
        return self.adaptive_quantile is not None

    def bit_noise_for(self, expected_clients: float) -> float:
        """Standard deviation of the clipped-count noise for a round of `expected_clients`.

        The explicit `bit_noise` when given, else `expected_clients / 20` (Andrew et al.);
        0 when the noise multiplier is 0 (no privacy asked).
        """
        if expected_clients <= 0:
            raise PrivacyError(f"expected_clients must be > 0, got {expected_clients}")
        if self.noise_multiplier == 0.0:
            return 0.0
        return self.bit_noise if self.bit_noise is not None else expected_clients / 20.0


_ALIASES = {
    "z": "noise_multiplier",
    "noise_multiplier": "noise_multiplier",
    "clip": "clip",
    "delta": "delta",
    "target_eps": "target_epsilon",
    "adaptive": "adaptive_quantile",
    "clip_lr": "clip_learning_rate",
    "bit_noise": "bit_noise",
    "bits": "bits",
    "noise": "noise",
    "beta": "beta",
    "accounting": "accounting",
}
_CANONICAL_KEY = {
    "noise_multiplier": "z",
    "clip": "clip",
    "delta": "delta",
    "target_epsilon": "target_eps",
    "adaptive_quantile": "adaptive",
    "clip_learning_rate": "clip_lr",
    "bit_noise": "bit_noise",
    "bits": "bits",
    "noise": "noise",
    "beta": "beta",
    "accounting": "accounting",
}
_CENTRAL_ONLY = ("adaptive_quantile", "clip_learning_rate", "bit_noise")
_DISTRIBUTED_ONLY = ("bits", "noise", "beta")
_POSITIONAL = ("noise_multiplier", "clip")


def parse_dp_spec(text: str) -> DPSpec:
    """Parse a spec string such as ``central:1.0:0.5`` into a validated `DPSpec`.

    Grammar (see docs/privacy.md)::

        spec  = mode ":" field *(":" field)
        mode  = "central" | "distributed"
        field = number | pair *("," pair)      ; at most two bare numbers: z then clip
        pair  = key "=" value

    Raises
    ------
    PrivacyError
        On a malformed string, an unknown or repeated key, a value out of range or an
        invalid combination (e.g. ``bits`` with central mode, adaptive clipping with
        distributed mode).
    """
    if not isinstance(text, str):
        raise PrivacyError(f"DP spec must be a string, got {type(text).__name__}")
    head, sep, rest = text.strip().partition(":")
    try:
        mode = DPMode(head.strip().lower())
    except ValueError:
        raise PrivacyError(
            f"DP spec {text!r}: mode must be 'central' or 'distributed', got {head!r}"
        ) from None
    if not sep or not rest.strip():
        raise PrivacyError(f"DP spec {text!r}: expected '{mode.value}:Z:CLIP' or key=value pairs")
    values: dict[str, str] = {}
    positional = 0
    for field_text in rest.split(":"):
        field_text = field_text.strip()
        if not field_text:
            raise PrivacyError(f"DP spec {text!r}: empty field")
        if "=" not in field_text:
            if positional >= len(_POSITIONAL) or values.keys() - set(_POSITIONAL[:positional]):
                raise PrivacyError(
                    f"DP spec {text!r}: expected key=value, got {field_text!r} (only the first "
                    "two fields may be bare values: z, then clip)"
                )
            _put(values, _POSITIONAL[positional], field_text, text)
            positional += 1
            continue
        for pair in field_text.split(","):
            key, eq, value = (part.strip() for part in pair.partition("="))
            if not eq or not key or not value:
                raise PrivacyError(f"DP spec {text!r}: expected key=value, got {pair.strip()!r}")
            name = _ALIASES.get(key.lower())
            if name is None:
                raise PrivacyError(
                    f"DP spec {text!r}: unknown key {key!r} (known: {', '.join(sorted(_ALIASES))})"
                )
            _put(values, name, value, text)
    return _build(mode, values, text)


def format_dp_spec(spec: DPSpec) -> str:
    """The canonical spec string of `spec`; `parse_dp_spec(format_dp_spec(s)) == s`."""
    pairs = [f"z={spec.noise_multiplier!r}", f"clip={spec.clip!r}"]
    for item in fields(DPSpec):
        value = getattr(spec, item.name)
        if item.name == "mode" or item.name in _POSITIONAL or value in (None, item.default):
            continue
        pairs.append(f"{_CANONICAL_KEY[item.name]}={_format_value(value)}")
    return f"{spec.mode.value}:{','.join(pairs)}"


def _format_value(value: object) -> str:
    return str(value.value) if isinstance(value, Enum) else repr(value)


def _put(values: dict[str, str], name: str, value: str, text: str) -> None:
    if name in values:
        raise PrivacyError(f"DP spec {text!r}: {_CANONICAL_KEY[name]} given twice")
    values[name] = value


def _build(mode: DPMode, values: dict[str, str], text: str) -> DPSpec:
    for name in _POSITIONAL:
        if name not in values:
            raise PrivacyError(f"DP spec {text!r}: missing {_CANONICAL_KEY[name]}")
    wrong = _CENTRAL_ONLY if mode is DPMode.DISTRIBUTED else _DISTRIBUTED_ONLY
    for name in wrong:
        if name in values:
            raise PrivacyError(
                f"DP spec {text!r}: {_CANONICAL_KEY[name]} is not valid with {mode.value} DP"
                + (" (adaptive clipping needs central DP)" if name in _CENTRAL_ONLY else "")
            )
    kwargs: dict[str, object] = {"mode": mode}
    for name, raw in values.items():
        kwargs[name] = _convert(name, raw, text)
    try:
        return DPSpec(**kwargs)  # type: ignore[arg-type]
    except PrivacyError as exc:
        raise PrivacyError(f"DP spec {text!r}: {exc}") from None


def _convert(name: str, raw: str, text: str) -> object:
    key = _CANONICAL_KEY[name]
    if name == "noise":
        try:
            return DistributedNoise(raw.lower())
        except ValueError:
            raise PrivacyError(f"DP spec {text!r}: noise must be dgauss or skellam") from None
    if name == "accounting":
        try:
            return AccountingMethod(raw.lower())
        except ValueError:
            raise PrivacyError(f"DP spec {text!r}: accounting must be rdp or pld") from None
    if name == "bits":
        try:
            return int(raw)
        except ValueError:
            raise PrivacyError(f"DP spec {text!r}: bits must be an integer, got {raw!r}") from None
    try:
        number = float(raw)
    except ValueError:
        raise PrivacyError(f"DP spec {text!r}: {key} must be a number, got {raw!r}") from None
    return number


def _validate(spec: DPSpec) -> None:
    """Check ranges and combinations; raise PrivacyError with the first problem found."""
    if not isinstance(spec.mode, DPMode):
        raise PrivacyError(f"mode must be a DPMode, got {spec.mode!r}")
    for name in ("noise_multiplier", "clip", "delta", "clip_learning_rate", "beta"):
        _finite(name, getattr(spec, name))
    if spec.noise_multiplier < 0:
        raise PrivacyError(f"noise multiplier z must be >= 0, got {spec.noise_multiplier}")
    if spec.clip <= 0:
        raise PrivacyError(f"clip must be > 0, got {spec.clip}")
    if not 0 < spec.delta < 1:
        raise PrivacyError(f"delta must be in (0, 1), got {spec.delta}")
    if spec.target_epsilon is not None:
        _finite("target_eps", spec.target_epsilon)
        if spec.target_epsilon <= 0:
            raise PrivacyError(f"target_eps must be > 0, got {spec.target_epsilon}")
        if spec.noise_multiplier == 0:
            raise PrivacyError("target_eps needs noise: with z=0 every round has epsilon = inf")
    if spec.clip_learning_rate <= 0:
        raise PrivacyError(f"clip_lr must be > 0, got {spec.clip_learning_rate}")
    if spec.adaptive_quantile is not None:
        _finite("adaptive", spec.adaptive_quantile)
        if not 0 < spec.adaptive_quantile < 1:
            raise PrivacyError(f"adaptive quantile must be in (0, 1), got {spec.adaptive_quantile}")
        if spec.mode is not DPMode.CENTRAL:
            raise PrivacyError("adaptive clipping is only supported with central DP")
    elif spec.bit_noise is not None or spec.clip_learning_rate != DEFAULT_CLIP_LEARNING_RATE:
        raise PrivacyError("clip_lr and bit_noise need adaptive=QUANTILE")
    if spec.bit_noise is not None:
        _finite("bit_noise", spec.bit_noise)
        if spec.bit_noise < 0:
            raise PrivacyError(f"bit_noise must be >= 0, got {spec.bit_noise}")
        if spec.noise_multiplier > 0 and 2 * spec.bit_noise <= spec.noise_multiplier:
            raise PrivacyError(
                f"bit_noise={spec.bit_noise} is too small for z={spec.noise_multiplier}: "
                "the clipped-count query alone would use the whole budget (need 2*bit_noise > z)"
            )
    if not isinstance(spec.bits, int) or not MIN_BITS <= spec.bits <= MAX_BITS:
        raise PrivacyError(f"bits must be an integer in [{MIN_BITS}, {MAX_BITS}], got {spec.bits}")
    if not isinstance(spec.noise, DistributedNoise):
        raise PrivacyError(f"noise must be a DistributedNoise, got {spec.noise!r}")
    if not 0 <= spec.beta < 1:
        raise PrivacyError(f"beta must be in [0, 1), got {spec.beta}")
    if not isinstance(spec.accounting, AccountingMethod):
        raise PrivacyError(f"accounting must be an AccountingMethod, got {spec.accounting!r}")
    if spec.mode is DPMode.DISTRIBUTED and spec.accounting is not AccountingMethod.RDP:
        raise PrivacyError("distributed DP is accounted with RDP only (accounting=rdp)")


def _finite(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise PrivacyError(
            f"{_CANONICAL_KEY.get(name, name)} must be a finite number, got {value!r}"
        )
