"""One client's round of federated SDR pre-training (docs/algorithms.md#sdr).

Load the global SDRnet, heads and centroids; assign each local image to a cluster (= path) with
the global centroids; train the full SDRnet and the paths of the current progressive stage
(SimSiam + SiamKD); update the centroids on the local features (Sinkhorn targets); upload
everything, with the samples routed to each path. Nothing is local: every weight is global.
"""

from __future__ import annotations

from tasks.common.arrays import get_arrays, set_arrays
from tasks.common.evaluate import extract_features
from tasks.common.federated_data import client_images
from tasks.common.local import LocalResult, LocalRound
from tasks.common.training import round_lr
from tasks.sdr.model import build_sdr_model
from tasks.sdr.train import assign_clusters, stage_of_round, train_sdr_round, update_centroids


def local_round(r: LocalRound) -> LocalResult:
    rnd, t = r.server_round, r.settings.training
    model = build_sdr_model(r.settings.network)
    keys = list(model.state_dict())
    r.check_layout(model, keys)
    if r.received:
        set_arrays(model, keys, r.received)
    compute = r.compute()
    device = compute.device
    images = client_images(r.settings.images, r.partition_id)
    feats = extract_features(model.net, images, device)
    clusters = assign_clusters(feats, model.centroids)
    stage = stage_of_round(rnd, t.num_rounds, model.net.num_blocks)
    stats = train_sdr_round(
        model, images, clusters, stage, epochs=t.local_epochs, batch_size=t.batch_size,
        lr=round_lr(t.lr, rnd, t.num_rounds), momentum=t.momentum,
        weight_decay=t.weight_decay, kd_weight=t.kd_weight, compute=compute,
        generator=r.generator(), who=r.who)
    centroid = update_centroids(model, feats.to(device), t.centroid_steps, t.centroid_lr,
                                t.cluster_temperature, t.sinkhorn_epsilon)
    metrics = {"loss": stats["loss"], "train_seconds": stats["train_seconds"],
               "images_per_second": stats["images_per_second"], "stage": stage, "centroid_loss": centroid,
               **{f"routed_{p}": n for p, n in stats["routed"].items()}}
    return LocalResult(get_arrays(model, keys), len(images), metrics, kept={})
