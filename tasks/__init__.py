"""All torch code, one package per task over shared helpers; nothing here knows of Flower.

    common/    data, partitions, augmentations, models, evaluation, checkpoints, training helpers,
               precision, k-means and NMI, and the types of one client's round (local.py)
    ssl/       self-supervised representation learning (BYOL, SimSiam, SimCLR, MoCo, SwAV, DeepCluster,
               SeLa; FedEMA's mixing)
    reid/      re-identification (FedPav's model, training, distillation, retrieval evaluation)
    sdr/       scalable dynamic routing (SDRnet, its training, evaluation and routing)
    detection/ federated object detection, FedVision (FCOS over the project's backbone, VOC/COCO/synthetic
               sites, COCO mAP)

Each task package exports its row (row.py, a common/task_row.Task; app/registry.py lists them):
the upload layout and initial weights, the client's local round, the evaluator, what it refuses
before training, its config types.
"""
