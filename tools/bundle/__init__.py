"""Flashable device bundles: offline wheels, device config and keys, systemd unit, install.sh."""

from tools.bundle.command import BundleResult, build_bundle, build_parser, main
from tools.bundle.platforms import PLATFORMS, Platform, get_platform

__all__ = ["PLATFORMS", "BundleResult", "Platform", "build_bundle", "build_parser", "get_platform",
           "main"]
