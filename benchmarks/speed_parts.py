"""The measurements benchmarks/speed.py tabulates: local-round rates against a bare PyTorch loop,
kNN evaluation time, and the resident memory of a whole run (process tree and machine).

Everything here times the project's own code paths (tasks/ssl/train.py, tasks/common/evaluate.py,
`python main.py`) except `bare_byol`, the plain loop written here as the yardstick.
"""

from __future__ import annotations

import copy
import os
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from tasks.common.augment import make_views, to_float
from tasks.common.evaluate import extract_features, knn_accuracy
from tasks.common.models import mlp_encoder, mlp_head
from tasks.common.precision import Compute
from tasks.ssl.methods.byol import BYOL
from tasks.ssl.train import train_one_round

HEADS = {0.25: (512, 128, 512), 1.0: (4096, 2048, 4096)}  # cpu preset / paper (proj_hidden, proj_dim, pred_hidden)
CPU = torch.device("cpu")


def images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)


def bare_byol(width: float, steps: int, batch: int = 128, warmup: int = 2) -> float:
    """Images/s of a plain fp32 BYOL loop on the same model and batch: the views are the same
    augmentation (make_views) of the batch, then online/predictor/target forwards, the symmetric
    loss, SGD with momentum and the EMA of the target, nothing else."""
    torch.manual_seed(0)
    hidden, dim, pred = HEADS[width]
    online, predictor = mlp_encoder("resnet18", width, hidden, dim), mlp_head(dim, pred, dim)
    target = copy.deepcopy(online)
    opt = torch.optim.SGD([*online.parameters(), *predictor.parameters()], lr=0.05, momentum=0.9, weight_decay=5e-4)
    data, g = torch.from_numpy(images(batch)), torch.Generator().manual_seed(0)
    recipe = BYOL.views

    def step():
        v1, v2 = make_views(to_float(data, CPU), recipe, g)
        p1, p2 = predictor(online(v1)), predictor(online(v2))
        with torch.no_grad():
            z1, z2 = target(v1), target(v2)
        loss = (2 - 2 * F.cosine_similarity(p1, z2.detach(), dim=-1)).mean() + \
            (2 - 2 * F.cosine_similarity(p2, z1.detach(), dim=-1)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            for t, o in zip(target.parameters(), online.parameters()):
                t.mul_(0.99).add_(o, alpha=0.01)

    for _ in range(warmup):
        step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch / (time.perf_counter() - t0)


def project_round(width: float, steps: int, precision: str, channels_last: bool, compile: bool,
                  batch: int = 128, warmup: int = 2, device: torch.device = CPU) -> float:
    """Images/s of the project's local round (train_one_round) after `warmup` steps in a first round."""
    torch.manual_seed(0)
    hidden, dim, pred = HEADS[width]
    method = BYOL(arch="resnet18", width=width, proj_hidden=hidden, proj_dim=dim, pred_hidden=pred)
    compute = Compute(device, precision, "requested", channels_last, compile)
    kw = dict(lr=0.05, momentum=0.9, weight_decay=5e-4, compute=compute, progress_start=0.0, progress_span=1.0,
              who="benchmark", batch_size=batch, epochs=1)
    train_one_round(method, images(warmup * batch, 1), generator=torch.Generator().manual_seed(1), **kw)
    stats = train_one_round(method, images(steps * batch, 2), generator=torch.Generator().manual_seed(2), **kw)
    return float(stats["images_per_second"])


def knn_seconds(width: float, n_bank: int, n_test: int, precision: str, batch: int = 512) -> dict:
    """Seconds for the kNN monitor (features of bank + test, then the weighted vote), and per 10k images."""
    torch.manual_seed(0)
    hidden, dim, _ = HEADS[width]
    net = mlp_encoder("resnet18", width, hidden, dim).backbone
    compute = Compute(CPU, precision, "requested", precision != "fp32", False)
    bank_x, test_x = images(n_bank, 3), images(n_test, 4)
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    bank = extract_features(net, bank_x, CPU, batch, compute)
    test = extract_features(net, test_x, CPU, batch, compute)
    knn_accuracy(bank, torch.from_numpy(rng.integers(0, 100, n_bank)), test,
                 torch.from_numpy(rng.integers(0, 100, n_test)), 100)
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "images": n_bank + n_test, "seconds_per_10k": seconds * 10_000 / (n_bank + n_test)}


# ---------------------------------------------------------------------------- memory of a whole run
def _rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _tree(root: int) -> list[int]:
    """root and all its descendants (Ray's raylet, GCS and client actors included)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def _machine_used_kib() -> int:
    info = {line.split(":")[0]: int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()}
    return info["MemTotal"] - info["MemAvailable"]


def run_with_memory(cmd: list[str], cwd: Path, log: Path, every: float = 0.5) -> dict:
    """Run `cmd`, sampling the summed RSS of its process tree and the machine's used memory."""
    base = _machine_used_kib()
    peak = {"tree": 0, "machine": 0}
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=fh, stderr=subprocess.STDOUT)
        stop = threading.Event()

        def sample():
            while not stop.is_set():
                peak["tree"] = max(peak["tree"], sum(_rss_kib(p) for p in _tree(proc.pid)))
                peak["machine"] = max(peak["machine"], _machine_used_kib() - base)
                stop.wait(every)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        t0 = time.perf_counter()
        code = proc.wait()
        stop.set()
        sampler.join()
    if code != 0:
        raise SystemExit(f"{' '.join(cmd)} failed (exit {code}); log: {log}")
    return {"peak_tree_gb": peak["tree"] / 2**20, "peak_machine_rise_gb": peak["machine"] / 2**20,
            "seconds": time.perf_counter() - t0}
