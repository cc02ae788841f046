"""Flower NumPyClient for federated SDR pre-training (SPEC §6).

Each round: load the global SDRnet, heads and centroids; assign each local image to a cluster
(= path) with the global centroids; train the full SDRnet and the paths of the current
progressive stage (SimSiam + SiamKD); update the centroids on the local features (Sinkhorn
targets); upload everything, with the samples routed to each path.
"""

from __future__ import annotations

from clients.base import StatefulClient
from tasks.evaluate import extract_features
from tasks.federated_data import client_images
from tasks.sdr import assign_clusters, build_sdr_model, stage_of_round, train_sdr_round, update_centroids
from tasks.train import NonFiniteLossError, client_generator, round_lr
from tasks.wire import get_arrays, layout_fingerprint, set_arrays


class SDRClient(StatefulClient):
    def fit(self, parameters, config):
        cfg = self.cfg
        rnd, who, device = self.begin_round(config)
        model = build_sdr_model(cfg)
        keys = list(model.state_dict())
        if config.get("layout") and config["layout"] != layout_fingerprint(model, keys):
            raise RuntimeError(f"{who}: the server's upload layout differs from this client's config")
        if parameters:
            set_arrays(model, keys, parameters)
        s = cfg["sdr"]
        images = client_images(cfg, self.pid)
        feats = extract_features(model.net, images, device)
        clusters = assign_clusters(feats, model.centroids)
        stage = stage_of_round(rnd, int(cfg["num_rounds"]), model.net.num_blocks)
        try:
            stats = train_sdr_round(
                model, images, clusters, stage, epochs=int(cfg["local_epochs"]), batch_size=int(cfg["batch_size"]),
                lr=round_lr(float(s["lr"]), rnd, int(cfg["num_rounds"])), momentum=float(s["momentum"]),
                weight_decay=float(s["weight_decay"]), kd_weight=float(s["kd_weight"]), device=device,
                generator=client_generator(int(cfg["seed"]), rnd, self.pid), who=who)
        except NonFiniteLossError as err:
            return [], 0, {"partition_id": self.pid, "fatal_error": str(err)}
        centroid = update_centroids(model, feats.to(device), int(s["centroid_steps"]), float(s["centroid_lr"]),
                                    float(s["cluster_temperature"]), float(s["sinkhorn_epsilon"]))
        info = self._info()
        info.update({"rounds_trained": int(info.get("rounds_trained", 0)) + 1, "last_round": rnd})
        self._persist(model, [], info, config)  # nothing local: every SDR weight is global
        metrics = {"partition_id": self.pid, "loss": stats["loss"], "train_seconds": stats["train_seconds"],
                   "images_per_second": stats["images_per_second"], "stage": stage, "centroid_loss": centroid,
                   **{f"routed_{p}": n for p, n in stats["routed"].items()}}
        return self._corrupt(get_arrays(model, keys), rnd), len(images), metrics
