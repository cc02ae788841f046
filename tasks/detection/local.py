"""One site's round of the detection task (FedVision, docs/algorithms.md#federated-object-detection-fedvision): take the server's detector (or keep
its own, standalone), train it on the site's images with the detector's losses, upload it.

What is uploaded is the layout's (`shared`: the whole detector, FedVision's; or the backbone, with
the heads kept on the site: partial averaging, strategy=fedpav); what the server does not send
back is kept in the client's state between rounds (standalone: everything). `local_evaluate`
scores the site's model on its own test split when the sites evaluate (detection.evaluate).
"""

from __future__ import annotations

from tasks.common.arrays import get_arrays, set_arrays
from tasks.common.local import LocalResult, LocalRound, kept_state
from tasks.common.training import round_lr
from tasks.detection.data import client_train, site_test
from tasks.detection.evaluator import site_scores
from tasks.detection.model import build_detector, upload_keys
from tasks.detection.train import train_local


def _site_model(r: LocalRound):
    """The detector this site works with: its kept parts with the server's weights in place."""
    net = build_detector(r.settings.detector)
    keys = upload_keys(net, r.instructions.layout_options)
    r.check_layout(net, keys)
    r.restore(net)
    if r.received and (r.first or r.instructions.replace):
        set_arrays(net, keys, r.received)
    return net, keys


def local_evaluate(r: LocalRound) -> tuple[int, dict]:
    """(test images, COCO figures) of the site's model on its own test split (evaluate=clients)."""
    net, _ = _site_model(r)
    data = site_test(r.settings.sites, r.partition_id)
    figures, _ = site_scores(net, data, r.device(), r.settings.eval_batch_size)
    return len(data), figures


def local_round(r: LocalRound) -> LocalResult:
    ins, t = r.instructions, r.settings.training
    net, keys = _site_model(r)
    data = client_train(r.settings.sites, r.partition_id)
    lr = round_lr(t.lr, r.server_round, t.num_rounds, t.lr_schedule)
    stats = train_local(net, data, t, lr, r.compute(), r.generator(), r.who)
    keep = list(net.state_dict()) if ins.keep_everything else [k for k in net.state_dict() if k not in set(keys)]
    metrics = {**stats, "lr": lr, "objects": int(sum(len(y) for y in data.labels))}
    return LocalResult(get_arrays(net, keys), len(data), metrics, kept_state(net.cpu(), keep))
