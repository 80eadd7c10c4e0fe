"""Shared fixtures: a small dataset built once per session, and the template oracle.

Everything a test run writes goes under a temp dir of its own (DERIVANIM_OUTPUTS, set
before any config is composed), never the project's outputs/: no test runs against a
model an older checkout built. Under CI (CI set) a missing tool fails its tests instead
of skipping them: a machine without LaTeX or bubblewrap must not pass untested."""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest

from derivative_animator import environment

_OUTPUTS = tempfile.mkdtemp(prefix="derivanim-test-outputs-")
os.environ["DERIVANIM_OUTPUTS"] = _OUTPUTS


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_OUTPUTS, ignore_errors=True)


def unless_missing(problems: list[str], what: str):
    """A mark: skip when `problems` is not empty, but fail under CI, naming what is missing."""
    if not problems:
        return pytest.mark.usefixtures()  # no-op
    reason = f"{what}: {'; '.join(problems)}"
    return pytest.mark.fails_under_ci(reason=reason) if os.environ.get("CI") else pytest.mark.skip(reason=reason)


def pytest_runtest_setup(item):
    mark = item.get_closest_marker("fails_under_ci")
    if mark is not None:
        pytest.fail(f"CI runs every test, and this one cannot run here: {mark.kwargs['reason']}", pytrace=False)


def _sandbox_problems() -> list[str]:
    from derivative_animator.sandbox import probe

    found = probe()
    return [found.problem] if found.bwrap is None else []


needs_render = unless_missing(environment.render_problems(), f"this machine cannot render (fix: {environment.FIX})")
needs_sandbox = unless_missing(_sandbox_problems(), "no render sandbox")
