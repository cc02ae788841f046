"""Shared fixtures: the offline data in ../shared/data and smoke-sized configs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DATA_DIR = Path(os.environ.get("FEDSSL_DATA_DIR", ROOT.parent / "shared" / "data"))
# the commands the tests start (main.py, ops.*) find the same data without data_dir= (conf: data_dir
# defaults to $FEDSSL_DATA_DIR), so the README's plain `pytest` needs no variable set
os.environ.setdefault("FEDSSL_DATA_DIR", str(DATA_DIR))


def main_py(*argv, module: str | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """`python main.py ...` (or `python -m <module> ...`) in the repository root, output captured."""
    head = ["-m", module] if module else ["main.py"]
    return subprocess.run([sys.executable, *head, *argv], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def smoke_run(out: Path, data_dir: Path, cache_dir: Path, *overrides: str) -> Path:
    """A finished `experiment=smoke` run of `overrides` in `out` (asserted to succeed): its directory."""
    done = main_py("experiment=smoke", *overrides, f"data_dir={data_dir}", f"cache_dir={cache_dir}", f"output_dir={out}")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return out


def initial_checkpoint(path: Path, *line: str) -> Path:
    """A checkpoint of the initial model of `line` (the smoke preset), with the config a run records."""
    from app.config import recompose
    from app.federation import build_layout
    from tasks.common.checkpoint import save_checkpoint

    line = ["experiment=smoke", *line]
    cfg = dict(recompose(line, []), command_line=line)
    layout, arrays = build_layout(cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(path, cfg, layout.keys, {"global": arrays}, 1)
    return path


SLOW = os.environ.get("CI", "").lower() in ("1", "true") or os.environ.get("FEDSSL_SLOW_TESTS") == "1"


def pytest_collection_modifyitems(config, items):
    """`slow` tests (minutes each: loopback deployments, resume comparisons) run in CI (CI=true) or with
    FEDSSL_SLOW_TESTS=1; elsewhere they are skipped, so that the suite keeps its time."""
    if SLOW:
        return
    skip = pytest.mark.skip(reason="slow (minutes): runs in CI (CI=true) or with FEDSSL_SLOW_TESTS=1")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not (DATA_DIR / "cifar100.npz").is_file():
        pytest.fail(f"test data not found in {DATA_DIR}; set FEDSSL_DATA_DIR to the folder holding cifar100.npz")
    return DATA_DIR


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    return Path(os.environ.get("FEDSSL_CACHE_DIR", tmp_path_factory.mktemp("cache")))


@pytest.fixture
def smoke_overrides(data_dir, cache_dir, tmp_path) -> list[str]:
    """The command-line overrides of a smoke run on the offline data, written under tmp_path/run."""
    return ["experiment=smoke", f"data_dir={data_dir}", f"cache_dir={cache_dir}", f"output_dir={tmp_path / 'run'}"]


@pytest.fixture
def make_cfg(smoke_overrides):
    """Compose the real config (conf/) with the smoke preset plus overrides, as a plain dict."""
    from app.config import compose, to_plain

    def make(*overrides: str) -> dict:
        return to_plain(compose(smoke_overrides + list(overrides)))

    return make


@pytest.fixture
def spy(monkeypatch):
    """Snapshot the model as local training starts, to see what a client restored or mixed."""
    import tasks.ssl.local as ssl_local

    seen = []
    real = ssl_local.train_one_round

    def wrapped(method, images, **kw):
        seen.append({k: v.detach().clone() for k, v in method.state_dict().items()})
        return real(method, images, **kw)

    monkeypatch.setattr(ssl_local, "train_one_round", wrapped)
    return seen


def one_line_error(argv: list[str]) -> str:
    """`python main.py argv` in this process: the message main.py exits with (one line, `error: ...`)."""
    import main

    with pytest.raises(SystemExit) as done:
        main.main(list(argv))
    message = str(done.value.code)
    assert message.startswith("error: ") and "\n" not in message, message
    return message


def refused_by_main_py(*argv: str) -> str:
    """`python main.py argv` as a user runs it: exit code 1, stderr one `error:` line, no traceback."""
    done = main_py(*argv, timeout=300)
    assert done.returncode == 1, done.stdout[-2000:] + done.stderr[-2000:]
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr[-3000:]
    assert done.stderr.startswith("error: ")
    return done.stderr.strip()


@pytest.fixture(scope="module")
def ssl_checkpoint(tmp_path_factory) -> Path:
    return initial_checkpoint(tmp_path_factory.mktemp("ssl") / "checkpoint_final.pt", "strategy=fedu", "dataset=cifar10")


@pytest.fixture(scope="module")
def detection_checkpoint(tmp_path_factory) -> Path:
    return initial_checkpoint(tmp_path_factory.mktemp("detection") / "checkpoint_final.pt", "strategy=fedavg",
                              "dataset=synthetic_detection")
