"""A run never destroys another: a fresh run into an earlier run's folder is refused with its files
untouched; the default folder is new for every run; a multirun gives every job its own folder;
ops.detection_folders refuses a non-empty target unless told to replace it; and a full disk ends a
run as failed, with no temp file left and the last saved round resumable."""

import errno
import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from app.outputs import RunFolderTaken, claim_new_folder, refusal, release_if_unused
from tests.conftest import main_py

# main.py with a disk that fills up after the federation state of round FULL_AFTER was saved: from
# then on every torch.save (federation state, checkpoint) of the server process fails with ENOSPC after
# writing part of its file; with FULL_WHAT=all, JSON and text files (summary.json) fail the same way.
FULL_DISK = r"""
import errno, os, pathlib, runpy, sys
import torch
import app.federation as federation

after, what = int(os.environ["FULL_AFTER"]), os.environ.get("FULL_WHAT", "torch")
full = []
real_save_state, real_torch_save, real_write_text = federation.save_state, torch.save, pathlib.Path.write_text

def save_state(out_dir, server_round, *a, **k):
    path = real_save_state(out_dir, server_round, *a, **k)
    if server_round >= after:
        full.append(server_round)
    return path

def no_space(path):
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

def torch_save(obj, f, *a, **k):
    if full:
        with open(f, "wb") as fh:
            fh.write(b"half a file")
        raise no_space(f)
    return real_torch_save(obj, f, *a, **k)

def write_text(self, data, *a, **k):
    if full and what == "all":
        real_write_text(self, data[:5])
        raise no_space(self)
    return real_write_text(self, data, *a, **k)

federation.save_state, torch.save, pathlib.Path.write_text = save_state, torch_save, write_text
sys.argv = ["main.py", *sys.argv[1:]]
runpy.run_path("main.py", run_name="__main__")
"""


def full_disk_main(*argv, after: int = 1, what: str = "torch"):
    import subprocess

    from tests.conftest import ROOT

    env = dict(os.environ, FULL_AFTER=str(after), FULL_WHAT=what)
    return subprocess.run([sys.executable, "-c", FULL_DISK, *argv], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=900)


def temp_files(folder: Path) -> list[str]:
    return sorted(str(p) for p in folder.rglob("*") if ".tmp" in p.name)


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.read_bytes()) for p in folder.rglob("*") if p.is_file()}


# ---------------------------------------------------------------------------------------- a full disk
@pytest.fixture(scope="module")
def full_disk_run(tmp_path_factory, data_dir, cache_dir):
    """A 3-round smoke run whose disk fills up after round 1's state was saved, then resumed."""
    out = tmp_path_factory.mktemp("full") / "run"
    argv = ["experiment=smoke", "num_clients=2", "num_rounds=3", "checkpoint_every=1", f"data_dir={data_dir}",
            f"cache_dir={cache_dir}"]
    failed = full_disk_main(*argv, f"output_dir={out}", after=1)
    summary = json.loads((out / "summary.json").read_text())
    leftovers = temp_files(out)
    from app.resume import load_state

    saved = load_state(out)  # the last good state loads
    resumed = main_py(f"resume={out}", f"data_dir={data_dir}", f"cache_dir={cache_dir}")
    return SimpleNamespace(out=out, argv=argv, failed=failed, summary=summary, leftovers=leftovers, saved=saved,
                           resumed=resumed)


def test_a_full_disk_ends_the_run_as_failed_in_one_line_with_no_temp_file(full_disk_run):
    r = full_disk_run
    assert r.failed.returncode == 1, r.failed.stderr[-3000:]
    assert r.summary["status"] == "failed"
    assert "No space left on device" in r.summary["error"] and "server.pt" in r.summary["error"]
    assert [x["round"] for x in r.summary["rounds"]] == [1, 2]  # round 2 ran; its state could not be saved
    assert r.leftovers == []
    last = r.failed.stderr.strip().splitlines()[-1]
    assert last.startswith("error: run failed: OSError: [Errno 28] No space left on device")
    assert f"resume={r.out}" in last
    assert "Traceback" not in r.failed.stderr and "During handling" not in r.failed.stderr
    assert r.saved["round"] == 1  # the state of the last good round is intact


def test_the_run_a_full_disk_stopped_resumes_to_the_end(full_disk_run):
    r = full_disk_run
    assert r.resumed.returncode == 0, r.resumed.stdout[-2000:] + r.resumed.stderr[-3000:]
    s = json.loads((r.out / "summary.json").read_text())
    assert s["status"] == "completed" and [x["round"] for x in s["rounds"]] == [1, 2, 3]
    assert s["resumed"][0]["from_round"] == 1
    from tasks.common.checkpoint import load_checkpoint

    assert load_checkpoint(r.out / "checkpoint_final.pt")["round"] == 3
    assert temp_files(r.out) == []


def test_a_fresh_run_into_a_finished_runs_folder_is_refused_and_its_files_stay(full_disk_run):
    r = full_disk_run
    before = snapshot(r.out)
    again = main_py(*r.argv, f"output_dir={r.out}", timeout=300)
    assert again.returncode == 1
    line = again.stderr.strip().splitlines()[-1]
    assert "Traceback" not in again.stderr
    assert line.startswith(f"error: output_dir={r.out} already holds a run (")
    assert "completed after 3 of 3 rounds" in line and f"resume={r.out} num_rounds=" in line
    assert "output_dir=<a new folder>" in line
    assert snapshot(r.out) == before  # not a byte, not a timestamp changed


def test_a_disk_too_full_for_summary_json_says_so_in_one_line(tmp_path, make_cfg, monkeypatch):
    """Even summary.json cannot be written: the run still ends in one line naming it, no temp file."""
    import flwr.simulation

    from app.simulation import RunFailed, run

    cfg = make_cfg("num_clients=2")
    out = tmp_path / "run"
    full, real_write_text = [], Path.write_text

    def write_text(self, data, *a, **k):  # a full disk: part of the file, then ENOSPC
        if full:
            real_write_text(self, data[:3])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
        return real_write_text(self, data, *a, **k)

    def simulation(**_):  # the run started (summary.json written), then the disk filled up
        full.append(True)
        raise RuntimeError("An error was encountered. Ending simulation.") from OSError(
            errno.ENOSPC, os.strerror(errno.ENOSPC), str(out / "state" / "server.pt"))

    monkeypatch.setattr(Path, "write_text", write_text)

    monkeypatch.setattr(flwr.simulation, "run_simulation", simulation)
    with pytest.raises(RunFailed) as err:
        run(cfg, out)
    text = str(err.value)
    assert "\n" not in text and text.startswith("run failed: OSError: [Errno 28] No space left on device")
    assert f"{out / 'summary.json'} could not be written (No space left on device)" in text
    assert json.loads((out / "summary.json").read_text())["status"] == "running"  # its last good version
    assert temp_files(out) == []


def test_atomic_writes_leave_the_old_file_and_no_temp_file_when_the_disk_is_full(tmp_path, monkeypatch):
    import torch

    from tasks.common import atomic
    from tasks.common.checkpoint import load_file, save_atomic

    target = tmp_path / "state.pt"
    save_atomic({"round": 1}, target)

    def half_then_full(obj, f, *a, **k):
        Path(f).write_bytes(b"half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(f))

    monkeypatch.setattr(torch, "save", half_then_full)
    with pytest.raises(OSError, match=rf"No space left on device: '{target}'"):  # the file meant, not the temp
        save_atomic({"round": 2}, target)
    assert load_file(target) == {"round": 1} and sorted(p.name for p in tmp_path.iterdir()) == ["state.pt"]
    atomic.write_json_atomic(tmp_path / "a.json", {"x": 1})
    with pytest.raises(TypeError):
        atomic.write_json_atomic(tmp_path / "a.json", {"x": object()}, default=None)
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": 1} and not list(tmp_path.glob(".*"))


# ---------------------------------------------------------------------------------------- refusals
def write_run(folder: Path, status: str, rounds: int, state: bool) -> None:
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps({"status": status, "rounds": [{"round": r} for r in
                                                                                 range(1, rounds + 1)],
                                                     "num_rounds": 3}))
    (folder / "main.log").write_text("log\n")
    if state:
        (folder / "state").mkdir()
        (folder / "state" / "server.pt").write_bytes(b"state")


def test_each_kind_of_earlier_run_is_refused_with_what_to_do(tmp_path):
    write_run(tmp_path / "interrupted", "failed", 2, state=True)
    write_run(tmp_path / "early", "failed", 0, state=False)
    write_run(tmp_path / "killed", "running", 0, state=False)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("mine")
    assert refusal(tmp_path / "new") is None and refusal(tmp_path / "notes") is None  # other files do not count
    why = refusal(tmp_path / "interrupted")
    assert f"continue it with resume={tmp_path / 'interrupted'}" in why and "failed after 2 of 3 rounds" in why
    why = refusal(tmp_path / "early")
    assert "saved no federation state" in why and f"rm -r {tmp_path / 'early'}" in why and "resume=" not in why
    assert "it may still be running" in refusal(tmp_path / "killed")
    (tmp_path / "bare").mkdir()
    (tmp_path / "bare" / "client_state").mkdir()  # a run's leftovers without a summary
    assert "client_state/" in refusal(tmp_path / "bare")


def test_a_fresh_run_is_refused_before_anything_is_composed_into_the_folder(tmp_path, smoke_overrides):
    from app.commands import fresh_run
    from app.resume import run_config

    write_run(tmp_path / "old", "completed", 3, state=True)
    before = snapshot(tmp_path / "old")
    argv = [o for o in smoke_overrides if not o.startswith("output_dir=")] + [f"output_dir={tmp_path / 'old'}"]
    with pytest.raises(RunFolderTaken, match="already holds a run"):
        run_config(argv, fresh_run)
    assert snapshot(tmp_path / "old") == before


def test_the_default_folder_is_new_for_every_run_started_in_the_same_second(tmp_path):
    from app.commands import run_dir

    composed = SimpleNamespace(hydra=SimpleNamespace(run=SimpleNamespace(dir=str(tmp_path / "o" / "12-00-00-fedu"))))
    first, second, third = run_dir(composed), run_dir(composed), run_dir(composed)
    assert [Path(p).name for p in (first, second, third)] == ["12-00-00-fedu", "12-00-00-fedu-2", "12-00-00-fedu-3"]
    assert all(Path(p).is_dir() for p in (first, second, third))
    release_if_unused(second)  # a command refused before writing leaves no folder of its own
    assert not Path(second).exists() and claim_new_folder(tmp_path / "o" / "12-00-00-fedu").name.endswith("-2")
    (Path(first) / "summary.json").write_text("{}")
    release_if_unused(first)  # one that wrote something is kept
    assert Path(first).is_dir()


def test_a_multirun_gives_every_job_its_own_folder_and_refuses_earlier_runs_before_starting(tmp_path, monkeypatch):
    import app.commands as commands

    ran = []
    monkeypatch.setitem(commands.COMMANDS, "train", lambda argv: ran.append(argv))
    commands.multirun(["seed=0,1", f"output_dir={tmp_path / 'sweep'}"])
    assert [a[-1] for a in ran] == [f"output_dir={tmp_path / 'sweep' / '0'}", f"output_dir={tmp_path / 'sweep' / '1'}"]
    assert all(sum(o.startswith("output_dir=") for o in a) == 1 for a in ran)
    write_run(tmp_path / "sweep" / "1", "completed", 3, state=True)
    ran.clear()
    with pytest.raises(RunFolderTaken, match=r"multirun: 1 of its 2 jobs would write into an earlier run's folder"):
        commands.multirun(["seed=0,1", f"output_dir={tmp_path / 'sweep'}"])
    assert ran == []  # nothing started
    jobs = commands.multirun_jobs(["seed=0,1", f"resume={tmp_path / 'sweep' / '1'}"])
    assert all(not any(o.startswith("output_dir=") for o in job) for job in jobs)  # resume: its own folder


def test_a_multirun_of_evaluations_writes_one_folder_per_job(tmp_path, data_dir, cache_dir):
    done = main_py("-m", "mode=evaluate", "checkpoint=init", "experiment=smoke", "seed=0,1", "eval.linear=false",
                   f"data_dir={data_dir}", f"cache_dir={cache_dir}", f"output_dir={tmp_path / 'm'}", timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["0", "1"]
    for n in ("0", "1"):
        assert json.loads((tmp_path / "m" / n / "evaluation.json").read_text())["status"] == "completed"


def test_evaluate_and_route_never_replace_an_earlier_result(tmp_path):
    from app.offline import evaluate_offline, route_offline

    (tmp_path / "evaluation.json").write_text("{}")
    with pytest.raises(RunFolderTaken, match="mode=evaluate: .*evaluation.json already exist"):
        evaluate_offline(None, tmp_path)
    (tmp_path / "backbone_path3.pt").write_bytes(b"x")
    with pytest.raises(RunFolderTaken, match="mode=route: .*backbone_path3.pt already exist"):
        route_offline({"checkpoint": "x.pt"}, tmp_path)
    assert (tmp_path / "evaluation.json").read_text() == "{}"


# ---------------------------------------------------------------------------------------- detection folders
def test_detection_folders_refuses_a_non_empty_target_and_replaces_with_the_flag(tmp_path, data_dir, capsys):
    from ops.detection_folders import main

    small = ["experiment=smoke", "dataset.train_images=4", "dataset.test_images=2", f"data_dir={data_dir}"]
    out = tmp_path / "sites"
    assert main([str(out), "num_clients=3", *small]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["site0", "site1", "site2"]
    first = snapshot(out)
    assert main([str(out), "num_clients=2", *small]) == 1
    assert "is not empty (site0, site1, site2); pass --replace" in capsys.readouterr().err
    assert snapshot(out) == first
    assert main([str(out), "--replace", "num_clients=2", *small]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["site0", "site1"]  # no site left of the larger export
    (out / "notes.txt").write_text("mine")
    assert main([str(out), "--replace", "num_clients=2", *small]) == 1
    assert "holds more than site folders (notes.txt)" in capsys.readouterr().err
    assert (out / "notes.txt").read_text() == "mine" and (out / "site0").is_dir()


# ---------------------------------------------------------------------------------------- benchmarks
def test_a_benchmark_cell_that_saved_no_round_is_set_aside_and_run_again(tmp_path, monkeypatch):
    import subprocess

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import compare

    cell = tmp_path / "cell"
    write_run(cell, "failed", 0, state=False)
    calls = []

    def launch(cmd):
        calls.append(cmd)
        out = Path(next(c.split("=", 1)[1] for c in cmd if c.startswith("output_dir=")))
        assert refusal(out) is None  # main.py would accept it
        out.mkdir(parents=True, exist_ok=True)
        (out / "summary.json").write_text(json.dumps({"status": "completed", "rounds": []}))
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(compare, "launch", launch)
    assert compare.run_resumable(cell, ["experiment=smoke"])["status"] == "completed"
    (aside,) = tmp_path.glob("cell.stopped-*")
    assert json.loads((aside / "summary.json").read_text())["status"] == "failed"  # kept, not deleted
    assert len(calls) == 1 and f"output_dir={cell}" in calls[0]


def test_deployment_vs_simulation_keeps_its_runs_out_of_benchmarks_results(tmp_path, monkeypatch):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks import deployment_vs_simulation as bench

    rnd = {"round": 1, "wall_seconds": 2.0, "fit_seconds": 1.5, "eval_seconds": 0.1,
           "clients": {"0": {"train_seconds": 0.5}}}

    def timed(cmd, log):
        out = next((c.split("=", 1)[1] for c in cmd if c.startswith("output_dir=")), None)
        folder = Path(out) if out else Path(cmd[cmd.index("--workdir") + 1]) / "run"
        folder.mkdir(parents=True)
        (folder / "summary.json").write_text(json.dumps({"rounds": [rnd], "wall_seconds": 3.0}))
        log.write_text("log")
        return 4.0

    monkeypatch.setattr(bench, "timed", timed)
    monkeypatch.setattr(bench, "cold_start", lambda o: {"process_seconds": 1.0, "import_seconds": 0.5,
                                                         "setup_seconds": 0.5})
    out, runs = tmp_path / "results", tmp_path / "outputs" / "dvs"
    bench.main(["--out", str(out), "--runs", str(runs)])
    assert sorted(p.name for p in out.iterdir()) == ["table.json", "table.md"]
    assert sorted(p.name for p in runs.iterdir()) == ["deployment", "deployment.log", "simulation", "simulation.log"]
    assert "| simulation | 1 | 2.0 | 1.5 | 0.50 | 1.0 | 0.1 |" in (out / "table.md").read_text()
