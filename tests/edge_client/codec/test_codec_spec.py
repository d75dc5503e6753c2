"""Spec strings: valid forms, canonical str(), and clear errors for bad tokens."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedge.edge_client.codec.spec import CodecSpec, Sparsifier, parse_spec
from fedge.edge_client.errors import CodecError


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("none", CodecSpec()),
        ("q8", CodecSpec(bits=8, error_feedback=True)),
        ("q4+rot", CodecSpec(bits=4, rotate=True, error_feedback=True)),
        (
            "topk:0.01+q8",
            CodecSpec(sparsifier=Sparsifier.TOPK, fraction=0.01, bits=8, error_feedback=True),
        ),
        (
            "randk:0.01+q4+rot",
            CodecSpec(
                sparsifier=Sparsifier.RANDK, fraction=0.01, bits=4, rotate=True, error_feedback=True
            ),
        ),
        (
            "topk:0.01:tensor+q8",
            CodecSpec(
                sparsifier=Sparsifier.TOPK,
                fraction=0.01,
                per_tensor=True,
                bits=8,
                error_feedback=True,
            ),
        ),
        ("q8:block=256", CodecSpec(bits=8, block=256, error_feedback=True)),
        (
            "clip:10+topk:0.01+q8",
            CodecSpec(
                clip=10.0, sparsifier=Sparsifier.TOPK, fraction=0.01, bits=8, error_feedback=True
            ),
        ),
        ("q8+noef", CodecSpec(bits=8, error_feedback=False)),
        ("q8+ef", CodecSpec(bits=8, error_feedback=True)),
        ("noef", CodecSpec()),
        (
            "topk:0.01+q4+pred",
            CodecSpec(
                sparsifier=Sparsifier.TOPK, fraction=0.01, bits=4, error_feedback=True, predict=0.8
            ),
        ),
        ("q8+pred:0.5", CodecSpec(bits=8, error_feedback=True, predict=0.5)),
    ],
)
def test_parse_valid(text: str, expected: CodecSpec) -> None:
    spec = parse_spec(text)
    assert spec == expected
    canonical = {"q8+ef": "q8", "noef": "none"}.get(text, text)
    assert str(spec) == canonical


def test_parse_is_order_and_case_insensitive() -> None:
    spec = parse_spec(" ROT + q4 + randk:0.5:tensor + noef ")
    assert str(spec) == "randk:0.5:tensor+q4+rot+noef"
    assert str(parse_spec("topk:0.1:global+q2")) == "topk:0.1+q2"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "empty codec spec"),
        ("q3", "bits must be one of"),
        ("q8+q4", "conflicts"),
        ("topk:0.1+randk:0.1", "conflicts"),
        ("topk:0", "(0, 1]"),
        ("topk:1.5", "(0, 1]"),
        ("topk:abc", "bad number"),
        ("topk:0.1:layer", "tensor|:global"),
        ("randk", "unknown codec token"),
        ("q8:block=4", "block must be in"),
        ("q8:block=x", "block must be an integer"),
        ("q8:size=4", "only option is block"),
        ("clip:-1", "must be > 0"),
        ("clip:nan", "finite"),
        ("rot", "only helps a quantizer"),
        ("ef", "needs a lossy stage"),
        ("ef+noef+q8", "conflicts"),
        ("none+q8", "cannot be combined"),
        ("zip", "unknown codec token 'zip'"),
        ("q8++rot", "unknown codec token ''"),
        ("pred", "needs a lossy stage"),
        ("q8+pred:0", "must be in (0, 1]"),
        ("q8+pred:1.5", "must be in (0, 1]"),
        ("q8+pred:x", "bad number"),
        ("q8+pred:1:2", "unknown codec token"),
        ("q8+pred+pred:0.5", "conflicts"),
    ],
)
def test_parse_invalid(text: str, fragment: str) -> None:
    with pytest.raises(CodecError) as info:
        parse_spec(text)
    assert fragment in str(info.value)


def test_unknown_token_lists_allowed_tokens() -> None:
    with pytest.raises(CodecError, match="allowed tokens.*topk.*randk.*rot.*pred.*noef"):
        parse_spec("q8+gzip")


specs = st.builds(
    lambda clip, sparse, quant, pred, ef: "+".join(
        p for p in (clip, sparse, quant[0], quant[1], pred, ef) if p
    ),
    st.sampled_from(["", "clip:10", "clip:0.5"]),
    st.sampled_from(["", "topk:0.01", "randk:0.25:tensor", "topk:1", "randk:0.003"]),
    st.tuples(
        st.sampled_from(["", "q1", "q2", "q4", "q8:block=64", "q16"]), st.sampled_from(["", "rot"])
    ).filter(lambda q: q[0] or not q[1]),
    st.sampled_from(["", "pred", "pred:0.5"]),
    st.sampled_from(["", "noef"]),
).filter(lambda text: any(t in text for t in ("clip", "topk", "randk", "q")) or "pred" not in text)


@settings(max_examples=60, deadline=None)
@given(specs.filter(bool))
def test_canonical_string_round_trips(text: str) -> None:
    spec = parse_spec(text)
    assert parse_spec(str(spec)) == spec
    assert str(parse_spec(str(spec))) == str(spec)
    assert spec.error_feedback == ("noef" not in text)
