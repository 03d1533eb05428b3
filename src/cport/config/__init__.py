"""The agent's configuration file: parsing and validation, with located errors."""

from __future__ import annotations

from cport.config._load import Config, IdentitySettings, load_config, parse_config

__all__ = ["Config", "IdentitySettings", "load_config", "parse_config"]
