"""Run settings, the Orbit-driven runner and its progress actions."""

from fmx.training import settings  # noqa: F401
