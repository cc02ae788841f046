"""Config checks that run before any training: typos, unknown choices, values out of range.

Hydra already refuses an unknown group choice and lists the options; for an unknown key it
does not say which keys exist. `check_overrides` composes the config the way `@hydra.main`
will and turns Hydra's errors into messages that list the valid keys or choices.
"""

from __future__ import annotations

import difflib
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
GROUPS = ("strategy", "dataset", "partition", "model", "ssl", "experiment")


class ConfigError(ValueError):
    """The configuration cannot run; the message names the key and the valid values."""


def group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def _all_keys(node, prefix: str = "") -> list[str]:
    keys = []
    for k, v in node.items():
        full = f"{prefix}{k}"
        keys.append(full)
        if isinstance(v, DictConfig):
            keys.extend(_all_keys(v, full + "."))
    return keys


def compose(overrides: list[str]) -> DictConfig:
    """Compose conf/config.yaml with command-line overrides, with readable errors."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import ConfigCompositionException, MissingConfigException

    for o in overrides:
        key = o.split("=", 1)[0].lstrip("+~")
        if key in GROUPS and "=" in o:
            choice = o.split("=", 1)[1]
            if choice not in group_options(key):
                raise ConfigError(
                    f"unknown choice {key}={choice}; valid {key} choices: {', '.join(group_options(key))}"
                )
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
            base = hydra_compose("config", overrides=[o for o in overrides if o.split("=", 1)[0] in GROUPS])
            known = set(_all_keys(base))
            for o in overrides:
                if "=" not in o or o.startswith(("+", "~")) or o.startswith("hydra"):
                    continue
                key = o.split("=", 1)[0]
                if key not in known and key not in GROUPS:
                    close = difflib.get_close_matches(key, sorted(known), n=3)
                    top = sorted(k for k in known if "." not in k and k != "hydra")
                    raise ConfigError(
                        f"unknown config key '{key}'"
                        + (f"; did you mean {' or '.join(close)}?" if close else "")
                        + f"\nvalid top-level keys: {', '.join(top)}"
                        + (f"\nkeys under '{key.rsplit('.', 1)[0]}': "
                           f"{', '.join(k for k in sorted(known) if k.startswith(key.rsplit('.', 1)[0] + '.'))}"
                           if "." in key else "")
                    )
            return hydra_compose("config", overrides=overrides, return_hydra_config=False)
    except (ConfigCompositionException, MissingConfigException) as err:
        cause = err.__cause__
        raise ConfigError(str(err) or f"{type(cause).__name__}: {cause}") from err
    finally:
        GlobalHydra.instance().clear()


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise ConfigError(message)


def validate(cfg: dict) -> None:
    """Values out of range, each with the key, the value and what would be valid."""
    for key in ("num_clients", "num_rounds", "local_epochs", "batch_size"):
        _check(isinstance(cfg[key], int) and cfg[key] >= 1, f"{key} must be an integer >= 1, got {cfg[key]!r}")
    _check(0 < float(cfg["fraction_fit"]) <= 1, f"fraction_fit must be in (0, 1], got {cfg['fraction_fit']}")
    mfc = cfg["min_fit_clients"]
    per_round = max(1, round(cfg["num_clients"] * float(cfg["fraction_fit"])))
    _check(isinstance(mfc, int) and 1 <= mfc <= per_round,
           f"min_fit_clients must be in [1, {per_round}] (clients sampled per round), got {mfc!r}")
    _check(cfg["eval_every"] >= 0, f"eval_every must be >= 0 (0 = only after the last round), got {cfg['eval_every']}")
    epc = cfg.get("examples_per_client")
    _check(epc is None or (isinstance(epc, int) and epc >= cfg["batch_size"]),
           f"examples_per_client must be null or an integer >= batch_size ({cfg['batch_size']}), got {epc!r}")
    st = cfg["strategy"]
    if "mu" in st:
        _check(float(st["mu"]) >= 0, f"strategy.mu must be >= 0, got {st['mu']}")
    for key, valid in (("predictor", ("dapu", "global", "local")), ("divergence", ("paper", "reference")),
                       ("sync", ("online", "target", "both")), ("bn", ("global", "local"))):
        if key in st:
            _check(st[key] in valid, f"strategy.{key}={st[key]!r} is not valid; choose one of {list(valid)}")
    _check(cfg["wandb"]["mode"] in ("offline", "online", "disabled"),
           f"wandb.mode={cfg['wandb']['mode']!r}; choose offline, online or disabled")
    _check(float(cfg["model"]["width"]) > 0, f"model.width must be > 0, got {cfg['model']['width']}")
    _check(float(cfg["ssl"]["lr"]) > 0, f"ssl.lr must be > 0, got {cfg['ssl']['lr']}")
    if "tau" in cfg["ssl"]:
        _check(0 <= float(cfg["ssl"]["tau"]) < 1, f"ssl.tau must be in [0, 1), got {cfg['ssl']['tau']}")
    if "ema_tau" in st:
        _check(float(st["ema_tau"]) > 0, f"strategy.ema_tau must be > 0, got {st['ema_tau']}")
    if st.get("ema_lambda") is not None:
        _check(float(st["ema_lambda"]) >= 0, f"strategy.ema_lambda must be null or >= 0, got {st['ema_lambda']}")
    if cfg["strategy"]["name"] in ("fedu", "fedbyol", "fedema") and cfg["ssl"]["name"] != "byol":
        raise ConfigError(f"strategy={cfg['strategy']['name']} is defined for BYOL (ssl=byol); "
                          f"run ssl={cfg['ssl']['name']} with strategy=fedavg or strategy=standalone")
    _validate_task(cfg)
    _check(cfg.get("mode", "train") in ("train", "route", "evaluate"),
           f"mode={cfg.get('mode')!r}; choose train, route or evaluate")
    ev = cfg["eval"]
    _check(ev["knn_features"] in ("backbone", "projector"),
           f"eval.knn_features={ev['knn_features']!r}; choose backbone or projector")
    if cfg["partition"]["name"] == "dirichlet":
        _check(float(cfg["partition"]["alpha"]) > 0, f"partition.alpha must be > 0, got {cfg['partition']['alpha']}")
    _check(isinstance(cfg["checkpoint_every"], int) and cfg["checkpoint_every"] >= 0,
           f"checkpoint_every must be an integer >= 0 (0 = never), got {cfg['checkpoint_every']!r}")
    rt = cfg.get("round_timeout")
    _check(rt is None or float(rt) > 0, f"round_timeout must be null or > 0 seconds, got {rt}")
    for key in ("client_raise", "client_hang", "nan_update", "wrong_shape_update"):
        pairs = cfg["faults"][key] or []
        _check(all(isinstance(p, (list, tuple)) and len(p) == 2 for p in pairs),
               f"faults.{key} must be a list of [partition_id, round] pairs, got {pairs!r}")
    nb = cfg.get("norm_bound")
    _check(nb is None or float(nb) > 0, f"norm_bound must be null or > 0, got {nb}")
    dev = str(cfg["device"])
    _check(dev in ("auto", "cpu") or dev.startswith("cuda"), f"device={dev!r}; choose auto, cpu, cuda or cuda:N")


REID_STRATEGIES = ("fedpav", "standalone")


def _validate_task(cfg: dict) -> None:
    """Re-ID data goes with FedPav (or standalone); FedPav needs re-ID data (SPEC §5)."""
    name, reid = cfg["strategy"]["name"], str(cfg["dataset"].get("kind", "images")) == "reid"
    if reid and name not in REID_STRATEGIES:
        raise ConfigError(f"dataset={cfg['dataset']['name']} is a re-identification data set; strategy={name} "
                          f"learns self-supervised image representations. Use strategy=fedpav or strategy=standalone")
    if name == "fedpav" and not reid:
        raise ConfigError(f"strategy=fedpav trains re-identification models; dataset={cfg['dataset']['name']} has "
                          f"no identities. Use dataset=cifar100_reid (proxy) or dataset=reid_folders")
    if name == "sdr":
        sd = cfg["sdr"]
        blocks = len(sd["shared"])
        _check(blocks >= 1 and len(sd["group"]) == blocks and len(sd["strides"]) == blocks,
               f"sdr.shared, sdr.group and sdr.strides need one entry per SDR block, got {sd['shared']}, "
               f"{sd['group']}, {sd['strides']}")
        _check(isinstance(sd["groups"], int) and sd["groups"] >= 1, f"sdr.groups must be an integer >= 1, got {sd['groups']!r}")
        _check(float(sd["width"]) > 0 and float(sd["lr"]) > 0, f"sdr.width and sdr.lr must be > 0")
    if not reid:
        return
    r = cfg["reid"]
    for key in ("embedding_dim", "local_epochs", "batch_size", "kd_batch_size", "eval_batch_size"):
        _check(isinstance(r[key], int) and r[key] >= 1, f"reid.{key} must be an integer >= 1, got {r[key]!r}")
    for key in ("lr_backbone", "lr_classifier", "kd_lr"):
        _check(float(r[key]) > 0, f"reid.{key} must be > 0, got {r[key]}")
    _check(0 <= float(r["dropout"]) < 1, f"reid.dropout must be in [0, 1), got {r['dropout']}")
    if name == "fedpav":
        kd_every = cfg["strategy"]["kd_every"]
        _check(isinstance(kd_every, int) and kd_every >= 1, f"strategy.kd_every must be an integer >= 1, got {kd_every!r}")


def centralise(cfg: dict) -> dict:
    """strategy=centralised: the same run with one client that holds everything the
    `num_clients` clients would hold together (SPEC §2, upper bound)."""
    if cfg["strategy"]["name"] != "centralised":
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


def to_plain(cfg: DictConfig) -> dict:
    """Resolved plain-dict config (what clients, checkpoints and summary.json carry)."""
    plain = OmegaConf.to_container(cfg, resolve=True)
    plain.pop("hydra", None)
    return plain
