"""Fleet provisioning: CA, TLS certificates, broker credentials and topic ACLs, device folders."""

from fedge.tools.provision.command import build_parser, main
from fedge.tools.provision.fleet import (
    ProvisionResult,
    add_devices,
    provision_fleet,
    server_account,
)

__all__ = [
    "ProvisionResult",
    "add_devices",
    "build_parser",
    "main",
    "provision_fleet",
    "server_account",
]
