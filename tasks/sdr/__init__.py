"""SDR, scalable dynamic routing (AAAI 2022, docs/algorithms.md#sdr), as a federated task: the SDRnet and its
paths (net.py), the federated model and its group regions (model.py), training with balanced
clusters and progressive stages (train.py), evaluation (evaluator.py), routing (route.py)."""

from protocol.checks import Float, Int, ListOf, Text

# sdr.* (conf/task/sdr.yaml) and route.* (mode=route)
CONFIG = {
    "sdr.groups": Int(min=1), "sdr.stem": Int(min=1), "sdr.shared": ListOf(item=Int(min=1), min_length=1),
    "sdr.group": ListOf(item=Int(min=1), min_length=1), "sdr.strides": ListOf(item=Int(min=1), min_length=1),
    "sdr.width": Float(above=0), "sdr.proj_dim": Int(min=1), "sdr.pred_hidden": Int(min=1), "sdr.lr": Float(above=0),
    "sdr.momentum": Float(min=0), "sdr.weight_decay": Float(min=0), "sdr.kd_weight": Float(min=0),
    "sdr.centroid_steps": Int(min=0), "sdr.centroid_lr": Float(above=0), "sdr.cluster_temperature": Float(above=0),
    "sdr.sinkhorn_epsilon": Float(above=0),
    "route.bank_size": Int(min=1), "route.val_size": Int(min=1), "route.test_size": Int(min=1),
    "route.superclasses": ListOf(item=Text()), "route.linear_epochs": Int(min=1),
}

