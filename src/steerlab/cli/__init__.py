"""The ``steerlab`` command line: one typer app, one module per command group.

``main`` is the entry point (``steerlab = steerlab.cli:main``); ``app`` the typer app.
"""

from __future__ import annotations

from steerlab.cli.app import app, main

__all__ = ["app", "main"]
