"""Flower NumPyClient for local self-supervised training (DESIGN.md conv. 1 and 5).

It only translates: unpack the server's arrays and instructions, call tasks/, pack the upload.
Everything it must remember between rounds (BYOL's target, its local predictor, ...) is kept
in `context.state`, because Flower builds a new client object every round.
"""

from __future__ import annotations

from clients.base import STATE_WEIGHTS, InjectedFault, StatefulClient  # noqa: F401 - re-exported
from strategies import STRATEGIES
from strategies.weights import layer_divergence
from tasks.fedema import ema_mix
from tasks.federated_data import client_images
from tasks.train import NonFiniteLossError, client_generator, round_lr, train_one_round
from tasks.wire import (
    build_federated_method,
    divergence_layers,
    get_arrays,
    kept_keys,
    layout_fingerprint,
    set_arrays,
)


class LayoutMismatch(RuntimeError):
    """Server and client disagree on what is uploaded (different config or code version)."""


class SSLClient(StatefulClient):
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
        cfg = self.cfg
        rnd, who, device = self.begin_round(config)
        method, plan, keys = build_federated_method(cfg)
        if config.get("layout") and config["layout"] != layout_fingerprint(method, keys):
            raise LayoutMismatch(f"{who}: the server's upload layout differs from this client's config")
        info = self._restore(method)
        first = self.first_participation

        rules = STRATEGIES[cfg["strategy"]["name"]].client_rules(cfg["strategy"])
        received, mixing = set(), {}
        if rules.mix_global and not first and parameters:
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
        keep = kept_keys(method, plan, keys, keep_everything=rules.keep_everything, keep_optional=rules.keep_optional)
        info.update({"rounds_trained": int(info.get("rounds_trained", 0)) + 1, "last_round": rnd})
        if "lambda" in mixing:
            info["ema_lambda"] = mixing["lambda"]
        self._persist(method, keep, info, config)
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
