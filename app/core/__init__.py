"""Core service plumbing: configuration."""

from hhvaem.app.core.config import Settings, get_settings, make_settings

__all__ = ["Settings", "get_settings", "make_settings"]
