"""The agent's configuration file: parsing and validation, with located errors."""

from __future__ import annotations

from cport.config._agent import (
    AgentSettings,
    ApiSettings,
    AuditSettings,
    DatapathSettings,
    GatewaySettings,
    HostPort,
    Limits,
    ListenerSettings,
    Target,
)
from cport.config._load import Config, IdentitySettings, load_config, parse_config

__all__ = [
    "AgentSettings",
    "ApiSettings",
    "AuditSettings",
    "Config",
    "DatapathSettings",
    "GatewaySettings",
    "HostPort",
    "IdentitySettings",
    "Limits",
    "ListenerSettings",
    "Target",
    "load_config",
    "parse_config",
]
