"""FedPav's server-side knowledge distillation (docs/algorithms.md#knowledge-distillation-on-the-server), and the hook the strategy is given.

Teachers = every client's latest uploaded model (no classifier); target t(x) = the mean of their
L2-normalised embeddings on the server's unlabeled public set; student = the aggregate, trained
by one pass over the public set.

Two forms (`reid.kd_form`):
- "normalised" (default): MSE between the *L2-normalised* student embedding and t(x), SGD with
  momentum `reid.momentum`. A deliberate deviation from the rule as written (docs/algorithms.md#knowledge-distillation-on-the-server): t(x) is a mean of unit vectors,
  so it is compared with a unit vector, and the raw embedding's scale is left alone.
- "spec": the rule as written in docs/algorithms.md#knowledge-distillation-on-the-server: MSE(student(x), t(x)) on the raw embedding, plain SGD.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from tasks.common.arrays import get_arrays, set_arrays
from tasks.common.augment import to_float
from tasks.common.training import client_generator, resolve_device
from tasks.reid.data import public_images
from tasks.reid.model import ReIDNet, build_reid_net, embeddings, shared_keys
from tasks.reid.settings import Distillation, ReIDSettings

SERVER_STREAM = 1_000_000  # the server's own random stream (clients use their partition ids)


def distillation_target(teacher_embeddings: list[torch.Tensor]) -> torch.Tensor:
    """t(x) = mean over teachers of their L2-normalised embeddings (docs/algorithms.md#knowledge-distillation-on-the-server)."""
    return torch.stack([F.normalize(t.float(), dim=1) for t in teacher_embeddings]).mean(0)


def distill(student: ReIDNet, teachers: list[ReIDNet], public: np.ndarray, d: Distillation, device: torch.device,
            generator: torch.Generator) -> float:
    """One pass over the public set towards t(x); returns the mean distillation loss.

    Teachers are in eval mode; the student trains at reid.kd_lr in the form `reid.kd_form`, its
    dropout drawing from `generator`, like its batch order.
    """
    bs, form = d.batch_size, d.form
    target = distillation_target([embeddings(t, public, device, bs, flip=False) for t in teachers])
    student.to(device).train()
    student.use_generator(generator)
    momentum = d.momentum if form == "normalised" else 0.0
    opt = torch.optim.SGD(student.parameters(), lr=d.lr, momentum=momentum)
    order = torch.randperm(len(public), generator=generator).numpy()
    losses = []
    for i in range(0, len(order), bs):
        idx = np.sort(order[i:i + bs])
        if len(idx) < 2:  # BatchNorm needs two samples
            continue
        x = to_float(torch.from_numpy(public[idx]), device)
        z = student.embed(x)
        loss = F.mse_loss(F.normalize(z, dim=1) if form == "normalised" else z, target[idx].to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return float(np.mean(losses)) if losses else float("nan")


def make_distill(s: ReIDSettings):
    """The strategy's distill hook, NumPy in and NumPy out (convention 2, docs/architecture.md#conventions-and-where-they-come-from); the public set is
    read on first use."""
    public = {}

    def distill_hook(student_arrays, teachers, server_round):
        if "x" not in public:
            public["x"] = public_images(s.identities, s.distillation.public_size)
        student = build_reid_net(s.network)
        keys = shared_keys(student)
        set_arrays(student, keys, student_arrays)
        nets = []
        for arrays in teachers:
            net = build_reid_net(s.network)
            set_arrays(net, keys, arrays)
            nets.append(net)
        loss = distill(student, nets, public["x"], s.distillation, resolve_device(s.device),
                       client_generator(s.network.seed, server_round, SERVER_STREAM))
        return get_arrays(student, keys), loss

    return distill_hook
