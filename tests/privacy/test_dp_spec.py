"""DP spec strings: grammar, defaults, invalid combinations, canonical round trip."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedge.edge_client.errors import PrivacyError
from fedge.edge_client.privacy import (
    AccountingMethod,
    DistributedNoise,
    DPMode,
    DPSpec,
    format_dp_spec,
    parse_dp_spec,
)


def test_positional_central() -> None:
    spec = parse_dp_spec("central:1.1:0.5")
    assert spec == DPSpec(mode=DPMode.CENTRAL, noise_multiplier=1.1, clip=0.5)
    assert spec.delta == 1e-5
    assert not spec.requires_secagg
    assert not spec.adaptive


def test_keyed_central_with_budget_and_adaptive_clipping() -> None:
    spec = parse_dp_spec("central:z=1.0,clip=1.0,target_eps=8,delta=1e-5,adaptive=0.5")
    assert spec.mode is DPMode.CENTRAL
    assert spec.target_epsilon == 8.0
    assert spec.adaptive_quantile == 0.5
    assert spec.adaptive
    assert spec.clip_learning_rate == 0.2
    assert spec.bit_noise_for(100) == 5.0  # expected clients / 20


def test_distributed_positional_then_options() -> None:
    spec = parse_dp_spec("distributed:0.8:2.0:bits=20,noise=skellam")
    assert spec.requires_secagg
    assert (spec.noise_multiplier, spec.clip, spec.bits) == (0.8, 2.0, 20)
    assert spec.noise is DistributedNoise.SKELLAM
    assert spec.accounting is AccountingMethod.RDP


def test_spaces_case_and_aliases() -> None:
    spec = parse_dp_spec(" Central : noise_multiplier = 2 , clip = 3 : accounting = PLD ")
    assert (spec.noise_multiplier, spec.clip) == (2.0, 3.0)
    assert spec.accounting is AccountingMethod.PLD


def test_explicit_bit_noise_and_zero_noise() -> None:
    spec = parse_dp_spec("central:1:1:adaptive=0.8,bit_noise=2,clip_lr=0.1")
    assert spec.bit_noise_for(1000) == 2.0
    assert parse_dp_spec("central:0:1:adaptive=0.5").bit_noise_for(100) == 0.0


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "mode must be"),
        ("local:1:1", "mode must be"),
        ("central", "expected"),
        ("central:", "expected"),
        ("central:1", "missing clip"),
        ("central:clip=1", "missing z"),
        ("central:-1:1", "z must be >= 0"),
        ("central:1:0", "clip must be > 0"),
        ("central:1:-2", "clip must be > 0"),
        ("central:1:nan", "finite"),
        ("central:1:inf", "finite"),
        ("central:abc:1", "must be a number"),
        ("central:1:1:2", "only the first two fields"),
        ("central:clip=1:1", "only the first two fields"),
        ("central:1:1:z=2", "given twice"),
        ("central:1:1:clip=2", "given twice"),
        ("central:1:1:foo=2", "unknown key"),
        ("central:1:1:delta", "expected key=value"),
        ("central:1:1:delta=", "expected key=value"),
        ("central:1:1::", "empty field"),
        ("central:1:1:delta=1", "delta must be in (0, 1)"),
        ("central:1:1:delta=0", "delta must be in (0, 1)"),
        ("central:1:1:target_eps=0", "target_eps must be > 0"),
        ("central:0:1:target_eps=1", "needs noise"),
        ("central:1:1:adaptive=0", "(0, 1)"),
        ("central:1:1:adaptive=1", "(0, 1)"),
        ("central:1:1:adaptive=1.5", "(0, 1)"),
        ("central:1:1:clip_lr=0.1", "need adaptive"),
        ("central:1:1:bit_noise=1", "need adaptive"),
        ("central:1:1:adaptive=0.5,clip_lr=0", "clip_lr must be > 0"),
        ("central:1:1:adaptive=0.5,bit_noise=0.5", "too small"),
        ("central:1:1:adaptive=0.5,bit_noise=-1", "bit_noise must be >= 0"),
        ("central:1:1:bits=16", "not valid with central"),
        ("central:1:1:noise=dgauss", "not valid with central"),
        ("central:1:1:accounting=moments", "rdp or pld"),
        ("distributed:1:1:adaptive=0.5", "needs central DP"),
        ("distributed:1:1:bits=3", "bits must be an integer in [4, 32]"),
        ("distributed:1:1:bits=33", "bits must be an integer in [4, 32]"),
        ("distributed:1:1:bits=16.5", "bits must be an integer"),
        ("distributed:1:1:noise=laplace", "dgauss or skellam"),
        ("distributed:1:1:beta=1", "beta must be in [0, 1)"),
        ("distributed:1:1:accounting=pld", "RDP only"),
    ],
)
def test_invalid_specs_raise(text: str, fragment: str) -> None:
    with pytest.raises(PrivacyError) as info:
        parse_dp_spec(text)
    assert fragment in str(info.value)


def test_non_string_spec() -> None:
    with pytest.raises(PrivacyError, match="must be a string"):
        parse_dp_spec(1.0)  # type: ignore[arg-type]


def test_bit_noise_needs_clients() -> None:
    with pytest.raises(PrivacyError, match="expected_clients"):
        parse_dp_spec("central:1:1:adaptive=0.5").bit_noise_for(0)


_positive = st.floats(min_value=1e-3, max_value=1e3, allow_nan=False, allow_infinity=False)


@st.composite
def _specs(draw: st.DrawFn) -> DPSpec:
    mode = draw(st.sampled_from(DPMode))
    z = draw(st.one_of(st.just(0.0), _positive))
    kwargs: dict[str, object] = {
        "mode": mode,
        "noise_multiplier": z,
        "clip": draw(_positive),
        "delta": draw(st.floats(min_value=1e-12, max_value=0.5)),
    }
    if z > 0:
        kwargs["target_epsilon"] = draw(st.one_of(st.none(), _positive))
    if mode is DPMode.CENTRAL:
        kwargs["accounting"] = draw(st.sampled_from(AccountingMethod))
        if draw(st.booleans()):
            kwargs["adaptive_quantile"] = draw(st.floats(min_value=0.01, max_value=0.99))
            kwargs["clip_learning_rate"] = draw(_positive)
            kwargs["bit_noise"] = draw(st.one_of(st.none(), st.just(z + 1.0)))
    else:
        kwargs["bits"] = draw(st.integers(min_value=4, max_value=32))
        kwargs["noise"] = draw(st.sampled_from(DistributedNoise))
        kwargs["beta"] = draw(st.sampled_from([0.0, math.exp(-0.5), 0.25]))
    return DPSpec(**kwargs)  # type: ignore[arg-type]


@given(_specs())
def test_canonical_round_trip(spec: DPSpec) -> None:
    text = format_dp_spec(spec)
    assert parse_dp_spec(text) == spec
    assert text.startswith(spec.mode.value + ":z=")
