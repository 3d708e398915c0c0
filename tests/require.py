"""Tests that need what a machine may lack (PostgreSQL, Redis, Node's tus clients, Chromium,
mounting): skipped with the reason where it is missing, failed instead where CI asks for it
(EDGESTORE_REQUIRE_<WHAT>=1), so that a green CI never hides a test it could not run."""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def required(var: str) -> bool:
    """Whether the variable `var` (EDGESTORE_REQUIRE_…) asks for the tests to run."""
    return os.environ.get(var, "") not in ("", "0", "false", "no")


def unavailable(var: str, reason: str) -> NoReturn:
    """Skip with `reason`, or fail where `var` is set."""
    if required(var):
        pytest.fail(f"{var} is set but {reason}")
    pytest.skip(reason)
