"""Bad input gets a clear error, before any training: names the problem and the fix."""

import subprocess
import sys

import numpy as np
import pytest

from app.config import ConfigError, compose
from app.simulation import preflight
from tasks.common.data import DataError, load_dataset
from tests.conftest import ROOT


def test_typo_in_a_key_lists_the_valid_keys():
    with pytest.raises(ConfigError) as err:
        compose(["num_clinets=5"])
    msg = str(err.value)
    assert "unknown config key 'num_clinets'" in msg and "did you mean num_clients" in msg
    assert "valid top-level keys:" in msg and "num_rounds" in msg


def test_typo_in_a_nested_key_lists_its_siblings():
    with pytest.raises(ConfigError, match="keys under 'strategy': .*strategy.mu"):
        compose(["strategy.muu=0.3"])


def test_unknown_choice_lists_the_valid_ones():
    with pytest.raises(ConfigError, match="unknown choice strategy=fedx; valid strategy choices: .*fedbyol.*fedu"):
        compose(["strategy=fedx"])


def test_command_line_typo_exits_with_the_message():
    proc = subprocess.run([sys.executable, "main.py", "strategy=fedu", "nm_rounds=3"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "unknown config key 'nm_rounds'" in proc.stderr and "did you mean num_rounds" in proc.stderr


@pytest.mark.parametrize("override, message", [
    ("num_clients=0", "num_clients must be an integer >= 1"),
    ("fraction_fit=1.5", r"fraction_fit must be in \(0, 1\]"),
    ("fraction_fit=0", r"fraction_fit must be in \(0, 1\]"),
    ("strategy.mu=-0.1", "strategy.mu must be >= 0"),
    ("strategy.predictor=both", "strategy.predictor='both' is not valid"),
    ("wandb.mode=maybe", "wandb.mode='maybe'"),
    ("min_fit_clients=9", r"min_fit_clients must be in \[1, 5\]"),
    ("checkpoint_every=-1", "checkpoint_every must be an integer >= 0"),
    ("round_timeout=0", "round_timeout must be null or > 0 seconds"),
    ("faults.client_raise=[1,2]", r"faults.client_raise must be a list of \[partition_id, round\] pairs"),
    ("examples_per_client=10", "examples_per_client must be null or an integer >= batch_size"),
])
def test_values_out_of_range(make_cfg, override, message):
    with pytest.raises(ConfigError, match=message):
        preflight(make_cfg(override))


def test_impossible_partition_is_refused_before_training(make_cfg):
    cfg = make_cfg("dataset=cifar10", "num_clients=11", "partition=classes")
    with pytest.raises(Exception, match="11 clients x 1 classes each needs 11 classes but the dataset has 10"):
        preflight(cfg)


def test_missing_data_names_the_paths_searched_and_the_fix(tmp_path):
    with pytest.raises(DataError) as err:
        load_dataset("cifar100", str(tmp_path), str(tmp_path / "cache"), download=False)
    msg = str(err.value)
    assert str(tmp_path / "cifar100.npz") in msg and str(tmp_path / "cifar-100-python") in msg
    assert "data_dir=" in msg and "FEDSSL_DATA_DIR" in msg


@pytest.mark.parametrize("arrays, message", [
    ({"x_train": np.zeros((4, 32, 32, 3), np.uint8), "y_train": np.zeros(4, np.int64)}, r"missing keys \['x_test', 'y_test'\]"),
    ({"x_train": np.zeros((4, 32, 32, 3), np.float32), "y_train": np.zeros(4, np.int64),
      "x_test": np.zeros((2, 32, 32, 3), np.uint8), "y_test": np.zeros(2, np.int64)}, "x_train has dtype float32"),
    ({"x_train": np.zeros((4, 32, 32, 3), np.uint8), "y_train": np.array([0, 1, 2, 10]),
      "x_test": np.zeros((2, 32, 32, 3), np.uint8), "y_test": np.zeros(2, np.int64)}, r"labels in \[0, 10\], expected 0..9"),
    ({"x_train": np.zeros((4, 32, 32, 3), np.uint8), "y_train": np.zeros(3, np.int64),
      "x_test": np.zeros((2, 32, 32, 3), np.uint8), "y_test": np.zeros(2, np.int64)}, r"y_train has shape \(3,\)"),
])
def test_malformed_data_file_is_refused(tmp_path, arrays, message):
    np.savez(tmp_path / "mnist.npz", **arrays)
    with pytest.raises(DataError, match=message):
        load_dataset("mnist", str(tmp_path), str(tmp_path / "cache"), download=False)


def test_corrupt_data_file_is_refused(tmp_path):
    (tmp_path / "mnist.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="cannot be read as a .npz file"):
        load_dataset("mnist", str(tmp_path), str(tmp_path / "cache"), download=False)


def test_mnist_is_standardised_to_32x32x3(data_dir, cache_dir):
    ds = load_dataset("mnist", str(data_dir), str(cache_dir))
    assert ds.x_train.shape == (60000, 32, 32, 3) and ds.x_train.dtype == np.uint8
    assert ds.num_classes == 10 and ds.y_test.shape == (10000,)


def _write_idx(path, array, magic):
    import struct

    with open(path, "wb") as f:
        f.write(struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape))
        f.write(array.astype(np.uint8).tobytes())


def test_torchvision_download_layout_is_read(tmp_path, data_dir):
    """A user with torchvision's MNIST folder (no .npz) gets the same arrays."""
    with np.load(data_dir / "mnist.npz") as z:
        x, y, xt, yt = z["x_train"][:50], z["y_train"][:50], z["x_test"][:20], z["y_test"][:20]
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    _write_idx(raw / "train-images-idx3-ubyte", x, 0x803)
    _write_idx(raw / "train-labels-idx1-ubyte", y, 0x801)
    _write_idx(raw / "t10k-images-idx3-ubyte", xt, 0x803)
    _write_idx(raw / "t10k-labels-idx1-ubyte", yt, 0x801)
    ds = load_dataset("mnist", str(tmp_path), str(tmp_path / "cache"), download=False)
    assert ds.x_train.shape == (50, 32, 32, 3)
    assert np.array_equal(ds.x_train[:, 2:30, 2:30, 0], x) and np.array_equal(ds.y_test, yt)


def test_evaluate_mode_refuses_missing_corrupt_and_foreign_checkpoints(make_cfg, smoke_overrides, tmp_path):
    from app.commands import evaluate
    from tasks.common.checkpoint import CheckpointError, save_checkpoint

    command = [o for o in smoke_overrides if not o.startswith("output_dir=")] + [f"output_dir={tmp_path / 'out'}"]
    with pytest.raises(CheckpointError, match="checkpoint=init"):
        evaluate(command + ["mode=evaluate"])
    with pytest.raises(CheckpointError, match="does not exist"):
        evaluate(command + ["mode=evaluate", f"checkpoint={tmp_path / 'nope.pt'}"])
    (tmp_path / "bad.pt").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="corrupt"):
        evaluate(command + ["mode=evaluate", f"checkpoint={tmp_path / 'bad.pt'}"])
    trained = make_cfg("strategy=fedu")
    save_checkpoint(tmp_path / "old.pt", trained, ["online.x"], {"global": [np.zeros(2)]}, 2)  # another layout
    with pytest.raises(CheckpointError, match="keys do not match"):
        evaluate(command + ["mode=evaluate", f"checkpoint={tmp_path / 'old.pt'}"])
    assert not (tmp_path / "out").exists()  # nothing written for a refused checkpoint


def test_evaluate_mode_keeps_the_checkpoints_protocol_unless_told(make_cfg, smoke_overrides, tmp_path):
    """Evaluating a checkpoint reproduces its run: the run's eval sizes, not this command's defaults."""
    from app.federation import build_layout
    from app.offline import evaluation_setup
    from tasks.common.checkpoint import save_checkpoint

    run_command = ["experiment=smoke", "strategy=fedu", "eval.bank_size=300", "eval.knn_k=7"]
    trained = make_cfg(*run_command[1:])
    trained["command_line"] = run_command  # as main.py records it
    layout, init = build_layout(trained)
    ckpt = save_checkpoint(tmp_path / "c.pt", trained, layout.keys, {"global": init}, 2)
    cfg = make_cfg("mode=evaluate", f"checkpoint={ckpt}", "eval.semi=true")
    setup = evaluation_setup(smoke_overrides + ["mode=evaluate", f"checkpoint={ckpt}", "eval.semi=true"])
    run_cfg, models = setup.cfg, setup.models
    assert run_cfg["eval"]["bank_size"] == 300 and run_cfg["eval"]["knn_k"] == 7 and run_cfg["eval"]["semi"] is True
    assert run_cfg["strategy"]["name"] == "fedu" and run_cfg["output_dir"] == cfg["output_dir"]
    assert all(np.array_equal(a, b) for a, b in zip(models["global"], init))
