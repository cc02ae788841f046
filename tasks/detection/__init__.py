"""Federated object detection (issue 16, SPEC §7): a site's annotations (VOC, COCO folders) and
the offline synthetic set; the detector, its local round and evaluation come next."""
