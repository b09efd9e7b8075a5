"""Optional test dependencies: a test module that needs one is skipped without it (a GPU machine
may have only the measuring side installed), except under CI (CI=true), where a missing one is a
failure, as a missing PostgreSQL is in tests/pg.py."""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import pytest


def require(module: str, install: str) -> ModuleType:
    """Imports `module` for the calling test module, or skips that module (fails it under CI)."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        reason = f"{module} is not installed ({exc}); install it with: {install}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI must run these tests: {reason}", pytrace=False)
        pytest.skip(reason, allow_module_level=True)
