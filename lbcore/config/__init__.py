"""The configuration: YAML in, an immutable validated model out (see model.py),
or a ConfigError naming the file, line and path of every fault."""

from lbcore.config.errors import ConfigError, ConfigIssue
from lbcore.config.load import load_config, load_config_text
from lbcore.config.model import Config
from lbcore.tls.policies import resolve_policy

__all__ = ["Config", "ConfigError", "ConfigIssue", "load_config", "load_config_text",
           "resolve_policy"]
