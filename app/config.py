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
    """The value the last `key=value` among `overrides` gives (None when absent or null)."""
    values = [o.split("=", 1)[1] for o in overrides if "=" in o and key_of(o) == key]
    return values[-1] if values and values[-1] not in ("null", "") else None


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


def compose(overrides: list[str], with_hydra: bool = False) -> DictConfig:
    """conf/config.yaml with command-line overrides (Hydra's own `hydra` node too if with_hydra)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import ConfigCompositionException, MissingConfigException

    _check_choices(overrides)
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
    """A strategy with `pool_clients` (strategy=centralised, SPEC §2 upper bound): the same run with
    one client that holds everything the `num_clients` clients would hold together."""
    if not cfg["strategy"].get("pool_clients"):
        return cfg
    k = int(cfg["num_clients"])
    cap = cfg.get("examples_per_client")
    return dict(cfg, num_clients=1, fraction_fit=1.0, min_fit_clients=1, partition={"name": "iid"},
                examples_per_client=None if cap is None else int(cap) * k, centralised_from_clients=k)


def recompose(command_line: list[str], overrides: list[str]) -> dict:
    """The plain config a run's command line composes to, with `overrides` on top (later wins).

    How a saved run's config is rebuilt for a new command (resume, evaluating its checkpoint).
    """
    return centralise(to_plain(compose(list(command_line) + list(overrides))))
