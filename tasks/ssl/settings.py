"""The SSL task's typed section: everything its code reads from a run's config, built once.

`ssl_settings(cfg)` is the only place in tasks/ssl/ that reads the config dict: the method's
`ssl.*` arguments (each method checks its own against its CONFIG when it is built), the local
recipe, the backbone's `model.*`, the shared image, evaluation and compute sections
(tasks/common/sections.py), and the strategy's sharing rule as the task declares it
(`strategy.sync`, `strategy.bn`: the layout options its clients receive in their instructions).
The federation builds it once (Federation.settings) and hands it to the layout, the local round,
the evaluator and the exported network.
"""

from __future__ import annotations

from dataclasses import dataclass

from tasks.common.sections import Devices, Evaluation, Images, devices_of, evaluation_of, images_of
from tasks.ssl.model import LAYOUT_OPTIONS
from tasks.ssl.train import recipe_options


@dataclass(frozen=True)
class Recipe:
    """A client's local training (tasks/ssl/train.train_one_round), the same for every method."""

    local_epochs: int
    batch_size: int
    num_rounds: int  # the learning rate's schedule runs over them
    lr: float
    lr_schedule: str  # cosine | constant
    warmup_rounds: int
    momentum: float
    weight_decay: float
    jitter: tuple[float, ...]  # colour-jitter strengths (ssl.jitter)
    predictor_lr_mult: float


@dataclass(frozen=True)
class SSLSettings:
    """`method`: the ssl.* section (name and arguments, read by tasks/ssl/methods.build_method);
    `model`: model.arch and model.width; `sharing`: the declared layout options the strategy sets."""

    method: dict
    model: dict
    seed: int  # the initial weights, the same on every node
    recipe: Recipe
    images: Images
    evaluation: Evaluation
    devices: Devices
    sharing: dict

    @property
    def name(self) -> str:
        return str(self.method["name"])

    def layout_options(self) -> dict:
        """The strategy's sharing rule as the layout needs it (sent to the clients in their instructions)."""
        return dict(self.sharing)


def ssl_settings(cfg: dict) -> SSLSettings:
    ssl, strategy = dict(cfg["ssl"]), cfg.get("strategy") or {}
    recipe = Recipe(local_epochs=int(cfg["local_epochs"]), batch_size=int(cfg["batch_size"]),
                    num_rounds=int(cfg["num_rounds"]), lr=float(ssl["lr"]),
                    lr_schedule=str(ssl.get("lr_schedule", "cosine")), warmup_rounds=int(ssl.get("warmup_rounds", 0)),
                    momentum=float(ssl["momentum"]), weight_decay=float(ssl["weight_decay"]), **recipe_options(ssl))
    return SSLSettings(method=ssl, model={"arch": str(cfg["model"]["arch"]), "width": float(cfg["model"]["width"])},
                       seed=int(cfg["seed"]), recipe=recipe, images=images_of(cfg), evaluation=evaluation_of(cfg),
                       devices=devices_of(cfg), sharing={k: strategy[k] for k in LAYOUT_OPTIONS if k in strategy})
