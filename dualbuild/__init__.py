"""dualbuild: one TOML recipe → a Docker image tarball and a signed appc ACI."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
