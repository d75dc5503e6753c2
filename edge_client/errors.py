"""Typed errors shared by every fedge component."""

from __future__ import annotations


class FedgeError(Exception):
    """Base class of every error fedge raises on purpose."""


class ArtifactError(FedgeError):
    """A model artifact or its manifest is unusable (corrupt, wrong digest, bad signature...)."""


class ProtocolError(FedgeError):
    """A wire message is malformed, oversized, stale, replayed or otherwise invalid."""


class CodecError(FedgeError):
    """An update-codec spec or an encoded update payload is invalid."""


class SecAggError(FedgeError):
    """A secure-aggregation step cannot proceed (bad signature, below threshold, contradiction)."""


class ConfigError(FedgeError):
    """A configuration file (device.toml, job.toml) is invalid."""


class DataError(FedgeError):
    """Local training data is missing or malformed."""


class PrivacyError(FedgeError):
    """A differential-privacy setting is invalid or the privacy budget is exhausted."""


class PolicyError(FedgeError):
    """A task asks for less protection than the device's fleet policy requires."""
