"""Flower NumPyClient for local self-supervised training (DESIGN.md conv. 1 and 5).

It only translates: unpack the server's arrays and instructions, call tasks/, pack the upload.
Everything it must remember between rounds (BYOL's target, its local predictor, ...) is kept
in `context.state`, because Flower builds a new client object every round.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, RecordDict
from flwr.client import NumPyClient

from clients import state_store
from strategies.weights import layer_divergence
from tasks.fedema import ema_mix
from tasks.federated_data import client_images
from tasks.train import NonFiniteLossError, client_generator, resolve_device, round_lr, train_one_round
from tasks.wire import (
    build_federated_method,
    divergence_layers,
    get_arrays,
    kept_keys,
    layout_fingerprint,
    set_arrays,
)

STATE_WEIGHTS = "fedssl.local_weights"
STATE_INFO = "fedssl.client_info"


class LayoutMismatch(RuntimeError):
    """Server and client disagree on what is uploaded (different config or code version)."""


class InjectedFault(RuntimeError):
    """Raised on purpose by `faults.client_raise`, to test what a run survives."""


def _hit(pairs, pid: int, rnd: int) -> bool:
    return any(int(p) == pid and int(r) == rnd for p, r in (pairs or []))


class SSLClient(NumPyClient):
    def __init__(self, cfg: dict, partition_id: int, state: RecordDict, threads: int = 1,
                 state_dir: str | None = None):
        self.cfg, self.pid, self.state, self.threads = cfg, int(partition_id), state, threads
        root = state_dir or cfg.get("client_state_dir")
        self.state_dir = Path(root) / str(self.pid) if root else None

    def get_properties(self, config):
        return {"partition_id": self.pid}

    def _restore(self, method) -> dict:
        if STATE_WEIGHTS in self.state:
            method.load_state_dict(self.state[STATE_WEIGHTS].to_torch_state_dict(), strict=False)
        info = self.state.get(STATE_INFO)
        return dict(info) if info is not None else {}

    def _persist(self, method, keep: list[str], info: dict) -> None:
        sd = method.state_dict()
        self.state[STATE_WEIGHTS] = ArrayRecord({k: sd[k].detach().cpu() for k in keep})
        self.state[STATE_INFO] = ConfigRecord(info)

    def _recover(self, resume_round: int) -> None:
        """After a restart the in-memory state is empty: reload the saved one (<= resume_round)."""
        if STATE_WEIGHTS in self.state or resume_round <= 0 or self.state_dir is None:
            return
        state_store.restore(self.state_dir, resume_round, self.state)

    def _inject_faults(self, rnd: int) -> None:
        faults = self.cfg.get("faults") or {}
        if _hit(faults.get("client_hang"), self.pid, rnd):
            time.sleep(float(faults.get("hang_seconds", 60)))
        if _hit(faults.get("client_raise"), self.pid, rnd):
            raise InjectedFault(f"injected fault: client {self.pid} raises in round {rnd}")

    def _corrupt(self, arrays: list[np.ndarray], rnd: int) -> list[np.ndarray]:
        faults = self.cfg.get("faults") or {}
        if _hit(faults.get("nan_update"), self.pid, rnd):
            arrays[0] = np.full_like(arrays[0], np.nan)
        if _hit(faults.get("wrong_shape_update"), self.pid, rnd):
            arrays[0] = arrays[0].reshape(-1)[:-1].copy()
        return arrays

    def _fedema_update(self, method, plan, keys, parameters, info: dict, rnd: int) -> dict:
        """SPEC §3: mix local and global; a client that skipped rounds takes the global model
        and resets its target to it."""
        if int(info.get("last_round", 0)) < rnd - 1:
            received = set_arrays(method, keys, parameters)
            method.init_local_parts(received)
            return {"mixing": "reset"}
        st = self.cfg["strategy"]
        lam = st.get("ema_lambda")
        lam = float(lam) if lam is not None else info.get("ema_lambda")
        return ema_mix(method, keys, parameters, divergence_layers(keys, plan), float(st["ema_tau"]),
                       None if lam is None else float(lam))

    def fit(self, parameters, config):
        cfg, rnd = self.cfg, int(config["server_round"])
        who = f"client {self.pid}, round {rnd}"
        self._inject_faults(rnd)
        self._recover(int(config.get("resume_round", 0)))
        torch.set_num_threads(self.threads)
        device = resolve_device(str(cfg["device"]))
        method, plan, keys = build_federated_method(cfg)
        if config.get("layout") and config["layout"] != layout_fingerprint(method, keys):
            raise LayoutMismatch(f"{who}: the server's upload layout differs from this client's config")
        info = self._restore(method)
        first = STATE_WEIGHTS not in self.state

        strategy = cfg["strategy"]["name"]
        received, mixing = set(), {}
        if strategy == "fedema" and not first and parameters:
            mixing = self._fedema_update(method, plan, keys, parameters, info, rnd)
        elif parameters and (first or bool(config.get("replace", True))):
            adopt = first or bool(config.get("adopt_global_predictor", True))
            received = set_arrays(method, keys, parameters, skip_parts=() if adopt else plan.optional)
        if first:
            method.init_local_parts(received)
        predictor_used = "global" if (set(plan.optional) & received) else "local"

        div_idx = divergence_layers(keys, plan)
        before = get_arrays(method, [keys[i] for i in div_idx])
        images = client_images(cfg, self.pid)
        ssl, rounds, epochs = cfg["ssl"], int(cfg["num_rounds"]), int(cfg["local_epochs"])
        lr = round_lr(float(ssl["lr"]), rnd, rounds, str(ssl.get("lr_schedule", "cosine")))
        try:
            stats = train_one_round(
                method, images, epochs=epochs, batch_size=int(cfg["batch_size"]), lr=lr,
                momentum=float(ssl["momentum"]), weight_decay=float(ssl["weight_decay"]), device=device,
                generator=client_generator(int(cfg["seed"]), rnd, self.pid),
                progress_start=(rnd - 1) / rounds, progress_span=1 / rounds, who=who,
            )
        except NonFiniteLossError as err:
            return [], 0, {"partition_id": self.pid, "fatal_error": str(err)}
        after = get_arrays(method, [keys[i] for i in div_idx])
        keep = kept_keys(method, plan, keys, keep_everything=strategy in ("standalone", "fedema"),
                         keep_optional=strategy == "fedu" and cfg["strategy"].get("predictor") != "global")
        info.update({"rounds_trained": int(info.get("rounds_trained", 0)) + 1, "last_round": rnd})
        if "lambda" in mixing:
            info["ema_lambda"] = mixing["lambda"]
        self._persist(method, keep, info)
        if int(config.get("checkpoint_every", 0)) > 0 and self.state_dir is not None:
            state_store.save(self.state_dir, rnd, self.state, keep_from=int(config.get("last_checkpoint", 0)))
        metrics = {
            "partition_id": self.pid,
            "loss": stats["loss"],
            "train_seconds": stats["train_seconds"],
            "images_per_second": stats["images_per_second"],
            "lr": lr,
            "predictor_used": predictor_used,
            "divergence_reference": layer_divergence(before, after, list(range(len(div_idx)))) if div_idx else 0.0,
            **{f"ema_{k}": v for k, v in mixing.items()},
        }
        return self._corrupt(get_arrays(method, keys), rnd), len(images), metrics
