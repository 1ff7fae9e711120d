"""The run's settings for the ServerApp: the defaults in `mas_flower.defaults`, then `--run-config`."""

from mas_flower.defaults import app_defaults, load_settings, synthetic_root

__all__ = ["app_defaults", "load_settings", "synthetic_root"]
