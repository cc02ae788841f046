"""One client's round of the SSL task (conventions 1 and 5, docs/architecture.md#conventions-and-where-they-come-from): what its instructions say to do
with the received weights, local training, what it uploads and what it keeps.

- receive: replace the uploaded parts (declining the optional ones when told to keep its own
  predictor, docs/algorithms.md#the-divergence-aware-predictor-update-dapu), or mix with FedEMA's rule (docs/algorithms.md#fedema), or keep everything (standalone);
- on its first participation the local parts (BYOL's target) start as a copy of what it received;
- train E epochs; report the reference form of FedU's divergence (before vs after training);
- keep what the server will not send back as it was (target; predictor under DAPU; everything
  for standalone and FedEMA).
"""

from __future__ import annotations

from protocol.weights import layer_divergences
from tasks.common.arrays import get_arrays, set_arrays
from tasks.common.clustering import nmi_report
from tasks.common.federated_data import client_images, client_labels
from tasks.common.local import LocalResult, LocalRound, kept_state
from tasks.common.training import round_lr
from tasks.ssl.fedema import fedema_update
from tasks.ssl.model import build_federated_method, divergence_layers, kept_keys
from tasks.ssl.train import train_one_round


def local_round(r: LocalRound) -> LocalResult:
    s, ins, rnd = r.settings, r.instructions, r.server_round
    method, plan, keys = build_federated_method(s, ins.layout_options)
    r.check_layout(method, keys)
    r.restore(method)
    div_idx = divergence_layers(keys, plan)
    received, mixing = set(), {}
    if ins.mix == "ema" and not r.first and r.received:
        mixing = fedema_update(method, keys, r.received, div_idx, r.info, rnd, float(ins.mix_tau), ins.mix_lambda)
    elif r.received and (r.first or ins.replace):
        adopt = r.first or ins.adopt_global_predictor
        received = set_arrays(method, keys, r.received, skip_parts=() if adopt else plan.optional)
    if r.first:
        method.init_local_parts(received)
    predictor_used = "global" if (set(plan.optional) & received) else "local"

    before = get_arrays(method, [keys[i] for i in div_idx])
    images = client_images(s.images, r.partition_id)
    t = s.recipe
    rounds = t.num_rounds
    lr = round_lr(t.lr, rnd, rounds, t.lr_schedule)
    stats = train_one_round(
        method, images, epochs=t.local_epochs, batch_size=t.batch_size, lr=lr,
        momentum=t.momentum, weight_decay=t.weight_decay, compute=r.compute(),
        generator=r.generator(), progress_start=(rnd - 1) / rounds, progress_span=1 / rounds, who=r.who,
        warmup_until=t.warmup_rounds / rounds, jitter=t.jitter, predictor_lr_mult=t.predictor_lr_mult,
    )
    after = get_arrays(method, [keys[i] for i in div_idx])
    method.before_upload()
    keep = kept_keys(method, plan, keys, keep_everything=ins.keep_everything, keep_optional=ins.keep_optional)
    # the reference form (docs/algorithms.md#the-divergence-aware-predictor-update-dapu): before vs after this round's training; relative to `before`
    reference, reference_relative = (layer_divergences(after, before, list(range(len(div_idx)))) if div_idx
                                     else (0.0, 0.0))
    metrics = {
        "loss": stats["loss"], "train_seconds": stats["train_seconds"],
        "images_per_second": stats["images_per_second"], "lr": lr, "predictor_used": predictor_used,
        "divergence_reference": reference, "divergence_reference_relative": reference_relative,
        **{f"ema_{k}": v for k, v in mixing.items()},
    }
    info = {"ema_lambda": mixing["lambda"]} if "lambda" in mixing else {}
    if method.assignments is not None:  # a clustering method (docs/algorithms.md#clustering-based-self-supervision): its clusters' NMI, kept for the next round
        metrics.update(method.cluster_report)
        metrics.update(nmi_report(method.assignments, client_labels(s.images, r.partition_id), r.info.get("assignments")))
        info["assignments"] = [int(a) for a in method.assignments]
    return LocalResult(get_arrays(method, keys), len(images), metrics, kept_state(method, keep), info)
