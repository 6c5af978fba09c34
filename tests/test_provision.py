"""First-start provisioning against loopback stand-ins: downloads, checks, faults, idempotence.

Everything downstream of the HTTP request is the real code: the zip is built from the real
dataset in ../shared, the weights file is a synthetic Keras-2 CheXNet file checked by the real
loader, and the head is trained and evaluated by the real training and evaluation code.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest

from covid_xray import config, provision
from covid_xray.provision import FAILED, READY, UNAVAILABLE, Provisioner, Settings
from tests.standins import LoopbackServer, make_chexnet_weights, make_dataset_zip

# The head trained in tests: the shipped recipe's code path on a tiny budget.
TINY_HEAD = ("epochs=2", "augment_epochs=1", "feature_views=1", "max_per_class=4", "batch_size=8")


@pytest.fixture(scope="module")
def files(data_dir, tmp_path_factory):
    """The stand-in files: the dataset zip, a wrong-layout zip, a short zip and synthetic weights."""
    folder = tmp_path_factory.mktemp("standin_files")
    return {
        "/Covid19-dataset.zip": make_dataset_zip(data_dir, folder / "dataset.zip"),
        "/wrong-layout.zip": make_dataset_zip(data_dir, folder / "wrong.zip", top="images"),
        "/missing-files.zip": make_dataset_zip(data_dir, folder / "short.zip", drop=3),
        "/weights.h5": make_chexnet_weights(folder / "weights.h5"),
    }


@pytest.fixture()
def server(files):
    truncated = {"/truncated.zip": files["/Covid19-dataset.zip"].read_bytes()[:200_000]}
    with LoopbackServer(files, faults={"/error.zip": 500, "/error.h5": 500}, truncated=truncated) as srv:
        yield srv


@pytest.fixture()
def home(tmp_path, monkeypatch):
    """An empty cache as COVID_XRAY_HOME, and no dataset or weights set in the environment."""
    home = tmp_path / "home"
    monkeypatch.setenv(config.HOME_ENV_VAR, str(home))
    monkeypatch.delenv(config.DATA_ENV_VAR, raising=False)
    monkeypatch.delenv(config.CHEXNET_WEIGHTS_ENV_VAR, raising=False)
    monkeypatch.setattr(config, "DEFAULT_DATA_DIR", tmp_path / "no-project-data")
    monkeypatch.setattr(config, "DEFAULT_CHEXNET_WEIGHTS", tmp_path / "no-project-weights.h5")
    monkeypatch.setattr(config, "CHECKPOINT_DIR", tmp_path / "no-project-checkpoints")
    monkeypatch.setattr(config, "REPORTS_DIR", tmp_path / "no-project-reports")
    return home


def leftovers(home: Path) -> list[str]:
    """Staging folders and partial downloads left in the cache."""
    return sorted(p.name for p in home.rglob("*") if p.name.startswith(".staging") or p.suffix == ".part")


def run(settings: Settings) -> provision.Status:
    return Provisioner(settings).run()


# ---------------------------------------------------------------------------
# Settings and adapters.
# ---------------------------------------------------------------------------
def test_settings_from_environment():
    settings = Settings.from_env(
        {
            provision.DATASET_SOURCE_ENV_VAR: "file:///tmp/x.zip",
            provision.CHEXNET_SHA256_ENV_VAR: " ABC ",
            provision.OFFLINE_ENV_VAR: "1",
            provision.HEAD_TRAIN_ARGS_ENV_VAR: "epochs=3 seed=7",
        }
    )
    assert settings.dataset_source == "file:///tmp/x.zip"
    assert settings.chexnet_source == provision.DEFAULT_CHEXNET_SOURCE
    assert settings.chexnet_sha256 == "abc" and settings.offline
    assert provision.head_overrides(settings.head_train_args) == {"epochs": 3, "seed": 7}
    assert Settings.from_env({}).dataset_source == f"kaggle:{config.KAGGLE_DATASET}"
    assert not Settings.from_env({}).offline


@pytest.mark.parametrize("token", ["epochs", "no_such_field=1", "epochs=many"])
def test_head_overrides_refuse_bad_tokens(token):
    with pytest.raises(provision.ProvisionError, match=provision.HEAD_TRAIN_ARGS_ENV_VAR):
        provision.head_overrides((token,))


def test_source_kinds():
    assert provision.source_kind("kaggle:owner/name") == "kaggle"
    assert provision.source_kind("file:///x.zip") == "file"
    assert provision.source_kind("https://example.org/x.zip") == "http"
    for bad in ("kaggle:", "ftp://x", "/tmp/x.zip"):
        with pytest.raises(provision.ProvisionError, match="Unsupported source"):
            provision.source_kind(bad)


def test_home_defaults(monkeypatch, tmp_path):
    monkeypatch.delenv(config.HOME_ENV_VAR, raising=False)
    monkeypatch.setattr(config, "SPACES_PERSISTENT_DIR", tmp_path / "absent")
    assert config.resolve_home() == Path.home() / ".cache" / "covid-xray"
    monkeypatch.setattr(config, "SPACES_PERSISTENT_DIR", tmp_path)
    assert config.resolve_home() == tmp_path / "covid-xray"


def test_kaggle_adapter_passes_the_handle_to_kagglehub(monkeypatch, tmp_path):
    calls = []
    fake = types.SimpleNamespace(dataset_download=lambda handle: calls.append(handle) or str(tmp_path))
    monkeypatch.setitem(sys.modules, "kagglehub", fake)
    assert provision.kaggle_download("owner/name") == tmp_path
    assert calls == ["owner/name"]

    def broken(handle):
        raise ConnectionError("no route to host")

    monkeypatch.setitem(sys.modules, "kagglehub", types.SimpleNamespace(dataset_download=broken))
    with pytest.raises(provision.ProvisionError, match="Kaggle download of owner/name failed"):
        provision.kaggle_download("owner/name")


def test_dataset_from_kaggle_is_copied_and_checked(home, data_dir, monkeypatch):
    """The kaggle: source runs the same checks on kagglehub's folder, then copies it into the cache."""
    folder = data_dir.parent  # kagglehub returns the folder above Covid19-dataset/
    monkeypatch.setitem(
        sys.modules, "kagglehub", types.SimpleNamespace(dataset_download=lambda h: str(folder))
    )
    status = run(
        Settings(
            offline=False, dataset_source=f"kaggle:{config.KAGGLE_DATASET}", chexnet_source="kaggle:x/none"
        )
    )
    assert status.get("dataset").state == READY
    assert provision.check_dataset(config.home_data_dir()).startswith("317 images")


# ---------------------------------------------------------------------------
# Dataset and weights over loopback HTTP.
# ---------------------------------------------------------------------------
def test_dataset_and_weights_download_then_a_second_start_reuses_them(home, server, monkeypatch):
    settings = Settings(
        dataset_source=server.url("/Covid19-dataset.zip"), chexnet_source=server.url("/weights.h5")
    )
    # Stop before the (slow) head: this test is about the downloads.
    monkeypatch.setattr(
        Provisioner, "provision_head", lambda self: (_ for _ in ()).throw(RuntimeError("stop"))
    )
    status = run(settings)
    assert status.get("dataset").state == READY, status.get("dataset")
    assert status.get("weights").state == READY, status.get("weights")
    assert status.get("head").state == FAILED
    assert provision.check_dataset(config.home_data_dir()) == "317 images (train 251, test 66)"
    assert config.resolve_data_dir() == config.home_data_dir()
    assert config.resolve_chexnet_weights() == config.home_chexnet_weights()
    assert leftovers(home) == []
    hits = dict(server.hits)
    status = run(settings)
    assert status.get("dataset").state == READY and status.get("weights").state == READY
    assert dict(server.hits) == hits, "a second start downloaded again"


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/error.zip", "HTTP 500"),
        ("/truncated.zip", "cut short"),
        ("/wrong-layout.zip", "no top folder Covid19-dataset/"),
        ("/missing-files.zip", "unexpected image counts"),
        ("/nothing-here.zip", "HTTP 404"),
    ],
)
def test_dataset_faults_leave_nothing_trusted(home, server, path, message, caplog):
    status = run(Settings(dataset_source=server.url(path), chexnet_source=server.url("/error.h5")))
    dataset = status.get("dataset")
    assert dataset.state == FAILED and message in dataset.message
    assert str(home) not in dataset.message
    assert not config.home_data_dir().exists()
    assert leftovers(home) == []
    # The head needs the dataset: it is not attempted, and says why.
    assert status.get("head").state == UNAVAILABLE and "dataset" in status.get("head").message
    assert any(message in r.getMessage() for r in caplog.records if r.levelname == "ERROR")


def test_weights_with_a_wrong_sha256_are_refused(home, server, files):
    status = run(
        Settings(
            dataset_source=server.url("/error.zip"),
            chexnet_source=server.url("/weights.h5"),
            chexnet_sha256="0" * 64,
        )
    )
    assert status.get("weights").state == FAILED
    assert "SHA-256" in status.get("weights").message
    assert not config.home_chexnet_weights().exists()
    assert leftovers(home) == []


def test_weights_that_are_not_densenet121_are_refused(home, server, files, tmp_path):
    server.routes["/not-weights.h5"] = b"this is not an HDF5 file"
    status = run(
        Settings(dataset_source=server.url("/error.zip"), chexnet_source=server.url("/not-weights.h5"))
    )
    assert status.get("weights").state == FAILED
    assert "not a complete CheXNet DenseNet121" in status.get("weights").message
    assert not config.home_chexnet_weights().exists()


def test_weights_from_a_file_url_with_the_right_sha256(home, files):
    from covid_xray.hashing import sha256_file

    weights = files["/weights.h5"]
    status = run(
        Settings(
            dataset_source="file:///nonexistent/dataset.zip",
            chexnet_source=weights.as_uri(),
            chexnet_sha256=sha256_file(weights),
        )
    )
    assert status.get("dataset").state == FAILED
    assert status.get("weights").state == READY
    assert sha256_file(config.home_chexnet_weights()) == sha256_file(weights)


def test_offline_mode_downloads_nothing(home, server):
    status = run(
        Settings(
            dataset_source=server.url("/Covid19-dataset.zip"),
            chexnet_source=server.url("/weights.h5"),
            offline=True,
        )
    )
    assert {s.state for s in status.snapshot().values()} == {UNAVAILABLE}
    assert sum(server.hits.values()) == 0
    assert not home.exists() or not any(home.iterdir())


# ---------------------------------------------------------------------------
# The whole chain: dataset, weights, head trained and evaluated, then served.
# ---------------------------------------------------------------------------
@pytest.mark.slow
def test_first_start_trains_and_evaluates_the_head_then_a_second_start_does_nothing(
    home, server, monkeypatch
):
    from covid_xray import report, training

    settings = Settings(
        dataset_source=server.url("/Covid19-dataset.zip"),
        chexnet_source=server.url("/weights.h5"),
        head_train_args=TINY_HEAD,
    )
    ready = []
    status = Provisioner(settings, on_ready=ready.append).run()
    assert [status.get(s).state for s in provision.STEPS] == [READY] * 3, status.snapshot()
    assert ready == list(provision.STEPS)
    checkpoint = config.home_checkpoint_dir() / "chexnet.keras"
    assert checkpoint.exists() and checkpoint.with_suffix(".json").exists()
    assert config.get_model_spec("chexnet").checkpoint_path() == checkpoint
    reports = config.home_reports_dir() / "chexnet"
    for name in ("metrics.json", "predictions.csv", "confusion_official.png", "confusion_leakage_free.png"):
        assert (reports / name).exists(), name
    metrics = report.load_metrics("chexnet")
    assert metrics["subsets"]["official"]["n"] == 66
    assert len(report.load_predictions("chexnet")) == 66
    assert leftovers(home) == []

    # A second start with a full cache: no download, no training.
    monkeypatch.setattr(training, "train", lambda *a, **k: pytest.fail("trained again"))
    hits = dict(server.hits)
    status = run(settings)
    assert [status.get(s).state for s in provision.STEPS] == [READY] * 3
    assert dict(server.hits) == hits

    # The trained head serves: the predictor loads it from the cache.
    from covid_xray.inference import Predictor

    predictor = Predictor({})
    assert predictor.load("chexnet", warm_up=False)
    result = predictor.predict(str(config.home_data_dir() / "test/Covid/0100.jpeg"))
    assert result.models["chexnet"].available and result.models["chexnet"].heatmap is not None
