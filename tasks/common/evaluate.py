"""Representation evaluation on frozen backbones (docs/algorithms.md#evaluating-representations): weighted kNN and linear probe."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from protocol.checks import AnyOf, Bool, Choice, Float, Int, ListOf
from tasks.common.augment import to_float
from tasks.common.precision import Compute
from tasks.common.sections import Evaluation

# eval.* (conf/config.yaml): the evaluation protocol of docs/algorithms.md#evaluating-representations
CONFIG = {
    "eval.at_start": Bool(), "eval.knn_k": AnyOf(specs=(Int(min=1), ListOf(item=Int(min=1), min_length=1, description="a list of them"))),
    "eval.knn_temperature": Float(above=0),
    "eval.knn_features": Choice(options=("backbone", "projector")), "eval.bank_size": Int(min=1, null=True),
    "eval.test_size": Int(min=1, null=True), "eval.linear": Bool(), "eval.linear_epochs": Int(min=1),
    "eval.linear_lr": Float(above=0), "eval.linear_batch_size": Int(min=1), "eval.batch_size": Int(min=1),
    "eval.semi": Bool(), "eval.semi_fractions": ListOf(item=Float(above=0, max=1)), "eval.semi_epochs": Int(min=1),
    "eval.semi_lr": Float(above=0), "eval.semi_head_lr": Float(above=0), "eval.semi_batch_size": Int(min=1),
    "eval.semi_bn": Choice(options=("train", "frozen")), "eval.bn": Choice(options=("aggregated", "reestimated", "both")),
}


@torch.no_grad()
def extract_features(net: nn.Module, images: np.ndarray, device: torch.device, batch_size: int = 512,
                     compute: Compute | None = None) -> torch.Tensor:
    """Features of uint8 NHWC images, no augmentation, network in eval mode; returned on CPU in
    fp32. With `compute` the forward runs in its precision and memory format (fp32 without)."""
    compute = compute or Compute(device)
    net.to(compute.device).eval()
    if compute.channels_last and isinstance(net, nn.Module):
        net.to(memory_format=torch.channels_last)
    out = []
    for i in range(0, len(images), batch_size):
        x = compute.images(to_float(torch.from_numpy(np.ascontiguousarray(images[i : i + batch_size])), compute.device))
        with compute.autocast():
            out.append(net(x).float().cpu())
    return torch.cat(out)


@torch.no_grad()
def knn_predict_ks(bank: torch.Tensor, bank_labels: torch.Tensor, queries: torch.Tensor, num_classes: int,
                   ks=(200,), temperature: float = 0.1, chunk: int = 1024) -> dict[int, torch.Tensor]:
    """Weighted kNN on L2-normalised features: votes exp(cos / T) from the k nearest (docs/algorithms.md#knn-monitor),
    for every k of `ks` from one search (the neighbours of the largest k, nearest first)."""
    ks = list(dict.fromkeys(int(k) for k in ks))
    bank = F.normalize(bank, dim=1)
    queries = F.normalize(queries, dim=1)
    most = min(max(ks), len(bank))
    preds: dict[int, list] = {k: [] for k in ks}
    for i in range(0, len(queries), chunk):
        sim = queries[i : i + chunk] @ bank.T
        top_sim, top_idx = sim.topk(most, dim=1)  # sorted, nearest first
        weights = (top_sim / temperature).exp()
        for k in ks:
            k_used = min(k, most)
            votes = torch.zeros(len(sim), num_classes)
            votes.scatter_add_(1, bank_labels[top_idx[:, :k_used]], weights[:, :k_used])
            preds[k].append(votes.argmax(1))
    return {k: torch.cat(p) for k, p in preds.items()}


def knn_predict(bank: torch.Tensor, bank_labels: torch.Tensor, queries: torch.Tensor, num_classes: int,
                k: int = 200, temperature: float = 0.1, chunk: int = 1024) -> torch.Tensor:
    """Weighted kNN predictions with one k (knn_predict_ks)."""
    return knn_predict_ks(bank, bank_labels, queries, num_classes, (k,), temperature, chunk)[k]


def knn_accuracy(bank, bank_labels, queries, query_labels, num_classes, k=200, temperature=0.1) -> float:
    pred = knn_predict(bank, torch.as_tensor(bank_labels), queries, num_classes, k, temperature)
    return float((pred == torch.as_tensor(query_labels)).float().mean())


def knn_key(k: int, ks: tuple[int, ...]) -> str:
    """The result key of kNN with `k`: knn_accuracy for eval.knn_k's first, knn_accuracy_k<k> for the others."""
    return "knn_accuracy" if k == ks[0] else f"knn_accuracy_k{k}"


def features_on(net: nn.Module, sets: dict, names: tuple[str, ...], device: torch.device, batch_size: int,
                compute: Compute | None = None) -> list:
    """`extract_features` of `net` on each named image array of an evaluation-set dict."""
    return [extract_features(net, sets[name], device, batch_size, compute) for name in names]


def knn_scores(bank: torch.Tensor, queries: torch.Tensor, query_labels, sets: dict, ks: tuple[int, ...],
               temperature: float) -> dict[str, float]:
    """kNN accuracy against the set's memory bank for every k of `ks` (eval.knn_k), with `temperature`:
    {"knn_accuracy": first k's, "knn_accuracy_k<k>": each other k's}."""
    preds = knn_predict_ks(bank, torch.as_tensor(sets["y_bank"]), queries, sets["num_classes"], list(ks), temperature)
    truth = torch.as_tensor(query_labels)
    return {knn_key(k, ks): float((preds[k] == truth).float().mean()) for k in ks}


def knn_score(bank: torch.Tensor, queries: torch.Tensor, query_labels, sets: dict, ev: Evaluation) -> float:
    """kNN accuracy against the set's memory bank with the evaluation's (first) k and temperature."""
    return knn_scores(bank, queries, query_labels, sets, ev.knn_k[:1], ev.knn_temperature)["knn_accuracy"]


def probe_score(bank: torch.Tensor, test: torch.Tensor, sets: dict, ev: Evaluation, epochs: int | None = None) -> float:
    """Linear probe trained on the bank features, tested on the test features (the evaluation's
    epochs, learning rate, batch size and seed)."""
    return linear_probe(bank, sets["y_bank"], test, sets["y_test"], sets["num_classes"],
                        epochs=ev.linear_epochs if epochs is None else int(epochs), lr=ev.linear_lr,
                        batch_size=ev.linear_batch_size, seed=ev.seed)


def linear_probe(train_f: torch.Tensor, train_y, test_f: torch.Tensor, test_y, num_classes: int,
                 epochs: int = 200, lr: float = 3e-3, batch_size: int = 2048, seed: int = 0) -> float:
    """A linear layer on cached frozen features, Adam, `epochs` passes; test top-1 (docs/algorithms.md#linear-probe).

    Features are standardised with the training set's per-dimension mean and std first. The
    classifier stays linear in the features (the affine map folds into the layer), but Adam's
    fixed step no longer depends on the feature scale, which otherwise differs by orders of
    magnitude between a random and a trained encoder. Deliberate addition (docs/algorithms.md#linear-probe).
    """
    g = torch.Generator().manual_seed(seed)
    mean, std = train_f.mean(0, keepdim=True), train_f.std(0, keepdim=True).clamp_min(1e-6)
    train_f, test_f = (train_f - mean) / std, (test_f - mean) / std
    train_y, test_y = torch.as_tensor(train_y), torch.as_tensor(test_y)
    layer = nn.Linear(train_f.shape[1], num_classes)
    with torch.no_grad():
        bound = 1 / train_f.shape[1] ** 0.5
        layer.weight.uniform_(-bound, bound, generator=g)
        layer.bias.uniform_(-bound, bound, generator=g)
    opt = torch.optim.Adam(layer.parameters(), lr=lr)
    for _ in range(epochs):
        order = torch.randperm(len(train_f), generator=g)
        for i in range(0, len(order), batch_size):
            idx = order[i : i + batch_size]
            loss = F.cross_entropy(layer(train_f[idx]), train_y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    with torch.no_grad():
        return float((layer(test_f).argmax(1) == test_y).float().mean())


@torch.no_grad()
def recalibrate_batchnorm(net: nn.Module, images: np.ndarray, device: torch.device, batch_size: int = 512) -> None:
    """Re-estimate BatchNorm running statistics on `images` (cumulative average, no training).

    Used for the global encoder under `strategy.bn=local`, whose BatchNorm statistics never
    left the clients, so the server has none of its own; and under `eval.bn=reestimated|both`,
    where the averaged statistics of non-IID clients misplace the features (issue 14).
    """
    bns = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    net.to(device).train()
    for i in range(0, len(images), batch_size):
        net(to_float(torch.from_numpy(np.ascontiguousarray(images[i : i + batch_size])), device))
    net.eval()


def class_balanced_fraction(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """A seeded, class-balanced share of the labelled set: round(fraction * n_c) per class, at
    least one (docs/algorithms.md#semi-supervised-fine-tuning; the reference code's "first N images" is what this replaces)."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    chosen = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        chosen.append(rng.choice(idx, size=max(1, int(round(fraction * len(idx)))), replace=False))
    return np.sort(np.concatenate(chosen))


def finetune_accuracy(backbone: nn.Module, x_train: np.ndarray, y_train, x_test: np.ndarray, y_test,
                      num_classes: int, *, epochs: int, lr: float, head_lr: float, batch_size: int,
                      bn: str, device: torch.device, seed: int) -> float:
    """Fine-tune a copy of `backbone` plus a linear head on labelled images; test top-1.

    bn="train" (default) lets BatchNorm normalise with batch statistics and update its running
    statistics while fine-tuning; the test set is always evaluated in eval mode with those
    statistics (the reference code also *tests* in train mode, which this avoids).
    bn="frozen" keeps BatchNorm in eval mode with the pre-trained statistics (affine weights
    still train). Measured on a CPU-preset encoder, 10% labels, 5 epochs: train 11.6%, frozen
    1.0% at lr 0.01 (training diverges without batch normalisation) and 4.9% at lr 0.001.
    Light augmentation: random resized crop (scale 0.5-1) and flip.
    """
    import copy

    from tasks.common.augment import resized_crop_flip

    if bn not in ("frozen", "train"):
        raise ValueError(f"semi-supervised bn must be 'frozen' or 'train', got {bn!r}")
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = copy.deepcopy(backbone).to(device)
    with torch.no_grad():
        dim = net(to_float(torch.from_numpy(np.ascontiguousarray(x_train[:2])), device)).shape[1]
    head = nn.Linear(dim, num_classes).to(device)
    opt = torch.optim.SGD([{"params": net.parameters(), "lr": lr}, {"params": head.parameters(), "lr": head_lr}],
                          momentum=0.9, nesterov=True, weight_decay=5e-4)
    y = torch.as_tensor(np.asarray(y_train))
    data = torch.from_numpy(np.ascontiguousarray(x_train))
    bs = min(batch_size, len(data))
    for _ in range(epochs):
        net.train()
        if bn == "frozen":
            for m in net.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        order = torch.randperm(len(data), generator=g)
        for i in range(0, len(order) - bs + 1, bs):
            idx = order[i : i + bs]
            x = resized_crop_flip(to_float(data[idx], device), 32, g, scale=(0.5, 1.0))
            loss = F.cross_entropy(head(net(x)), y[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    net.eval()
    feats = extract_features(net, x_test, device)
    with torch.no_grad():
        pred = head.cpu()(feats).argmax(1)
    return float((pred == torch.as_tensor(np.asarray(y_test))).float().mean())
