"""Training: the CLI end to end on a tiny budget (both models), the distributed path on two
logical CPUs, and the pieces of the recipe (best-weights restore, config validation)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from covid_xray import config
from covid_xray.config import PROJECT_ROOT
from covid_xray.training import TrainConfig, _best_weights_callback, _limit_per_class

TINY = ["--epochs", "1", "--augment-epochs", "1", "--max-per-class", "4", "--batch-size", "8", "--quiet"]


def run_cli(args, env_extra=None, timeout=900):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env_extra or {})}
    return subprocess.run(
        [sys.executable, *args], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="Unknown model"):
        TrainConfig(model="vgg")
    with pytest.raises(ValueError, match="protocol"):
        TrainConfig(protocol="kaggle")
    with pytest.raises(ValueError, match="strategy"):
        TrainConfig(strategy="tpu")
    assert TrainConfig(model="chexnet", protocol="paper").preprocessing == "unit"
    assert TrainConfig(model="chexnet").preprocessing == "imagenet"


def test_config_rejects_bad_schedules_and_folds():
    with pytest.raises(ValueError, match="at least one epoch"):
        TrainConfig(epochs=0, augment_epochs=0)
    with pytest.raises(ValueError, match=">= 0"):
        TrainConfig(epochs=-1)
    assert TrainConfig(epochs=0, augment_epochs=5).augment_epochs == 5  # augmented phase only
    with pytest.raises(ValueError, match="cv_fold"):
        TrainConfig(cv_folds=5, cv_fold=5)


def test_without_tensorflow_backend_one_device_and_no_distribution(monkeypatch):
    """Under e.g. KERAS_BACKEND=jax the recipe runs on one device; tf.distribute options say what they need."""
    from covid_xray import training

    monkeypatch.setattr(training, "_tensorflow", lambda: None)
    strategy = training.make_strategy("auto")
    assert strategy.num_replicas_in_sync == 1
    with strategy.scope():
        pass
    for name in ("mirrored", "multiworker"):
        with pytest.raises(RuntimeError, match="TensorFlow backend"):
            training.make_strategy(name)
    with pytest.raises(RuntimeError, match="TensorFlow backend"):
        training.configure_devices(logical_cpus=2)
    assert training.library_versions()["tensorflow"] is None


def test_compile_label_smoothing_and_weight_decay():
    import keras

    from covid_xray.training import _compile

    inputs = keras.Input((2,))
    model = _compile(
        keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(inputs)), 1e-3, 0.1, 0.01
    )
    assert model.loss.get_config()["label_smoothing"] == pytest.approx(0.1)
    assert model.optimizer.weight_decay == pytest.approx(0.01)
    y = np.array([[1.0, 0.0, 0.0]], np.float32)
    p = np.array([[1.0 - 2e-6, 1e-6, 1e-6]], np.float32)
    # Smoothing moves the target off the one-hot: a confident correct prediction now costs more.
    assert float(model.loss(y, p)) > float(keras.losses.CategoricalCrossentropy()(y, p)) + 0.1


def test_write_val_predictions(tmp_path):
    from covid_xray.config import CLASS_NAMES
    from covid_xray.data import Sample
    from covid_xray.training import write_val_predictions

    samples = [
        Sample(Path("/d/train/Covid/a.png"), "train", "Covid"),
        Sample(Path("/d/train/Normal/b.png"), "train", "Normal"),
    ]
    write_val_predictions(samples, np.array([[0.7, 0.2, 0.1], [0.6, 0.3, 0.1]]), tmp_path / "v.csv")
    rows = list(csv.DictReader(open(tmp_path / "v.csv")))
    assert [r["file"] for r in rows] == ["train/Covid/a.png", "train/Normal/b.png"]
    assert [r["predicted"] for r in rows] == ["Covid", "Covid"]
    assert list(rows[0]) == ["file", "true", "predicted", *(f"p_{c}" for c in CLASS_NAMES)]


def test_keep_best_weights_restores_lowest_val_loss():
    import keras

    inputs = keras.Input((1,))
    model = keras.Model(inputs, keras.layers.Dense(1)(inputs))
    cb = _best_weights_callback()()
    cb.set_model(model)
    losses = [0.9, 0.5, 0.7]
    snapshots = []
    for epoch, loss in enumerate(losses):
        model.set_weights([np.full((1, 1), float(epoch)), np.zeros(1)])
        snapshots.append(model.get_weights())
        cb.on_epoch_end(epoch, {"val_loss": loss})
    cb.on_train_end()
    assert cb.best_epoch == 2
    np.testing.assert_array_equal(model.get_weights()[0], snapshots[1][0])


def _toy_phases():
    """(plain, flipped, val, model_fn): a 4-feature toy problem whose "augmented" phase learns the
    opposite labels, so its validation loss only gets worse."""
    import keras
    import tensorflow as tf

    from covid_xray.training import _compile

    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4)).astype("float32")
    y = keras.utils.to_categorical((x[:, 0] > 0).astype(int), 3)
    plain = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    flipped = tf.data.Dataset.from_tensor_slices((x, y[:, [1, 0, 2]])).batch(16)
    val = tf.data.Dataset.from_tensor_slices((x, y)).batch(64)

    def model_fn():
        keras.utils.set_random_seed(0)
        inputs = keras.Input((4,))
        return _compile(keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(inputs)), 0.3)

    return plain, flipped, val, model_fn


def test_fit_phases_restores_best_weights_when_a_later_phase_never_improves(tmp_path):
    """Regression: a second phase that never beats the first phase's best val loss used to leave
    its own last weights in the model while `kept` named the first phase's epoch."""
    import tensorflow as tf

    from covid_xray.training import _fit_phases

    plain, flipped, val, model_fn = _toy_phases()
    cfg = TrainConfig(epochs=30, augment_epochs=3, early_stopping_patience=40, lr_patience=40, verbose=0)
    model, rows, kept = _fit_phases(
        cfg, model_fn, plain, flipped, val, None, tmp_path, tf.distribute.get_strategy()
    )
    assert kept["phase"] == "plain"
    assert min(r["val_loss"] for r in rows if r["phase"] == "augmented") > kept["val_loss"]
    final_loss = model.evaluate(val, verbose=0)[0]
    assert final_loss == pytest.approx(kept["val_loss"], rel=1e-4)


def test_refit_runs_every_epoch_and_keeps_the_last_weights(tmp_path):
    """--refit: no early stopping and no best epoch; the model saved is the one after the last epoch,
    even though validation (only logged) got worse; without validation data it trains all the same."""
    import tensorflow as tf

    from covid_xray.training import _fit_phases

    plain, flipped, val, model_fn = _toy_phases()
    cfg = TrainConfig(epochs=6, augment_epochs=4, early_stopping_patience=1, refit=True, verbose=0)
    model, rows, kept = _fit_phases(cfg, model_fn, plain, flipped, val, None, tmp_path, tf.distribute.get_strategy())
    assert [r["phase"] for r in rows] == ["plain"] * 6 + ["augmented"] * 4  # patience 1 stopped nothing
    assert kept == {"phase": "augmented", "epoch": 4, "val_loss": None}
    last_val = rows[-1]["val_loss"]
    assert last_val > min(r["val_loss"] for r in rows)  # a selecting run would have kept an earlier epoch
    assert model.evaluate(val, verbose=0)[0] == pytest.approx(last_val, rel=1e-4)

    cfg = TrainConfig(epochs=6, augment_epochs=0, early_stopping_patience=1, refit=True, verbose=0)
    model, rows, kept = _fit_phases(cfg, model_fn, plain, None, None, None, tmp_path, tf.distribute.get_strategy())
    assert len(rows) == 6 and all(np.isnan(r["val_loss"]) for r in rows) and kept["epoch"] == 6
    with pytest.raises(ValueError, match="paper protocol"):
        TrainConfig(refit=True, protocol="paper")


def test_refit_cli_trains_on_all_of_train_or_predicts_the_held_out_fold(tmp_path, data_dir):
    """`train.py --refit`: without folds every train image is trained on and nothing is validated;
    with --cv-folds the held-out fold is predicted (out of fold) but chooses nothing."""
    for name, extra in (("all", []), ("fold", ["--cv-folds", "3", "--cv-fold", "1"])):
        run = tmp_path / name
        result = run_cli(
            ["train.py", "--model", "davidnet", "--data-dir", str(data_dir), "--refit", *TINY, "--epochs", "2",
             "--run-dir", str(run), *extra]
        )
        assert result.returncode == 0, result.stderr[-2000:]
        meta = json.loads((run / "davidnet.json").read_text())
        assert meta["config"]["refit"] is True and meta["kept"] == {"phase": "augmented", "epoch": 1, "val_loss": None}
        assert meta["epochs_run"] == {"plain": 2, "augmented": 1}
        if name == "all":
            assert meta["split_sizes"]["val"] == 0 and meta["split_sizes"]["train"] == 12  # 4 per class
            assert meta["val_accuracy"] is None and not (run / "val_predictions.csv").exists()
            assert meta["selection"] == "none: fixed schedule (refit; all of train)"
        else:
            assert meta["split_sizes"]["val"] > 0 and (run / "val_predictions.csv").exists()
            assert meta["selection"].startswith("none: fixed schedule (refit; fold 1 of a 3-fold split")


def test_limit_per_class_keeps_order():
    from covid_xray.data import Sample

    samples = [Sample(Path(f"/x/train/Covid/{i}.png"), "train", "Covid") for i in range(5)]
    assert _limit_per_class(samples, 2) == samples[:2]


@pytest.mark.slow
def test_train_and_evaluate_davidnet_cli(tmp_path, data_dir):
    ckpt, runs, out = tmp_path / "ckpt", tmp_path / "runs", tmp_path / "reports"
    result = run_cli(
        ["train.py", "--model", "davidnet", *TINY, "--checkpoint-dir", str(ckpt), "--run-dir", str(runs)]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    meta = json.loads((ckpt / "davidnet.json").read_text())
    assert meta["preprocessing"] == "unit" and meta["protocol"] == "default"
    assert meta["kept"]["epoch"] == 1 and meta["split_sizes"]["train"] == 12
    assert set(meta["versions"]) >= {"tensorflow", "keras", "numpy"}
    assert len(meta["dataset_manifest"]) == 64 and len(meta["sha256"]) == 64
    assert (runs / "log_plain.csv").exists() and (runs / "tensorboard").is_dir()
    history = list(csv.DictReader(open(ckpt / "davidnet_history.csv")))
    assert [r["phase"] for r in history] == ["plain", "augmented"]

    args = ["-m", "covid_xray.studies.evaluate", "--model", "davidnet", "--checkpoint", str(ckpt / "davidnet.keras")]
    first = run_cli([*args, "--out", str(out)])
    assert first.returncode == 0, first.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    rows = list(csv.DictReader(open(out / "predictions.csv")))
    assert len(rows) == metrics["subsets"]["official"]["n"] == 66
    # The metrics agree with the predictions file.
    acc = np.mean([r["true"] == r["predicted"] for r in rows])
    assert metrics["subsets"]["official"]["accuracy"] == pytest.approx(acc)
    clean = [r for r in rows if r["leaked"] == "0"]
    assert metrics["subsets"]["leakage_free"]["n"] == len(clean) < 66
    for name in ("confusion_official.png", "confusion_leakage_free.png", "history.csv"):
        assert (out / name).exists()
    # Evaluation is deterministic: a second run writes the same predictions byte for byte.
    second = run_cli([*args, "--out", str(tmp_path / "again")])
    assert second.returncode == 0
    assert (tmp_path / "again" / "predictions.csv").read_bytes() == (out / "predictions.csv").read_bytes()


@pytest.mark.slow
def test_mirrored_strategy_on_two_logical_cpus(tmp_path, data_dir):
    result = run_cli(
        [
            "train.py",
            "--model",
            "davidnet",
            *TINY,
            "--augment-epochs",
            "0",
            "--strategy",
            "mirrored",
            "--logical-cpus",
            "2",
            "--checkpoint-dir",
            str(tmp_path),
            "--run-dir",
            str(tmp_path / "runs"),
        ]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    meta = json.loads((tmp_path / "davidnet.json").read_text())
    assert meta["strategy"] == "MirroredStrategy" and meta["replicas"] == 2


@pytest.mark.slow
def test_chexnet_cli_without_weights_says_how_to_fix(tmp_path, data_dir):
    result = run_cli(
        ["train.py", "--model", "chexnet", *TINY, "--checkpoint-dir", str(tmp_path)],
        {"COVID_XRAY_CHEXNET_WEIGHTS": str(tmp_path / "nope.h5")},
    )
    assert result.returncode != 0
    assert config.WEIGHTS_COMMAND in result.stderr
    assert not (tmp_path / "chexnet.keras").exists()


@pytest.mark.slow
def test_train_and_evaluate_chexnet_with_synthetic_weights(tmp_path, data_dir):
    from tests.chexnet_fixtures import write_keras2_chexnet_weights

    weights = tmp_path / "chexnet_base.h5"
    write_keras2_chexnet_weights(weights, seed=0)
    env = {"COVID_XRAY_CACHE": str(tmp_path / "cache")}
    ckpt, out = tmp_path / "ckpt", tmp_path / "reports"
    result = run_cli(
        [
            "train.py",
            "--model",
            "chexnet",
            *TINY,
            "--feature-views",
            "2",
            "--chexnet-weights",
            str(weights),
            "--checkpoint-dir",
            str(ckpt),
            "--run-dir",
            str(tmp_path / "runs"),
        ],
        env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    meta = json.loads((ckpt / "chexnet.json").read_text())
    assert meta["preprocessing"] == "imagenet" and len(meta["chexnet_base_sha256"]) == 64
    # Cached features: one file per split and view set; a rerun reuses them.
    assert len(list((tmp_path / "cache").glob("features_*.npy"))) == 3
    result = run_cli(
        [
            "-m",
            "covid_xray.studies.evaluate",
            "--model",
            "chexnet",
            "--checkpoint",
            str(ckpt / "chexnet.keras"),
            "--out",
            str(out),
        ]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for name in ("metrics.json", "predictions.csv", "confusion_official.png", "confusion_leakage_free.png"):
        assert (out / name).exists()


@pytest.mark.slow
def test_sweep_cross_validation_end_to_end(tmp_path, data_dir):
    """scripts/sweep.py --folds: one run per fold (augmented phase only), OOF scores from their predictions."""
    configs = tmp_path / "configs.json"
    configs.write_text(json.dumps({"aug-only": {"epochs": 0, "augment-epochs": 1}}))
    out = tmp_path / "sweep"
    base = "--max-per-class 6 --batch-size 8 --lr 1e-3"
    args = [
        "scripts/sweep.py",
        "--out",
        str(out),
        "--folds",
        "2",
        "--seeds",
        "3",
        "--base",
        base,
        "--configs",
        str(configs),
    ]
    result = run_cli(args)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert (
        summary["selected"] == "aug-only" and summary["seeds"] == [3] and summary["reference"] == "aug-only"
    )
    assert summary["configurations"]["aug-only"]["vs_reference"]["log_loss"] == 0.0
    assert summary["selected_beats_reference"] is False  # nothing beats itself
    seed = summary["configurations"]["aug-only"]["seeds"]["3"]
    rows, files = [], []
    for fold in (0, 1):
        run = out / "aug-only" / "seed3" / f"fold{fold}"
        meta = json.loads((run / "davidnet.json").read_text())
        assert meta["selection"] == f"fold {fold} of a 2-fold split of train"
        assert meta["config"]["epochs"] == 0 and meta["epochs_run"] == {"plain": 0, "augmented": 1}
        assert not (run / "davidnet.keras").exists()  # dropped unless --keep-checkpoints
        fold_rows = list(csv.DictReader(open(run / "logs" / "val_predictions.csv")))
        assert len(fold_rows) == meta["split_sizes"]["val"]
        rows += fold_rows
        files.append({r["file"] for r in fold_rows})
    assert not files[0] & files[1]
    assert seed["n"] == len(rows) and seed["kept"] == ["augmented:1", "augmented:1"]
    assert seed["accuracy"] == pytest.approx(np.mean([r["true"] == r["predicted"] for r in rows]))
    # Rerunning reuses the finished runs (nothing retrained) and scores the same.
    again = run_cli([*args, "--score-only", "--markdown"])
    assert again.returncode == 0 and json.loads((out / "summary.json").read_text()) == summary
    row = next(line for line in again.stdout.splitlines() if line.startswith("| `aug-only` |"))
    assert f"| {seed['log_loss']:.3f} | {seed['accuracy']:.3f} | n/a | n/a |" in row
    # A configuration with missing runs cannot be scored.
    configs.write_text(json.dumps({"never-run": {"lr": "1e-4"}}))
    missing = run_cli([*args, "--score-only"])
    assert missing.returncode == 1 and "no seed has complete runs" in missing.stderr


def test_sweep_paired_difference_flags_only_clear_improvements():
    import importlib.util

    spec = importlib.util.spec_from_file_location("sweep", PROJECT_ROOT / "scripts" / "sweep.py")
    sweep = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sweep)
    files = [f"train/Covid/{i}.png" for i in range(40)]
    rng = np.random.default_rng(0)
    ref_losses = rng.uniform(0.1, 1.0, size=40)

    def entry(losses, correct):
        return {
            "seeds": {
                "1": {
                    "per_image": {
                        f: (float(x), bool(c)) for f, x, c in zip(files, losses, correct, strict=True)
                    }
                }
            }
        }

    reference = entry(ref_losses, [True] * 30 + [False] * 10)
    clearly_better = entry(ref_losses - 0.2, [True] * 36 + [False] * 4)
    noisy = entry(ref_losses + rng.normal(0, 0.3, size=40) - 0.02, [True] * 30 + [False] * 10)
    d = sweep.paired_difference(clearly_better, reference)
    assert d["better"] and d["log_loss"] == pytest.approx(-0.2) and d["accuracy"] == pytest.approx(0.15)
    assert d["log_loss_se"] == pytest.approx(0.0, abs=1e-9)
    n = sweep.paired_difference(noisy, reference)
    assert not n["better"] and n["log_loss_se"] > 0.03


def test_cli_rejects_inconsistent_flags_with_a_message(capsys):
    sys.path.insert(0, str(PROJECT_ROOT))
    import train

    with pytest.raises(SystemExit) as exit_info:
        train.main(["--cv-folds", "5", "--cv-fold", "5"])
    assert exit_info.value.code == 2
    assert "cv_fold must be in 0..4" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train.main(["--epochs", "0", "--augment-epochs", "0"])
    assert "at least one epoch" in capsys.readouterr().err


def test_help_names_boolean_flags_by_what_they_turn_on():
    """`--no-flip ... (default: True)` read inverted; each switch now shows both forms and the default."""
    sys.path.insert(0, str(PROJECT_ROOT))
    import train

    parser = train.build_parser()
    text = " ".join(parser.format_help().split())
    for flag in ("class-weights", "flip"):
        assert f"--{flag}, --no-{flag}" in text
        assert f"--no-{flag} (default" not in text  # the negative form never carries the default alone
    assert parser.parse_args([]).class_weights is True and parser.parse_args([]).flip is True
    args = parser.parse_args(["--no-class-weights", "--no-flip"])
    assert args.class_weights is False and args.flip is False


def _sha(path: Path) -> str | None:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None


def test_plain_cli_run_leaves_the_shipped_checkpoint_alone(tmp_path, data_dir, monkeypatch, capsys):
    """`python train.py` saves into its run folder and says so; only --install/--checkpoint-dir replace."""
    sys.path.insert(0, str(PROJECT_ROOT))
    import train
    from covid_xray.config import resolve_checkpoint_dir

    monkeypatch.delenv("COVID_XRAY_CHECKPOINT_DIR", raising=False)
    shipped = resolve_checkpoint_dir() / "davidnet.keras"
    files = (shipped, shipped.with_suffix(".json"), shipped.with_name("davidnet_history.csv"))
    before = [_sha(path) for path in files]
    run = tmp_path / "run"
    assert train.main(["--model", "davidnet", *TINY, "--augment-epochs", "0", "--run-dir", str(run)]) == 0
    out = capsys.readouterr().out
    assert [_sha(path) for path in files] == before
    saved = ("davidnet.keras", "davidnet.json", "davidnet_history.csv", "history.csv", "val_predictions.csv")
    for name in saved:
        assert (run / name).exists(), name
    assert json.loads((run / "davidnet.json").read_text())["checkpoint"] == "davidnet.keras"
    # The hint evaluates the run's own checkpoint into the run folder, not over reports/davidnet/.
    next_line = next(line for line in out.splitlines() if line.startswith("next:"))
    assert f"--checkpoint {run / 'davidnet.keras'}" in next_line and f"--out {run / 'report'}" in next_line
    assert "--install" in out


def test_next_hint_names_the_folder_it_saved_to(tmp_path):
    sys.path.insert(0, str(PROJECT_ROOT))
    import train
    from covid_xray.config import resolve_checkpoint_dir

    ckpt = tmp_path / "ckpt"
    custom = train.next_hint("davidnet", ckpt / "davidnet.keras", tmp_path / "run", installed=True)
    assert f"--checkpoint {ckpt / 'davidnet.keras'} --out {ckpt / 'report'}" in custom
    assert "run folder" not in custom
    served = resolve_checkpoint_dir() / "davidnet.keras"
    installed = train.next_hint("davidnet", served, tmp_path / "run", installed=True)
    assert installed == f"next: {config.EVALUATE_COMMAND.format(name='davidnet')} --checkpoint {served}"


def test_programmatic_train_saves_where_asked_and_reports_progress(tmp_path, data_dir):
    """training.train(TrainConfig(checkpoint_dir=...), progress=...) as first-start provisioning calls it."""
    from covid_xray.training import train

    calls = []
    cfg = TrainConfig(
        model="davidnet",
        data_dir=str(data_dir),
        epochs=2,
        augment_epochs=1,
        max_per_class=4,
        batch_size=8,
        early_stopping_patience=5,
        checkpoint_dir=str(tmp_path / "ckpt"),
        run_dir=str(tmp_path / "run"),
        verbose=0,
    )
    result = train(cfg, progress=lambda stage, done, total: calls.append((stage, done, total)))
    assert result.checkpoint == tmp_path / "ckpt" / "davidnet.keras" and result.checkpoint.exists()
    assert result.run_dir == tmp_path / "run" and (tmp_path / "run" / "val_predictions.csv").exists()
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == [
        "davidnet.json",
        "davidnet.keras",
        "davidnet_history.csv",
    ]
    assert calls == [("epoch", 1, 3), ("epoch", 2, 3), ("epoch", 3, 3)]


@pytest.mark.slow
def test_chexnet_head_reports_feature_progress_into_the_configured_cache(tmp_path, data_dir):
    from covid_xray.training import train
    from tests.chexnet_fixtures import write_keras2_chexnet_weights

    weights = tmp_path / "chexnet_base.h5"
    write_keras2_chexnet_weights(weights, seed=0)
    cfg = TrainConfig(
        model="chexnet",
        data_dir=str(data_dir),
        epochs=1,
        augment_epochs=1,
        max_per_class=2,
        batch_size=8,
        feature_views=2,
        chexnet_weights=str(weights),
        checkpoint_dir=str(tmp_path / "ckpt"),
        run_dir=str(tmp_path / "run"),
        feature_cache_dir=str(tmp_path / "features"),
        verbose=0,
    )
    calls = []
    train(cfg, progress=lambda stage, done, total: calls.append((stage, done, total)))
    features = [c for c in calls if c[0] == "features"]
    # 6 train + 6 val images, plus 2 augmented views of the 6 train images.
    assert features[-1] == ("features", 24, 24) and all(t == 24 for _, _, t in features)
    assert len(list((tmp_path / "features").glob("features_*.npy"))) == 3
    assert [c for c in calls if c[0] == "epoch"][-1][2] == 2
    assert (tmp_path / "ckpt" / "chexnet.keras").exists()
    # A second run reads the cache: no image goes through the base again.
    calls.clear()
    train(cfg, progress=lambda stage, done, total: calls.append((stage, done, total)))
    assert not [c for c in calls if c[0] == "features"]
