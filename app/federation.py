"""The one place that builds the ServerApp and ClientApp from a resolved config.

`main.py` (simulation) and the `[tool.flwr.app.components]` apps (deployment) both call
these builders, so the two modes cannot drift apart (DESIGN.md "Layout").
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from flwr.client import ClientApp
from flwr.common import log
from flwr.server import ServerApp, ServerAppComponents, ServerConfig

from app.report import RunReport
from app.resume import save_state, set_rng_states
from clients.reid_client import ReIDClient
from clients.sdr_client import SDRClient
from clients.ssl_client import SSLClient
from strategies import STRATEGIES, Layout, ServerHooks
from tasks.checkpoint import CheckpointError, save_checkpoint
from tasks.reid import build_reid_net, shared_keys
from tasks.reid import distill as reid_distill
from tasks.reid_data import is_reid, public_images
from tasks.reid_eval import ReIDEvaluator
from tasks.representation import RepresentationEvaluator
from tasks.sdr import all_paths, build_sdr_model, group_regions
from tasks.sdr_eval import SDREvaluator
from tasks.train import client_generator, resolve_device
from tasks.wire import build_federated_method, divergence_layers, get_arrays, layout_fingerprint, set_arrays


def clients_per_round(cfg: dict) -> int:
    return max(1, min(cfg["num_clients"], int(round(cfg["num_clients"] * float(cfg["fraction_fit"])))))


def client_resources(cfg: dict) -> dict:
    """CPUs/GPUs per simulated client; `auto` runs as many clients in parallel as cores allow."""
    res = cfg["client_resources"]
    cores = os.cpu_count() or 1
    parallel = min(clients_per_round(cfg), cores)
    num_cpus = res["num_cpus"]
    num_cpus = max(1, cores // parallel) if num_cpus == "auto" else int(num_cpus)
    num_gpus = res["num_gpus"]
    if num_gpus == "auto":
        import torch

        use_gpu = str(cfg["device"]) != "cpu" and torch.cuda.is_available()
        num_gpus = (torch.cuda.device_count() / min(parallel, 4 * torch.cuda.device_count())) if use_gpu else 0.0
    return {"num_cpus": num_cpus, "num_gpus": float(num_gpus)}


def task_of(cfg: dict) -> str:
    """What the clients train: "reid" (FedPav, or standalone on re-ID data), "sdr", or "ssl"."""
    return "reid" if is_reid(cfg) else "sdr" if cfg["strategy"]["name"] == "sdr" else "ssl"


EVALUATORS = {"ssl": RepresentationEvaluator, "reid": ReIDEvaluator, "sdr": SDREvaluator}
CLIENTS = {"ssl": SSLClient, "reid": ReIDClient, "sdr": SDRClient}


def build_layout(cfg: dict):
    """The upload layout and the initial global arrays, from the same code the clients run."""
    task = task_of(cfg)
    if task == "ssl":
        method, plan, keys = build_federated_method(cfg)
        arrays = get_arrays(method, keys)
        return Layout(keys=keys, shapes=[a.shape for a in arrays], fingerprint=layout_fingerprint(method, keys),
                      divergence_layers=divergence_layers(keys, plan)), arrays
    # FedPav uploads backbone + embedding block (classifiers stay on the clients); SDR everything
    net = build_reid_net(cfg) if task == "reid" else build_sdr_model(cfg)
    keys = shared_keys(net) if task == "reid" else list(net.state_dict())
    arrays = get_arrays(net, keys)
    return Layout(keys=keys, shapes=[a.shape for a in arrays], fingerprint=layout_fingerprint(net, keys)), arrays


SERVER_STREAM = 1_000_000  # the server's own random stream (clients use their partition ids)


def build_distill(cfg: dict):
    """FedPav's server-side distillation as a NumPy-in, NumPy-out hook (DESIGN.md conv. 2)."""
    public = {}

    def distill(student_arrays, teachers, server_round):
        if "x" not in public:
            public["x"] = public_images(cfg)
        student = build_reid_net(cfg)
        keys = shared_keys(student)
        set_arrays(student, keys, student_arrays)
        nets = []
        for arrays in teachers:
            net = build_reid_net(cfg)
            set_arrays(net, keys, arrays)
            nets.append(net)
        device = resolve_device(str(cfg["device"]))
        loss = reid_distill(student, nets, public["x"], cfg["reid"], device,
                            client_generator(int(cfg["seed"]), server_round, SERVER_STREAM))
        return get_arrays(student, keys), loss

    return distill


def build_strategy(cfg: dict, report: RunReport, resume_state: dict | None = None):
    """The configured strategy with its hooks; `resume_state` (app/resume.py) continues a run."""
    layout, initial = build_layout(cfg)
    if resume_state is not None:
        if resume_state["layout"] != layout.fingerprint:
            raise CheckpointError("resume: the saved global model does not fit this model/method config "
                                  "(different keys or shapes); resume with the original settings")
        initial = resume_state["arrays"]
        set_rng_states(resume_state["rng"])
    evaluator = EVALUATORS[task_of(cfg)](cfg)
    out_dir = Path(report.out_dir)

    def checkpoint(models, server_round):
        return save_checkpoint(out_dir / "checkpoint_final.pt", cfg, layout.keys, models, server_round)

    def persist(server_round, arrays, strategy_state):
        save_state(out_dir, server_round, cfg, layout.fingerprint, arrays, strategy_state, report.summary)
        if cfg["faults"]["exit_after_round"] == server_round:
            log(logging.ERROR, "fault injection: the server process dies after round %s", server_round)
            os._exit(75)

    hooks = ServerHooks(evaluate=evaluator, report=report.report, save_checkpoint=checkpoint,
                        save_state=persist if cfg["checkpoint_every"] > 0 else (lambda *a: None),
                        distill=build_distill(cfg) if uses_distillation(cfg) else None)
    st = cfg["strategy"]
    common = dict(
        layout=layout, hooks=hooks, initial_arrays=initial, num_rounds=cfg["num_rounds"],
        num_clients=cfg["num_clients"], fraction_fit=float(cfg["fraction_fit"]),
        min_fit_clients=int(cfg["min_fit_clients"]), eval_every=int(cfg["eval_every"]),
        eval_at_start=bool(cfg["eval"]["at_start"]), seed=int(cfg["seed"]),
        norm_bound=None if cfg.get("norm_bound") is None else float(cfg["norm_bound"]),
        checkpoint_every=int(cfg["checkpoint_every"]), resume_from=resume_state,
    )
    cls = STRATEGIES[st["name"]]
    if st["name"] in ("fedu", "fedbyol"):
        return cls(predictor=st["predictor"], mu=float(st["mu"]), divergence=st["divergence"], **common)
    if st["name"] == "fedpav":
        return cls(cdw=bool(st["cdw"]), kd=bool(st["kd"]), kd_every=int(st["kd_every"]), **common)
    if st["name"] == "sdr":
        model = build_sdr_model(cfg)
        return cls(regions=group_regions(model, layout.keys),
                   path_groups=all_paths(model.net.groups, model.net.num_blocks), **common)
    return cls(**common)


def uses_distillation(cfg: dict) -> bool:
    return cfg["strategy"]["name"] == "fedpav" and bool(cfg["strategy"].get("kd"))


def server_config(cfg: dict, resume_state: dict | None = None) -> ServerConfig:
    done = resume_state["round"] if resume_state else 0  # Flower counts the remaining rounds from 1
    timeout = cfg.get("round_timeout")
    return ServerConfig(num_rounds=cfg["num_rounds"] - done, round_timeout=None if timeout is None else float(timeout))


def build_server_app(cfg: dict, report: RunReport, resume_state: dict | None = None) -> ServerApp:
    def server_fn(context) -> ServerAppComponents:
        return ServerAppComponents(strategy=build_strategy(cfg, report, resume_state),
                                   config=server_config(cfg, resume_state))

    return ServerApp(server_fn=server_fn)


def build_client(cfg: dict, partition_id: int, state, threads: int = 1, state_dir: str | None = None):
    """The client for the run's task (`task_of`)."""
    return CLIENTS[task_of(cfg)](cfg, partition_id, state, threads=threads, state_dir=state_dir)


def make_client_fn(cfg: dict):
    """client_fn for Flower: one client for the partition named in the node config."""
    threads = int(client_resources(cfg)["num_cpus"])

    def client_fn(context):
        return build_client(cfg, int(context.node_config["partition-id"]), context.state, threads).to_client()

    return client_fn


def build_client_app(cfg: dict) -> ClientApp:
    return ClientApp(client_fn=make_client_fn(cfg))
