"""`fedge device`: load device.toml, the local data and the server key, then run the agent."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

from fedge.edge_client.agent import DeviceAgent, LocalData
from fedge.edge_client.config import DeviceConfig, load_device_config
from fedge.edge_client.data import load_local_dataset
from fedge.edge_client.errors import ConfigError
from fedge.edge_client.signing import load_public_key

log = logging.getLogger("fedge.device")


def load_local_data(config: DeviceConfig) -> LocalData:
    """The device's train (and optional test) split from the paths in its config."""
    x, y = load_local_dataset(config.data.train)
    test = config.data.test
    if test is not None and test.exists() and (test.is_file() or any(test.iterdir())):
        xt, yt = load_local_dataset(test)
        return LocalData(x, y, xt, yt)
    log.info(
        "device %s: no local test split; evaluation tasks use the training data", config.device_id
    )
    return LocalData(x, y)


def build_agent(config: DeviceConfig, **kwargs: object) -> DeviceAgent:
    """A ready agent for ``config`` (the server's signing key is required)."""
    if config.server_signing_key_file is None:
        raise ConfigError(
            "device.toml needs [server] signing_public_key: the device only loads "
            "models signed by its server"
        )
    try:
        server_key = load_public_key(config.server_signing_key_file.read_bytes())
    except OSError as exc:
        raise ConfigError(f"cannot read the server signing key: {exc}") from exc
    return DeviceAgent(config, load_local_data(config), server_key, **kwargs)  # type: ignore[arg-type]


def run_device(
    config_path: Path, runner: Callable[[Callable[[asyncio.Event], object]], object]
) -> int:
    """Entry of `fedge device --config device.toml`; runs until SIGINT/SIGTERM."""
    config = load_device_config(config_path)
    agent = build_agent(config)
    log.info(
        "device %s of fleet %s: %d local examples, broker %s",
        config.device_id,
        config.fleet,
        len(agent.data.y_train),
        config.broker.url,
    )
    runner(agent.run)
    return 0
