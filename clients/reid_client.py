"""Flower NumPyClient for FedPav's local re-ID training (SPEC §5).

Receives the shared part (backbone + embedding block), re-attaches its own classifier kept in
`context.state` (sized to its identities; it never leaves the client), trains with
cross-entropy, and uploads the shared part. With `cdw` in its instructions it also reports the
cosine distance between its classifier outputs before and after training on one batch.
"""

from __future__ import annotations

import numpy as np
import torch

from clients.base import StatefulClient
from tasks.reid import build_reid_net, classifier_keys, classifier_outputs, cosine_distance_weight, shared_keys, train_local
from tasks.reid_data import client_train, num_identities
from tasks.train import NonFiniteLossError, client_generator
from tasks.wire import get_arrays, layout_fingerprint, set_arrays


class ReIDClient(StatefulClient):
    def fit(self, parameters, config):
        cfg = self.cfg
        rnd, who, device = self.begin_round(config)
        n_ids = num_identities(cfg, self.pid)
        net = build_reid_net(cfg, n_ids, self.pid)
        keys = shared_keys(net)
        if config.get("layout") and config["layout"] != layout_fingerprint(net, keys):
            raise RuntimeError(f"{who}: the server's upload layout differs from this client's config")
        first = self.first_participation
        info = self._restore(net)  # its classifier (standalone: everything)
        if parameters and (first or bool(config.get("replace", True))):
            set_arrays(net, keys, parameters)

        images, labels = client_train(cfg, self.pid)
        generator = client_generator(int(cfg["seed"]), rnd, self.pid)
        r = cfg["reid"]
        probe = None
        if config.get("cdw"):  # one batch of its data, fixed before training (SPEC §5)
            probe = images[np.sort(torch.randperm(len(images), generator=generator)[: int(r["batch_size"])].numpy())]
            before = classifier_outputs(net, probe, device)
        try:
            stats = train_local(net, images, labels, r, int(r["local_epochs"]), device, generator, who)
        except NonFiniteLossError as err:
            return [], 0, {"partition_id": self.pid, "fatal_error": str(err)}
        metrics = {"partition_id": self.pid, **stats, "num_identities": n_ids}
        if probe is not None:
            metrics["cdw"] = cosine_distance_weight(before, classifier_outputs(net, probe, device))
        keep_all = cfg["strategy"]["name"] == "standalone"
        keep = list(net.state_dict()) if keep_all else classifier_keys(net)
        info.update({"rounds_trained": int(info.get("rounds_trained", 0)) + 1, "last_round": rnd})
        self._persist(net, keep, info, config)
        return self._corrupt(get_arrays(net, keys), rnd), len(images), metrics
