"""Composing the run's config from conf/ and the command line, once per command.

Hydra refuses an unknown group choice and lists the options, but for an unknown key it does not
say which keys exist; `compose` turns its errors into messages that list the valid keys or
choices. Values are checked afterwards (app/schema.py).
"""

from __future__ import annotations

import difflib
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from protocol.checks import ConfigError  # noqa: F401 - the error every config check raises

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
GROUPS = ("strategy", "dataset", "partition", "model", "ssl", "experiment")


def group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def group_nodes(group: str) -> dict[str, dict]:
    """conf/<group>/<option>.yaml as plain dicts, by option (for suggestions in messages)."""
    return {o: OmegaConf.to_container(OmegaConf.load(CONF_DIR / group / f"{o}.yaml")) for o in group_options(group)}


def _all_keys(node, prefix: str = "") -> list[str]:
    keys = []
    for k, v in node.items():
        full = f"{prefix}{k}"
        keys.append(full)
        if isinstance(v, DictConfig):
            keys.extend(_all_keys(v, full + "."))
    return keys


def key_of(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def override_value(overrides: list[str], key: str) -> str | None:
    """The value the last `key=value` among `overrides` gives, read as Hydra reads every override
    (so `'resume="/runs/a b"'` means what `'output_dir="/runs/a b"'` means); None when absent or null."""
    given = [o for o in overrides if "=" in o and key_of(o) == key]
    if not given:
        return None
    value = parse_overrides(given[-1:], sweeps=False)[0].value()
    return None if value is None or value == "" else str(value)


def quoted(key: str, value: str) -> str:
    """`key=value` as one shell argument whose value Hydra reads verbatim: 'output_dir="/runs/a b"'."""
    value = value.strip("'\"") if value[:1] == value[-1:] and value[:1] in ("'", '"') else value
    return f"\"{key}='{value}'\"" if '"' in value else f"'{key}=\"{value}\"'"


NEEDS_QUOTES = "~=(){}'\"\\"  # characters an unquoted Hydra value cannot hold (letters outside ASCII neither)


def _syntax_message(overrides: list[str], i: int) -> str:
    """Why Hydra cannot read overrides[i], and the quoting that makes it readable."""
    bad = overrides[i]
    if "=" not in bad:
        j = next((j for j in range(i - 1, -1, -1) if "=" in overrides[j]), None)
        if j is not None:  # `output_dir=/runs/a b`: the shell split the value at its spaces
            end = next((n for n in range(i + 1, len(overrides)) if "=" in overrides[n]), len(overrides))
            key, value = overrides[j].split("=", 1)
            return (f"cannot read '{bad}' on the command line: every argument is key=value, and a value with spaces "
                    f"must be one quoted argument: {quoted(key, ' '.join([value, *overrides[j + 1:end]]))}")
        return f"cannot read '{bad}' on the command line: every argument is key=value (python main.py --help lists them)"
    key, value = bad.split("=", 1)
    odd = next((c for c in value if c in NEEDS_QUOTES or not c.isascii()), None)
    why = f" ({odd!r})" if odd else ""
    return (f"cannot read {bad}: Hydra reads letters outside ASCII, and any of ~ = ( ) {{ }} \\ ' \", only in a "
            f"quoted value{why}; write {quoted(key, value)}")


def parse_overrides(overrides: list[str], sweeps: bool = True) -> list:
    """Hydra's reading of each `key=value` (hydra's Override objects); ConfigError naming the first
    one it cannot read, or (unless `sweeps`) the first with several values, and how to quote it."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    parser = OverridesParser.create()
    parsed = []
    for i, override in enumerate(overrides):
        try:
            parsed += parser.parse_overrides([override])
        except OverrideParseException:
            raise ConfigError(_syntax_message(list(overrides), i)) from None
    for o in parsed if not sweeps else ():
        if o.is_sweep_override():
            key, value = o.input_line.split("=", 1)
            raise ConfigError(f"{o.input_line}: Hydra reads a comma as several values, a sweep that only python main.py "
                              f"-m runs; quote a value that holds one ({quoted(key, value)}) or write a list as "
                              f"{key}=[a,b]")
    return parsed


def _check_choices(overrides: list[str]) -> None:
    for o in overrides:
        key = key_of(o)
        if key in GROUPS and "=" in o:
            choice = o.split("=", 1)[1]
            if choice not in group_options(key):
                raise ConfigError(
                    f"unknown choice {key}={choice}; valid {key} choices: {', '.join(group_options(key))}")


def _unknown_key_message(hydra_compose, overrides: list[str]) -> str | None:
    """After a failed composition: the first override naming a key the config does not have, explained."""
    base = hydra_compose("config", overrides=[o for o in overrides if key_of(o) in GROUPS])
    known = set(_all_keys(base))
    for o in overrides:
        if "=" not in o or o.startswith(("+", "~", "hydra")):
            continue
        key = o.split("=", 1)[0]
        if key in known or key in GROUPS:
            continue
        close = difflib.get_close_matches(key, sorted(known), n=3)
        top = sorted(k for k in known if "." not in k and k != "hydra")
        parent = key.rsplit(".", 1)[0]
        return (f"unknown config key '{key}'" + (f"; did you mean {' or '.join(close)}?" if close else "")
                + f"\nvalid top-level keys: {', '.join(top)}"
                + (f"\nkeys under '{parent}': {', '.join(k for k in sorted(known) if k.startswith(parent + '.'))}"
                   if "." in key else ""))
    return None


def has_cuda(device: str | None) -> bool:
    """Whether a run with this `device` setting computes on a CUDA GPU here."""
    if str(device or "auto") == "cpu":
        return False
    import torch

    return torch.cuda.is_available()


def auto_preset(overrides: list[str], deployed: bool = False) -> str | None:
    """The preset `experiment=auto` (the default) stands for in this command, or None when the
    command names another preset: `paper` where the run's device is a CUDA GPU, the quick CPU preset
    `cpu` otherwise. A deployment always gets `paper`: its server cannot see the SuperNodes' hardware,
    and every node must build the same model from the same overrides."""
    if (override_value(overrides, "experiment") or "auto") != "auto":
        return None
    return "paper" if deployed or has_cuda(override_value(overrides, "device")) else "cpu"


def with_preset(overrides: list[str], deployed: bool = False) -> list[str]:
    """`overrides` with `experiment=auto` (given or by default) replaced by the preset it stands for."""
    preset = auto_preset(overrides, deployed)
    if preset is None:
        return list(overrides)
    return [o for o in overrides if key_of(o) != "experiment"] + [f"experiment={preset}"]


def preset_line(cfg: dict, overrides: list[str]) -> str:
    """The run's first console line: which preset it runs, and why when `auto` chose it."""
    preset = cfg.get("preset", "paper")
    if (override_value(overrides, "experiment") or "auto") != "auto" or cfg.get("resume"):
        return f"preset: {preset}"
    if preset == "paper":
        return "preset: paper (experiment=auto with a CUDA GPU: the paper's protocol)"
    return (f"preset: {preset} (experiment=auto without a CUDA GPU: a quick CPU run of a narrow ResNet-18, "
            f"about 4 minutes on 2 cores; experiment=cpu_learn for a CPU run that learns, experiment=paper "
            f"for the paper's protocol)")


def compose(overrides: list[str], with_hydra: bool = False, deployed: bool = False) -> DictConfig:
    """conf/config.yaml with command-line overrides (Hydra's own `hydra` node too if with_hydra);
    `experiment=auto` is resolved first (`with_preset`)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import ConfigCompositionException, MissingConfigException

    parse_overrides(overrides, sweeps=False)  # a syntax error: which override, and how to quote it
    _check_choices(overrides)
    overrides = with_preset(overrides, deployed)
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
            try:
                return hydra_compose("config", overrides=list(overrides), return_hydra_config=with_hydra)
            except (ConfigCompositionException, MissingConfigException) as err:
                message = _unknown_key_message(hydra_compose, list(overrides))
                cause = err.__cause__
                raise ConfigError(message or str(err) or f"{type(cause).__name__}: {cause}") from err
    finally:
        GlobalHydra.instance().clear()


def to_plain(cfg: DictConfig) -> dict:
    """Resolved plain-dict config (what clients, checkpoints and summary.json carry)."""
    return OmegaConf.to_container(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), resolve=True)


def centralise(cfg: dict) -> dict:
    """A strategy with `pool_clients` (strategy=centralised, the upper bound of docs/algorithms.md#baselines): the same run with
    one client that holds everything the `num_clients` clients would hold together."""
    if not cfg["strategy"].get("pool_clients"):
        return cfg
    k = int(cfg["num_clients"])
    cap = cfg.get("examples_per_client")
    return dict(cfg, num_clients=1, fraction_fit=1.0, min_fit_clients=1, partition={"name": "iid"},
                examples_per_client=None if cap is None else int(cap) * k, centralised_from_clients=k)


def saved_command_line(saved_cfg: dict) -> list[str]:
    """A saved run's command line with its preset pinned: the config's `preset` (runs saved before
    `experiment=auto` existed ran the paper's), so that a line without `experiment=` rebuilds the
    same run on a machine with or without a GPU."""
    line = [str(o) for o in saved_cfg.get("command_line") or []]
    if (override_value(line, "experiment") or "auto") != "auto":
        return line
    return [o for o in line if key_of(o) != "experiment"] + [f"experiment={saved_cfg.get('preset') or 'paper'}"]


def recompose(command_line: list[str], overrides: list[str]) -> dict:
    """The plain config a run's command line composes to, with `overrides` on top (later wins).

    How a saved run's config is rebuilt for a new command (resume, evaluating its checkpoint):
    give it `saved_command_line(saved config)`.
    """
    return centralise(to_plain(compose(list(command_line) + list(overrides))))
