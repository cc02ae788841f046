"""One client's round of the re-ID task (FedPav, docs/algorithms.md#fedpav).

It re-attaches its own classifier (kept between rounds, sized to its identities; it never
leaves the client) to the received shared part, trains with cross-entropy and uploads the shared
part. Told `cdw`, it also reports the cosine distance between its classifier outputs before and
after training on one batch fixed before training. Told to keep everything (standalone), it keeps
its whole model.
"""

from __future__ import annotations

import numpy as np
import torch

from tasks.common.arrays import get_arrays, set_arrays
from tasks.common.local import LocalResult, LocalRound, kept_state
from tasks.reid.data import client_train, num_identities
from tasks.reid.model import build_reid_net, classifier_keys, shared_keys
from tasks.reid.train import classifier_outputs, cosine_distance_weight, train_local


def local_round(r: LocalRound) -> LocalResult:
    s, ins, pid = r.settings, r.instructions, r.partition_id
    n_ids = num_identities(s.identities, pid)
    net = build_reid_net(s.network, n_ids, pid)
    keys = shared_keys(net)
    r.check_layout(net, keys)
    r.restore(net)  # its classifier (standalone: everything)
    if r.received and (r.first or ins.replace):
        set_arrays(net, keys, r.received)

    images, labels = client_train(s.identities, pid)
    generator, compute, t = r.generator(), r.compute(), s.training
    device = compute.device
    probe = None
    if ins.cdw:  # one batch of its data, fixed before training (docs/algorithms.md#cosine-distance-weight-reallocation)
        probe = images[np.sort(torch.randperm(len(images), generator=generator)[: t.batch_size].numpy())]
        before = classifier_outputs(net, probe, device)
    stats = train_local(net, images, labels, t, t.local_epochs, compute, generator, r.who)
    metrics = {**stats, "num_identities": n_ids}
    if probe is not None:
        metrics["cdw"] = cosine_distance_weight(before, classifier_outputs(net, probe, device))
    keep = list(net.state_dict()) if ins.keep_everything else classifier_keys(net)
    return LocalResult(get_arrays(net, keys), len(images), metrics, kept_state(net, keep))
