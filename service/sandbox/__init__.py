"""A local, scriptable stand-in for the Codat endpoints codat-relay uses (see app.py, control.py)."""

from __future__ import annotations

from service.sandbox.app import create_sandbox_app, run_sandbox
from service.sandbox.config import DEFAULT_PORT, SandboxConfig, add_arguments, config_from_args

__all__ = [
    "DEFAULT_PORT",
    "SandboxConfig",
    "add_arguments",
    "config_from_args",
    "create_sandbox_app",
    "run_sandbox",
]
