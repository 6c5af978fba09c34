"""`python -m covid_xray.studies.data`: download (a fake kagglehub, no network), info and audit."""

from __future__ import annotations

import os
import subprocess
import sys
import types

import pytest

from covid_xray import audit, config, data
from covid_xray.studies import data as data_study


def test_audit_default_path_follows_reports_dir(synth_module, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(config.REPORTS_DIR_ENV_VAR, str(tmp_path / "reports"))
    assert audit.default_audit_path() == (tmp_path / "reports" / "audit.json").resolve()
    assert data_study.main(["audit", "--data-dir", str(synth_module)]) == 0
    assert audit.AuditReport.from_json().counts()["exact"]["total"] == 2
    assert "test/Covid/leak.png" in capsys.readouterr().out


def test_download_with_fake_kagglehub(synth_module, tmp_path, monkeypatch, capsys):
    requested = []

    def dataset_download(handle):
        requested.append(handle)
        return str(synth_module.parent)  # like kagglehub: the folder holding Covid19-dataset/

    monkeypatch.setitem(sys.modules, "kagglehub", types.SimpleNamespace(dataset_download=dataset_download))
    dest = tmp_path / "data" / "Covid19-dataset"
    assert data_study.main(["download", "--dest", str(dest)]) == 0
    assert requested == [config.KAGGLE_DATASET]
    out = capsys.readouterr().out
    assert f"export {config.DATA_ENV_VAR}={dest.resolve()}" in out
    assert len(data.list_samples(dest)) == 31 and not dest.is_symlink()
    # A second run finds the data in place and does not download again.
    assert data_study.main(["download", "--dest", str(dest)]) == 0
    assert len(requested) == 1
    # --link makes a symlink into the kagglehub cache instead of a copy.
    linked = tmp_path / "linked"
    assert data_study.main(["download", "--dest", str(linked), "--link"]) == 0
    assert linked.is_symlink() and linked.resolve() == synth_module.resolve()


def test_download_without_kagglehub_says_how_to_install(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "kagglehub", None)  # makes `import kagglehub` fail
    assert data_study.main(["download", "--dest", str(tmp_path / "d")]) == 2
    assert "pip install kagglehub" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


def test_info_cli(synth_module, capsys):
    assert data_study.main(["info", "--data-dir", str(synth_module)]) == 0
    out = capsys.readouterr().out
    assert "train" in out and "test" in out
    assert data.dataset_manifest_hash(data.list_samples(synth_module)) in out


@pytest.mark.slow
def test_audit_cli_subprocess(data_dir, real_audit, tmp_path):
    out = tmp_path / "audit.json"
    env = {**os.environ, config.DATA_ENV_VAR: str(data_dir), "TF_CPP_MIN_LOG_LEVEL": "2"}
    result = subprocess.run(
        [sys.executable, "-m", "covid_xray.studies.data", "audit", "--out", str(out), "--threshold", "6"],
        capture_output=True,
        text=True,
        env=env,
        cwd=config.PROJECT_ROOT,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "11 across train/test" in result.stdout
    assert audit.AuditReport.from_json(out) == real_audit


def test_cli_reports_missing_data(tmp_path, capsys):
    assert data_study.main(["info", "--data-dir", str(tmp_path / "none")]) == 2
    assert config.DOWNLOAD_COMMAND in capsys.readouterr().err
