"""The codec spec string (`topk:0.01+q8`, `randk:0.01+q4+rot`, ...) and its parsed form."""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

from fedge.edge_client.errors import CodecError

ALLOWED_BITS = (1, 2, 4, 8, 16)
MIN_BLOCK = 16
MAX_BLOCK = 1 << 24

GRAMMAR = (
    "allowed tokens, joined by '+': none | clip:<norm> | topk:<fraction>[:tensor|:global] | "
    "randk:<fraction>[:tensor|:global] | q<bits>[:block=<n>] with bits in 1,2,4,8,16 | "
    "rot | pred[:<beta>] | ef | noef"
)
# pred's weight: the share of the previous global step a device starts from. At 1 the step
# never decays, and on cnn-fmnist training loses two points against 0.8 (docs/compression.md).
DEFAULT_PREDICT = 0.8
MAX_PREDICT = 1.0


class Sparsifier(Enum):
    """Which coordinates an update keeps."""

    DENSE = "dense"
    TOPK = "topk"
    RANDK = "randk"


@dataclass(frozen=True)
class CodecSpec:
    """A parsed codec spec; ``str(spec)`` is its canonical spec string.

    Attributes
    ----------
    clip : L2 norm the whole (error-feedback-corrected) delta is clipped to, or None.
    sparsifier : dense, top-k (indices travel) or random-k (indices come from the round seed).
    fraction : share of coordinates kept by top-k / random-k (None when dense).
    per_tensor : sparsify each tensor on its own (True) or the concatenated update (False).
    bits : stochastic-quantization width, or None to send float32 values.
    block : quantization block size (one scale per block), or None for one scale per section.
    rotate : apply a randomized Hadamard rotation before quantizing.
    error_feedback : keep what was not sent and add it to the next round's delta.
    predict : predictive coding: train from the global weights plus ``predict`` times the
        previous global step (the round's downlink delta) and code what training adds; the
        server adds the prediction back. None when off.
    """

    clip: float | None = None
    sparsifier: Sparsifier = Sparsifier.DENSE
    fraction: float | None = None
    per_tensor: bool = False
    bits: int | None = None
    block: int | None = None
    rotate: bool = False
    error_feedback: bool = False
    predict: float | None = None

    @property
    def lossy(self) -> bool:
        """True when any stage drops information (so error feedback can help)."""
        return (
            self.clip is not None
            or self.sparsifier is not Sparsifier.DENSE
            or self.bits is not None
        )

    def __str__(self) -> str:
        parts: list[str] = []
        if self.clip is not None:
            parts.append(f"clip:{_fmt(self.clip)}")
        if self.sparsifier is not Sparsifier.DENSE:
            assert self.fraction is not None
            scope = ":tensor" if self.per_tensor else ""
            parts.append(f"{self.sparsifier.value}:{_fmt(self.fraction)}{scope}")
        if self.bits is not None:
            parts.append(f"q{self.bits}" + (f":block={self.block}" if self.block else ""))
        if self.rotate:
            parts.append("rot")
        if self.predict is not None:
            parts.append(
                "pred" if self.predict == DEFAULT_PREDICT else f"pred:{_fmt(self.predict)}"
            )
        if self.lossy and not self.error_feedback:
            parts.append("noef")
        return "+".join(parts) or "none"


def _fmt(x: float) -> str:
    return str(int(x)) if x.is_integer() else repr(x)


def _number(token: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise CodecError(f"bad number {text!r} in codec token {token!r}; {GRAMMAR}") from None
    if not math.isfinite(value):
        raise CodecError(f"codec token {token!r} needs a finite number")
    return value


def _fraction(token: str, text: str) -> float:
    value = _number(token, text)
    if not 0.0 < value <= 1.0:
        raise CodecError(f"fraction in {token!r} must be in (0, 1], got {value}")
    return value


def _scope(token: str, parts: list[str]) -> bool:
    if len(parts) == 2:
        return False
    if len(parts) == 3 and parts[2] in ("tensor", "global"):
        return parts[2] == "tensor"
    raise CodecError(f"bad sparsifier token {token!r}: use <kind>:<fraction>[:tensor|:global]")


def _quantizer(token: str) -> tuple[int, int | None]:
    head, _, option = token.partition(":")
    try:
        bits = int(head[1:])
    except ValueError:
        raise CodecError(f"bad quantizer token {token!r}; {GRAMMAR}") from None
    if bits not in ALLOWED_BITS:
        raise CodecError(f"quantizer {token!r}: bits must be one of {ALLOWED_BITS}")
    if not option:
        return bits, None
    key, eq, value = option.partition("=")
    if key != "block" or not eq:
        raise CodecError(f"quantizer {token!r}: the only option is block=<n>")
    try:
        block = int(value)
    except ValueError:
        raise CodecError(f"quantizer {token!r}: block must be an integer") from None
    if not MIN_BLOCK <= block <= MAX_BLOCK:
        raise CodecError(f"quantizer {token!r}: block must be in [{MIN_BLOCK}, {MAX_BLOCK}]")
    return bits, block


def parse_spec(text: str) -> CodecSpec:
    """Parse a codec spec string such as ``clip:10+topk:0.01:tensor+q8:block=256+noef``.

    Parameters
    ----------
    text : the spec; tokens joined by ``+`` in any order, case-insensitive.

    Returns
    -------
    CodecSpec whose ``str()`` is the canonical form of ``text``.

    Raises
    ------
    CodecError naming the bad token and listing what is allowed.
    """
    if not isinstance(text, str) or not text.strip():
        raise CodecError(f"empty codec spec; {GRAMMAR}")
    tokens = [t.strip().lower() for t in text.split("+")]
    if "none" in tokens and len(tokens) != 1:
        raise CodecError("codec spec 'none' cannot be combined with other tokens")
    found = _Tokens()
    for token in tokens:
        if token != "none":
            found.read(token)
    return found.spec()


@dataclass
class _Tokens:
    """What the tokens of a spec said, each kind at most once."""

    clip: float | None = None
    sparse: tuple[Sparsifier, float, bool] | None = None
    quant: tuple[int, int | None] | None = None
    rotate: bool = False
    predict: float | None = None
    ef: bool | None = None

    def read(self, token: str) -> None:
        parts = token.split(":")
        if token in ("ef", "noef"):
            _once(self.ef is None, token)
            self.ef = token == "ef"
        elif token == "rot":
            _once(not self.rotate, token)
            self.rotate = True
        elif parts[0] == "pred" and len(parts) <= 2:
            _once(self.predict is None, token)
            self.predict = _number(token, parts[1]) if len(parts) == 2 else DEFAULT_PREDICT
            if not 0.0 < self.predict <= MAX_PREDICT:
                raise CodecError(f"pred weight in {token!r} must be in (0, {_fmt(MAX_PREDICT)}]")
        elif parts[0] == "clip" and len(parts) == 2:
            _once(self.clip is None, token)
            self.clip = _number(token, parts[1])
            if self.clip <= 0:
                raise CodecError(f"clip norm in {token!r} must be > 0")
        elif parts[0] in ("topk", "randk") and len(parts) >= 2:
            _once(self.sparse is None, token)
            self.sparse = (Sparsifier(parts[0]), _fraction(token, parts[1]), _scope(token, parts))
        elif token.startswith("q") and token[1:2].isdigit():
            _once(self.quant is None, token)
            self.quant = _quantizer(token)
        else:
            raise CodecError(f"unknown codec token {token!r}; {GRAMMAR}")

    def spec(self) -> CodecSpec:
        """The spec the tokens make, once their combination is checked."""
        kind, fraction, per_tensor = self.sparse or (Sparsifier.DENSE, None, False)
        bits, block = self.quant or (None, None)
        if self.rotate and bits is None:
            raise CodecError("'rot' only helps a quantizer: add q<bits> (e.g. 'q4+rot')")
        lossy = self.clip is not None or self.sparse is not None or self.quant is not None
        if self.ef and not lossy:
            raise CodecError("'ef' needs a lossy stage (clip, topk, randk or q<bits>)")
        if self.predict is not None and not lossy:
            raise CodecError("'pred' needs a lossy stage (clip, topk, randk or q<bits>)")
        return CodecSpec(
            clip=self.clip,
            sparsifier=kind,
            fraction=fraction,
            per_tensor=per_tensor,
            bits=bits,
            block=block,
            rotate=self.rotate,
            error_feedback=lossy if self.ef is None else self.ef,
            predict=self.predict,
        )


def _once(first: bool, token: str) -> None:
    if not first:
        raise CodecError(f"codec token {token!r} conflicts with an earlier token of its kind")
