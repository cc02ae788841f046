"""Environment and command-line syntax problems end in one line naming the key or path and the fix.

A device this machine lacks, an output_dir that is a file or cannot be written, a cache_dir that
cannot be written, a missing data_dir, an override Hydra cannot read; `resume=` reads its path
exactly as `output_dir=` does; the helper scripts refuse wrong input in one line too.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from app.config import ConfigError, override_value, parse_overrides
from tests.conftest import ROOT, main_py, one_line_error, refused_by_main_py, smoke_run


def unwritable(tmp_path: Path) -> Path:
    """A folder path nothing can be written under (chmod 555; as root, /sys, read-only to root too)."""
    if os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o555)
        return locked / "out"
    probe = Path("/sys/fedssl-write-probe")
    try:
        probe.mkdir()
    except OSError:
        return probe
    probe.rmdir()
    pytest.skip("no folder here refuses writes to root")


@pytest.fixture
def smoke(smoke_overrides):
    return [o for o in smoke_overrides if not o.startswith("output_dir=")]


# ------------------------------------------------------------------------------------- device
def test_cuda_without_cuda_is_refused_in_one_line_before_anything_starts(smoke, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    out = tmp_path / "run"
    message = refused_by_main_py(*smoke, "device=cuda", f"output_dir={out}")
    assert message.startswith("error: device=cuda: CUDA is not available on this machine") and "device=cpu" in message
    assert not out.exists()


def test_a_cuda_device_this_machine_lacks_is_refused_in_every_mode(smoke, tmp_path, ssl_checkpoint):
    """cuda:99 is missing on any machine (without CUDA: the CUDA message; with it: which devices exist)."""
    for argv in ([*smoke, f"output_dir={tmp_path / 'train'}"],
                 ["mode=evaluate", f"checkpoint={ssl_checkpoint}", f"output_dir={tmp_path / 'evaluate'}"],
                 ["mode=evaluate", "checkpoint=init", *smoke, f"output_dir={tmp_path / 'init'}"],
                 ["mode=export", f"checkpoint={ssl_checkpoint}", f"output_dir={tmp_path / 'export'}"],
                 ["mode=embed", f"checkpoint={ssl_checkpoint}", f"images={tmp_path}", f"output_dir={tmp_path / 'e'}"]):
        message = one_line_error([*argv, "device=cuda:99"])
        assert message.startswith("error: device=cuda:99: ") and "device=auto" in message, message
    assert sorted(p.name for p in tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------ folders
def test_an_output_dir_that_is_a_file_or_under_one_is_refused(smoke, tmp_path):
    (tmp_path / "a_file").write_text("x")
    message = refused_by_main_py(*smoke, f"output_dir={tmp_path / 'a_file'}")
    assert message == (f"error: output_dir={tmp_path / 'a_file'} is a file, not a folder; give output_dir=<a folder> "
                       f"(it is created when missing)")
    message = one_line_error([*smoke, f"output_dir={tmp_path / 'a_file' / 'run'}"])
    assert f"{tmp_path / 'a_file'} is a file, so no folder can be made under it" in message
    assert (tmp_path / "a_file").read_text() == "x"


def test_an_output_dir_that_cannot_be_written_is_refused(smoke, tmp_path):
    out = unwritable(tmp_path)
    message = one_line_error([*smoke, f"output_dir={out}"])
    assert message.startswith(f"error: output_dir={out} is not writable (") and "give output_dir=<a folder you can" in message
    assert not out.exists()


def test_a_cache_dir_that_cannot_be_written_is_refused_before_training(data_dir, tmp_path):
    cache = unwritable(tmp_path)
    message = one_line_error(["experiment=smoke", f"data_dir={data_dir}", f"cache_dir={cache}",
                              f"output_dir={tmp_path / 'run'}"])
    assert message.startswith(f"error: cache_dir={cache}: cannot write the decoded arrays there (")
    assert "give cache_dir=<a folder you can write to" in message and "FEDSSL_CACHE_DIR" in message
    assert not (tmp_path / "run").exists()


def test_a_missing_data_dir_is_one_line_naming_it(tmp_path):
    missing = tmp_path / "no_such_folder"
    message = one_line_error(["experiment=smoke", f"data_dir={missing}", "data_download=false",
                              f"cache_dir={tmp_path / 'cache'}", f"output_dir={tmp_path / 'run'}"])
    assert message.startswith(f"error: dataset 'cifar100' not found (data_dir={missing} does not exist)")
    assert "set data_dir=<folder with it> (or FEDSSL_DATA_DIR)" in message
    assert not (tmp_path / "run").exists()


# -------------------------------------------------------------------------------- Hydra syntax
def test_a_path_with_spaces_split_by_the_shell_says_how_to_quote_it(tmp_path):
    message = refused_by_main_py("experiment=smoke", "output_dir=/tmp/my", "runs", "here", "seed=1")
    assert message == ("error: cannot read 'runs' on the command line: every argument is key=value, and a value with "
                       "spaces must be one quoted argument: 'output_dir=\"/tmp/my runs here\"'")


@pytest.mark.parametrize("override, hint", [
    ("output_dir=/tmp/résultats", "'output_dir=\"/tmp/résultats\"'"),
    ("resume=/tmp/run(2)", "'resume=\"/tmp/run(2)\"'"),
    ("checkpoint=~/run/checkpoint_final.pt", "'checkpoint=\"~/run/checkpoint_final.pt\"'"),
])
def test_a_value_hydra_cannot_read_names_the_override_and_the_quoting(override, hint):
    message = one_line_error(["experiment=smoke", override])
    assert message.startswith(f"error: cannot read {override}: ") and message.endswith(f"write {hint}")


def test_a_comma_outside_multirun_says_to_quote_or_use_a_list():
    message = one_line_error(["experiment=smoke", "output_dir=/tmp/a,b"])
    assert "output_dir=/tmp/a,b: Hydra reads a comma as several values" in message
    assert "'output_dir=\"/tmp/a,b\"'" in message
    assert one_line_error(["-m", "seed=1,2", "output_dir=/tmp/é"]).startswith("error: cannot read output_dir=/tmp/é")


def test_resume_and_output_dir_read_a_path_the_same_way():
    for given in ('"/runs/a b/é"', "'/runs/a b/é'", "/runs/a b", "/runs/plain", "null"):
        for key in ("output_dir", "resume", "checkpoint"):
            as_hydra = parse_overrides([f"{key}={given}"])[0].value()
            assert override_value([f"{key}={given}"], key) == as_hydra, (key, given)
    with pytest.raises(ConfigError, match="cannot read resume=/runs/é: .*write 'resume=\"/runs/é\"'"):
        override_value(["resume=/runs/é"], "resume")


def test_resume_finds_a_saved_state_in_a_path_with_spaces_and_accents_quoted_as_output_dir_was(tmp_path):
    from app.config import recompose
    from app.resume import run_config, save_state

    out = tmp_path / "my runs" / "été 1"
    line = ["experiment=smoke", "num_clients=2"]
    save_state(out, 1, dict(recompose(line, []), command_line=line), "fingerprint", [], {}, {})
    for given in (f'resume="{out}"', f"resume='{out}'"):
        cfg, out_dir, state = run_config([given, "num_rounds=3"], fresh=None)
        assert out_dir == cfg["output_dir"] == cfg["resume"] == str(out) and state["round"] == 1
    with pytest.raises(ConfigError, match=f"cannot read resume={out}: .*write 'resume=\"{out}\"'"):
        run_config([f"resume={out}"], fresh=None)  # unquoted: refused exactly as output_dir={out} is


@pytest.mark.slow
def test_a_run_in_a_path_with_spaces_and_accents_resumes_as_it_was_started(tmp_path, data_dir, cache_dir):
    out = tmp_path / "my runs" / "été 1"
    line = ["num_clients=2", "checkpoint_every=1"]
    smoke_run(Path(f'"{out}"'), data_dir, cache_dir, *line, "num_rounds=1")  # output_dir="<out>", quoted for Hydra
    assert json.loads((out / "summary.json").read_text())["status"] == "completed"
    done = main_py(f'resume="{out}"', "num_rounds=2", f"data_dir={data_dir}", f"cache_dir={cache_dir}")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and [r["round"] for r in summary["rounds"]] == [1, 2]


# -------------------------------------------------------------------------------- helper scripts
def test_bn_statistics_refuses_wrong_input_in_one_line(tmp_path, detection_checkpoint, ssl_checkpoint):
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    cases = [([str(tmp_path / "missing.pt")], f"error: checkpoint {tmp_path / 'missing.pt'} does not exist"),
             ([str(tmp_path / "junk.pt")], f"error: checkpoint {tmp_path / 'junk.pt'} is corrupt or not a checkpoint"),
             ([str(detection_checkpoint)], f"error: {detection_checkpoint} is a checkpoint of strategy=fedavg on "
                                           f"dataset=synthetic_detection (kind detection)"),
             ([str(ssl_checkpoint), "--model", "3"], f"error: --model 3: {ssl_checkpoint} holds the model(s) ['global']")]
    for args, start in cases:
        done = _script("benchmarks/bn_statistics.py", *args)
        assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
        assert done.stderr.startswith(start) and len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_detection_folders_refuses_wrong_input_in_one_line(tmp_path):
    (tmp_path / "a_file").write_text("x")
    for args, code, start in [
            ([str(tmp_path / "sites"), "--bogus"], 2, "error: unknown option --bogus; usage: python -m ops.detection_folders"),
            ([str(tmp_path / "sites"), "experiment=smoke", "dataset.canvas=-1"], 1, "error: dataset.canvas must be"),
            ([str(tmp_path / "sites"), "experiment=smoke", "output_dir=/tmp/é"], 1, "error: cannot read output_dir=/tmp/é"),
            ([str(tmp_path / "a_file"), "experiment=smoke", "num_clients=1"], 1,
             f"error: cannot write the site folders to {tmp_path / 'a_file'} (Not a directory")]:
        done = main_py(*args, module="ops.detection_folders", timeout=300)
        assert done.returncode == code and "Traceback" not in done.stderr, done.stderr[-2000:]
        assert done.stderr.startswith(start) and len(done.stderr.strip().splitlines()) == 1, done.stderr


def _script(path: str, *args: str):
    import subprocess
    import sys

    return subprocess.run([sys.executable, path, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)
