"""Shared by the report package's tests."""

from __future__ import annotations

import pytest

from covid_xray import config


@pytest.fixture(autouse=True)
def no_provisioned_reports(tmp_path_factory, monkeypatch):
    """An empty cache folder: reports from a first-start provisioning never stand in for the
    folder under test."""
    monkeypatch.setenv(config.HOME_ENV_VAR, str(tmp_path_factory.mktemp("home")))
    monkeypatch.delenv(config.REPORTS_DIR_ENV_VAR, raising=False)
