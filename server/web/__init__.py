"""The web layer: blob front, management API, dashboard and metrics, over two core interfaces."""

from fedge.server.web.api import mount_api
from fedge.server.web.http_app import HttpFront, TrafficCounter, create_app

__all__ = ["HttpFront", "TrafficCounter", "create_app", "mount_api"]
