"""Federated object detection (FedVision, issue 16, docs/algorithms.md#federated-object-detection-fedvision): a site's data (VOC and COCO folders,
the offline synthetic set), the FCOS detector over this project's backbone, its local round and
COCO-mAP evaluation, and the SSL encoder a detector may start from."""

from protocol.checks import Bool, Choice, Float, Int, ListOf, Text

# detection.* (conf/task/detection.yaml) and the detection datasets' own keys (conf/dataset/)
CONFIG = {
    "detection.backbone": Choice(options=("project", "resnet18", "resnet34", "resnet50")),
    "detection.backbone_init": Text(), "detection.fpn_channels": Int(min=1), "detection.head_convs": Int(min=0),
    "detection.local_epochs": Int(min=1), "detection.batch_size": Int(min=1), "detection.lr": Float(above=0),
    "detection.lr_schedule": Choice(options=("cosine", "constant")), "detection.momentum": Float(min=0),
    "detection.weight_decay": Float(min=0), "detection.flip": Bool(), "detection.score_thresh": Float(min=0, max=1),
    "detection.nms_thresh": Float(above=0, max=1), "detection.detections_per_image": Int(min=1),
    "detection.eval_batch_size": Int(min=1), "detection.evaluate": Choice(options=("auto", "server", "clients")),
    "detection.voc_difficult": Choice(options=("ignore", "include")),
    "strategy.share": Choice(options=("all", "backbone")), "detection.eval_images": Int(min=1, null=True),
    "dataset.format": Choice(options=("voc", "coco")), "dataset.classes": ListOf(item=Text()),
    "dataset.train_split": Text(), "dataset.test_split": Text(),
    "dataset.classes_per_site": Int(min=1), "dataset.canvas": Int(min=16), "dataset.min_object": Int(min=2),
    "dataset.max_object": Int(min=2), "dataset.max_objects": Int(min=1), "dataset.train_images": Int(min=1),
    "dataset.test_images": Int(min=1), "dataset.min_size": Int(min=16), "dataset.max_size": Int(min=16),
}
