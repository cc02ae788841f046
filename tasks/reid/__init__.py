"""Re-identification with FedPav (ACM MM 2020, docs/algorithms.md#fedpav): model, local training, server-side
distillation, data (CIFAR-100 proxy, Market-1501 folders) and retrieval evaluation."""

from protocol.checks import Bool, Choice, Float, Int, ListOf, Text

# reid.* (conf/task/reid.yaml) and the re-ID datasets' own keys (conf/dataset/*_reid*.yaml)
CONFIG = {
    "reid.embedding_dim": Int(min=1), "reid.dropout": Float(min=0, below=1), "reid.local_epochs": Int(min=1),
    "reid.batch_size": Int(min=1), "reid.lr_backbone": Float(above=0), "reid.lr_classifier": Float(above=0),
    "reid.momentum": Float(min=0), "reid.nesterov": Bool(), "reid.weight_decay": Float(min=0),
    "reid.kd_lr": Float(above=0), "reid.kd_batch_size": Int(min=2), "reid.kd_public_size": Int(min=2, null=True),
    "reid.kd_form": Choice(options=("normalised", "spec")),
    "reid.eval_batch_size": Int(min=1), "reid.eval_flip": Bool(),
    "dataset.source": Text(), "dataset.public_classes": Int(min=0), "dataset.eval_fraction": Float(above=0, below=1),
    "dataset.size_ratio": Float(min=1), "dataset.query_per_id": Int(min=1),
    "dataset.roots": ListOf(item=Text()), "dataset.public_root": Text(null=True),
    "dataset.image_size": ListOf(item=Int(min=8), length=2, description="[height, width] in pixels, each >= 8"),
}
