"""Typed configuration: every key's type is known, and a wrong value is refused before anything
starts, naming the key, the value and what is expected."""

import inspect
import subprocess
import sys

import pytest
from hydra.utils import get_class

from app.config import ConfigError, compose, group_options, to_plain
from app.registry import not_constructor_args
from app.schema import all_specs
from app.simulation import preflight
from protocol.checks import missing_specs
from tasks.ssl.methods import method_config
from tests.conftest import ROOT


def test_a_wrong_value_on_the_command_line_stops_before_anything_starts(tmp_path):
    proc = subprocess.run([sys.executable, "main.py", "fraction_fit=abc", f"output_dir={tmp_path / 'run'}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "error: fraction_fit must be a number in (0, 1], got 'abc'" in proc.stderr
    assert "Traceback" not in proc.stderr and "HYDRA_FULL_ERROR" not in proc.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("override, message", [
    ("ssl.lr=abc", "ssl.lr must be a number > 0, got 'abc'"),
    ("ssl.tau=1.5", r"ssl.tau must be in \[0, 1\), got 1.5"),
    ("ssl.proj_dim=big", "ssl.proj_dim must be an integer >= 1, got 'big'"),
    ("strategy.mu=x", "strategy.mu must be a number >= 0, got 'x'"),
    ("seed=abc", "seed must be an integer >= 0, got 'abc'"),
    ("eval.knn_k=abc", "eval.knn_k must be an integer >= 1 or a list of them, got 'abc'"),
    ("eval.semi_fractions=[0.5,2]", r"eval.semi_fractions must be a list of items, each in \(0, 1\]"),
    ("model.width=wide", "model.width must be a number > 0, got 'wide'"),
    ("partition=dirichlet partition.alpha=abc", "partition.alpha must be a number > 0, got 'abc'"),
    ("reid.lr_backbone=abc", "reid.lr_backbone must be a number > 0, got 'abc'"),
    ("sdr.groups=1.5", "sdr.groups must be an integer >= 1, got 1.5"),
    ("device=gpu", "device='gpu' is not valid; choose auto, cpu, cuda or cuda:N"),
    ("client_resources.num_cpus=many", r"client_resources.num_cpus must be one of \['auto'\] or an integer >= 1"),
    ("wandb.tags=7", "wandb.tags must be a list of items, each a string, got 7"),
    ("ssl=mocov2 strategy=fedavg ssl.shuffle_bn_splits=0", "ssl.shuffle_bn_splits must be an integer >= 1, got 0"),
])
def test_a_wrong_value_names_its_key_its_value_and_what_is_expected(make_cfg, override, message):
    with pytest.raises(ConfigError, match=message):
        preflight(make_cfg(*override.split()))


def constructor_args(cls) -> set[str]:
    return {p for c in cls.__mro__ if "__init__" in vars(c) for p in inspect.signature(c.__init__).parameters}


@pytest.mark.parametrize("group", ["strategy", "dataset", "partition", "model", "ssl", "experiment"])
def test_every_key_of_every_choice_has_a_type(group):
    """Each key is typed by the schema, a method's CONFIG, or the strategy's constructor."""
    for option in group_options(group):
        extra = ["strategy=fedavg"] if group == "ssl" else []
        cfg = to_plain(compose([f"{group}={option}", *extra]))
        specs = {**all_specs(), **method_config(cfg["ssl"]["name"])}
        untyped = missing_specs({k: v for k, v in cfg.items()}, specs)
        args = constructor_args(get_class(cfg["strategy"]["_target_"])) - {"self", "kwargs"}
        untyped = [k for k in untyped if not (k.startswith("strategy.") and k.split(".", 1)[1] in args)]
        assert not untyped, f"{group}={option}: keys without a type: {untyped}"
        meta = {k for k in cfg["strategy"] if k in not_constructor_args()}
        assert set(cfg["strategy"]) - meta - {"name"} <= args, f"{group}={option}: keys its strategy does not take"
