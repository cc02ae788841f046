"""Re-identification retrieval metrics: CMC rank-k and mAP (docs/algorithms.md#retrieval-evaluation, Market-1501 protocol).

For each query the gallery is ranked by cosine similarity of L2-normalised embeddings. Before
scoring, the gallery loses
- junk images (identity JUNK_ID, Market-1501's "0000"), which never count either way, and
- when cameras are known (>= 0), images of the query's identity taken by the query's camera
  (finding the same person in the same camera is too easy).
Distractors (identity -1) stay in the gallery as negatives. A query with no remaining true
match is not scored. AP is the mean of the precision at each true match (torchreid / the
official Market-1501 code); CMC rank-k is 1 when a true match is within the first k.

Note: some re-ID code bases (e.g. layumi's person-reid baseline) treat -1 as junk instead;
we follow the dataset's own definition (docs/algorithms.md#retrieval-evaluation: -1 distractor, 0000 junk).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

JUNK_ID = 0
UNKNOWN_CAMERA = -1


def retrieval_metrics(query: torch.Tensor, q_ids, q_cams, gallery: torch.Tensor, g_ids, g_cams,
                      ranks=(1, 5, 10), junk_id: int | None = JUNK_ID) -> dict:
    """CMC at `ranks` and mAP of `query` embeddings against `gallery` embeddings.

    q_ids/g_ids: identities (junk_id = ignored, -1 = distractor); q_cams/g_cams: camera ids,
    -1 when unknown (then no same-camera exclusion). Returns rank1/rank5/... , mAP,
    num_queries (scored) and num_skipped (no true match left).
    """
    q_ids, q_cams = np.asarray(q_ids), np.asarray(q_cams)
    g_ids, g_cams = np.asarray(g_ids), np.asarray(g_cams)
    if len(query) != len(q_ids) or len(gallery) != len(g_ids):
        raise ValueError(f"{len(query)} query / {len(gallery)} gallery embeddings for {len(q_ids)} / {len(g_ids)} ids")
    sim = (F.normalize(query.float(), dim=1) @ F.normalize(gallery.float(), dim=1).T).numpy()
    cmc = np.zeros(max(ranks))
    aps, skipped = [], 0
    for i in range(len(q_ids)):
        order = np.argsort(-sim[i], kind="stable")
        ids, cams = g_ids[order], g_cams[order]
        keep = np.ones(len(order), dtype=bool)
        if junk_id is not None:
            keep &= ids != junk_id
        if q_cams[i] != UNKNOWN_CAMERA:
            keep &= ~((ids == q_ids[i]) & (cams == q_cams[i]))
        hits = ids[keep] == q_ids[i]
        if not hits.any():
            skipped += 1
            continue
        positions = np.flatnonzero(hits)  # 0-based ranks of the true matches
        precision = np.arange(1, len(positions) + 1) / (positions + 1)
        aps.append(float(precision.mean()))
        cmc[positions[0]:] += 1
    scored = len(aps)
    out = {f"rank{k}": float(cmc[k - 1] / scored) if scored else float("nan") for k in ranks}
    out.update(mAP=float(np.mean(aps)) if scored else float("nan"), num_queries=scored, num_skipped=skipped)
    return out
