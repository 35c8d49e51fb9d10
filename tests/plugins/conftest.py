"""Fixtures for the plugin tests (helpers live in plugin_helpers.py)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def pdir(tmp_path: Path) -> Path:
    d = tmp_path / "plugins"
    d.mkdir()
    return d
