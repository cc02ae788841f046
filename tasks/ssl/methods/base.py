"""What every local SSL method provides, and which of its weights travel (conventions 3-4, docs/architecture.md#conventions-and-where-they-come-from).

A method is an nn.Module whose state_dict keys start with the name of one of its *parts*
(e.g. BYOL: `online.`, `predictor.`, `target.`). Which parts are uploaded to the server and
which stay on the client is declared in exactly one place per method, `SSLMethod.sync_plan`,
and both the client and the server derive their key lists from it, so the order of the
arrays that cross the wire is never guessed. A method also declares its augmentation recipe
(`views`: how many views, which sizes) and takes the list of views in `loss`, so a multi-crop or
clustering method is a new module, not a change to the training loop; and the types of its
arguments (`CONFIG`, checked before it is built, named as `ssl.<argument>`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from protocol.checks import Float, Int
from tasks.common.augment import TWO_VIEWS, View

# head sizes every method may be given by a preset; a method without such a head ignores them
HEAD_CONFIG = {"proj_hidden": Int(min=1), "proj_dim": Int(min=1), "pred_hidden": Int(min=1)}


@dataclass(frozen=True)
class SyncPlan:
    """Parts of a method's model, by role in federated training.

    uploaded: parts sent to the server and aggregated.
    local: parts that never leave the client (BYOL's target, MoCo's key encoder and queue).
    optional: uploaded parts a client may decline to replace with the global version
        (FedU's predictor under DAPU), so the client keeps its own copy as local state.
    eval_encoder: the part whose backbone is evaluated as "the global encoder".
    """

    uploaded: tuple[str, ...]
    local: tuple[str, ...]
    optional: tuple[str, ...] = ()
    eval_encoder: str = "online"


def momentum_update(target: nn.Module, online: nn.Module, tau: float) -> None:
    """xi <- tau * xi + (1 - tau) * theta, parameters only (docs/algorithms.md#byol)."""
    with torch.no_grad():
        for t, o in zip(target.parameters(), online.parameters()):
            t.mul_(tau).add_(o.detach(), alpha=1.0 - tau)


def one_encoder(sync: str) -> None:
    """The sync ablation (which encoder travels) exists for BYOL's two encoders only."""
    if sync != "online":
        raise ValueError(f"sync={sync!r} applies to BYOL only; this method has one encoder (use sync=online)")


TEMPERATURE = Float(above=0)


class SSLMethod(nn.Module):
    """Base class: subclasses build their parts as attributes and implement `loss`."""

    name = "base"
    CONFIG: dict = {}  # argument -> protocol.checks.Spec (besides arch/width and the head sizes)
    views: tuple[View, ...] = TWO_VIEWS  # the augmentation recipe: one View per augmented view
    needs_index = False  # loss(views, generator, index): the batch's rows among the client's images
    CLIENT_METRICS: tuple[str, ...] = ()  # its clients' own metrics recorded per client in summary.json
    CLIENT_FIELDS: tuple = ()  # those of them the round's console line shows (protocol.fields.ClientField)
    global_clusters = False  # clusters/prototypes that are the federation's (docs/algorithms.md#federated-forms, ssl.clusters=global)
    sum_merge: tuple[tuple[str, str], ...] = ()  # (centroids key, counts key): uploaded as sums and counts
    # (centroids key, head keys): entries whose row j scores global cluster j (re-initialised by the server)
    cluster_heads: tuple[tuple[str, tuple[str, ...]], ...] = ()
    assignments = None  # clustering methods: the latest cluster of each of the client's images

    def sync_plan(self, sync: str = "online") -> SyncPlan:  # pragma: no cover - abstract
        raise NotImplementedError

    def loss(self, views: list[torch.Tensor], generator: torch.Generator) -> torch.Tensor:  # pragma: no cover
        """The loss of one batch, given its augmented views (in the order of `self.views`)."""
        raise NotImplementedError

    def start_epoch(self, epoch: int, images: torch.Tensor, generator: torch.Generator) -> None:
        """Called before each local epoch with all the client's images (uint8 NHWC, on the device)
        and the round's random stream: clustering methods compute their pseudo-labels here."""

    def before_upload(self) -> None:
        """Called after the round's training, before the upload is read (global clusters: their
        per-centroid sums and counts go into the uploaded entries)."""

    def after_step(self, progress: float) -> None:
        """Called after every optimizer step; progress in [0, 1] over the client's whole run."""

    def init_local_parts(self, received: set[str]) -> None:
        """First participation: initialise local parts from what the server sent."""

    def trainable_parameters(self):
        return [p for p in self.parameters() if p.requires_grad]

    def parameter_groups(self, predictor_lr_mult: float = 1.0) -> list[dict]:
        """The optimizer's parameter groups: one, or with `predictor_lr_mult` != 1 the predictor's
        parameters apart, their learning rate that multiple of the others' (`lr_mult` in the group;
        SimSiam's and DirectPred's observation that a faster predictor helps the BYOL family).
        A method without a predictor has one group whatever the multiple."""
        trainable = [(n, p) for n, p in self.named_parameters() if p.requires_grad]
        predictor = [p for n, p in trainable if n.startswith("predictor.")]
        if predictor_lr_mult == 1.0 or not predictor:
            return [{"params": [p for _, p in trainable], "lr_mult": 1.0}]
        return [{"params": [p for n, p in trainable if not n.startswith("predictor.")], "lr_mult": 1.0},
                {"params": predictor, "lr_mult": float(predictor_lr_mult)}]
