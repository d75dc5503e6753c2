"""Flashable device bundles: offline wheels, device config and keys, systemd unit, install.sh."""

from fedge.tools.bundle.command import BundleResult, build_bundle, build_parser, main
from fedge.tools.bundle.platforms import PLATFORMS, Platform, get_platform

__all__ = ["PLATFORMS", "BundleResult", "Platform", "build_bundle", "build_parser", "get_platform",
           "main"]
