"""The types of every config key, and the checks that run before anything starts.

The run's own keys are declared here; each task's section, the shared evaluation, partition,
model and dataset keys are declared where they are used (their modules' CONFIG) and gathered
here; an SSL method checks its own arguments (tasks/ssl/methods), a strategy its constructor's.
`validate` refuses a wrong value with the key, the value and what is expected.
"""

from __future__ import annotations

from app.config import group_options
from app.registry import STRATEGY_META, TASKS
from clients.faults import HostilePairs
from protocol.checks import AnyOf, Bool, Choice, ConfigError, Float, Int, ListOf, Matches, Text, conform
from protocol.transfer import TRANSFER_DTYPES
from tasks.common import data, evaluate, models, partition, precision
from tasks.ssl.methods import HEAD_CONFIG, TRAINING_CONFIG

PAIRS = ListOf(item=ListOf(item=Int(), length=2), description="a list of [partition_id, round] pairs")

RUN = {
    "num_clients": Int(min=1), "num_rounds": Int(min=1), "local_epochs": Int(min=1), "batch_size": Int(min=1),
    "fraction_fit": Float(above=0, max=1), "min_fit_clients": Int(min=1), "examples_per_client": Int(min=1, null=True),
    "seed": Int(min=0), "preset": Choice(options=tuple(o for o in group_options("experiment") if o != "auto")), "data_dir": Text(), "data_download": Bool(), "cache_dir": Text(),
    "device": Matches(pattern=r"auto|cpu|cuda(:\d+)?", description="auto, cpu, cuda or cuda:N"),
    "transfer_dtype": Choice(options=TRANSFER_DTYPES), "progress": AnyOf(specs=(Choice(options=("auto",)), Bool())),
    "output_dir": Text(null=True), "eval_every": Int(min=0), "norm_bound": Float(above=0, null=True),
    "round_timeout": Float(above=0, null=True, unit="seconds"), "checkpoint_every": Int(min=0),
    "audit_updates": Bool(),
    "trust.max_examples": AnyOf(specs=(Choice(options=("auto",)), Int(min=1))),
    "trust.examples_ratio": Float(min=1), "trust.client_timeout": Float(above=0, unit="seconds"),
    "resume": Text(null=True), "mode": Choice(options=("train", "route", "evaluate", "export", "predict", "embed")),
    "checkpoint": Text(null=True), "images": Text(null=True),
    "predict.score": Float(min=0, max=1), "predict.max_images": Int(min=1, null=True),
    "embed.max_images": Int(min=1, null=True), "embed.query": Int(min=0, null=True), "embed.neighbours": Int(min=1),
    "faults.client_raise": PAIRS, "faults.client_hang": PAIRS, "faults.hang_seconds": Float(min=0),
    "faults.nan_update": PAIRS, "faults.wrong_shape_update": PAIRS, "faults.exit_after_round": Int(min=1, null=True),
    "faults.hostile": HostilePairs(),  # [partition_id, attack] pairs, the attack checked against clients/faults.ATTACKS
    "client_resources.num_cpus": AnyOf(specs=(Choice(options=("auto",)), Int(min=1))),
    "client_resources.num_gpus": AnyOf(specs=(Choice(options=("auto",)), Float(min=0))),
    "ray.address": Text(null=True), "wandb.mode": Choice(options=("offline", "online", "disabled")),
    "wandb.project": Text(), "wandb.entity": Text(null=True), "wandb.name": Text(null=True),
    "wandb.group": Text(null=True), "wandb.tags": ListOf(item=Text()),
    # added by the commands themselves, not by conf/
    "command_line": ListOf(item=Text()), "client_state_dir": Text(), "centralised_from_clients": Int(min=1),
    "local_data": Text(),
}


def clients_per_round(cfg: dict) -> int:
    """How many clients a round samples (strategies/base.py draws this many)."""
    return max(1, min(cfg["num_clients"], int(round(cfg["num_clients"] * float(cfg["fraction_fit"])))))


def all_specs() -> dict:
    """Every key's spec except SSL methods' own arguments and strategies' constructor arguments."""
    specs = {**RUN, **precision.CONFIG, **STRATEGY_META, **evaluate.CONFIG, **partition.CONFIG, **models.CONFIG, **data.CONFIG,
             **{f"ssl.{k}": spec for k, spec in {**TRAINING_CONFIG, **HEAD_CONFIG}.items()}}
    for task in TASKS.values():
        specs.update(task.config)
    specs["dataset.kind"] = Choice(options=tuple(dict.fromkeys(t.data_kind for t in TASKS.values())))  # the rows'
    return specs


def validate(cfg: dict) -> None:
    """Types and ranges of every key, then the checks that relate keys to each other (whether the
    strategy can train on the dataset is `app/registry.task_of`'s, which runs next)."""
    conform(cfg, all_specs())  # an SSL method's own ssl.* keys: the method checks them (tasks/ssl/methods)
    per_round = clients_per_round(cfg)
    if not cfg["min_fit_clients"] <= per_round:
        raise ConfigError(f"min_fit_clients must be in [1, {per_round}] (clients sampled per round), "
                          f"got {cfg['min_fit_clients']!r}")
    epc = cfg.get("examples_per_client")
    if epc is not None and epc < cfg["batch_size"]:
        raise ConfigError(f"examples_per_client must be null or an integer >= batch_size ({cfg['batch_size']}), "
                          f"got {epc!r}")
