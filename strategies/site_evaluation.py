"""Evaluation by the clients themselves, merged on the server (Layout.evaluated_by == "clients").

Used where the server cannot score the model: parts of it never leave the sites (detection heads
under partial averaging), or the test images do not (a deployment whose SuperNodes serve their
own folders). After an evaluation round's aggregation the server sends the global weights to
every connected client (Flower's evaluate phase); each scores the model it would use on its own
test split and answers with its figures and its number of test images. Merged here: every
client's figures under `per_client`, and for each figure the mean over the clients weighted by
their test images: the whole federation's figure (for COCO mAP an approximation of one COCO
evaluation over all sites' images pooled, which needs every prediction in one place). Integer
figures are counts (e.g. detections) and are summed; COCO's -1 ("no such objects") is left out.
"""

from __future__ import annotations

import math

NOT_FIGURES = {"partition_id", "final", "images"}


def _figure(key: str, value) -> bool:
    return key not in NOT_FIGURES and isinstance(value, (int, float)) and not isinstance(value, bool)


def merge_site_reports(reports: dict[int, tuple[int, dict]], failures: list[dict], final: bool) -> dict:
    """{partition id: (test images, figures)} -> the round's evaluation record."""
    per_client = {str(pid): {**{k: v if isinstance(v, int) else float(v) for k, v in m.items() if _figure(k, v)},
                             "images": int(n)}
                  for pid, (n, m) in sorted(reports.items())}
    keys = sorted({k for c in per_client.values() for k in c if k != "images"})
    merged = {}
    for key in keys:
        if all(isinstance(c.get(key, 0), int) for c in per_client.values()):
            merged[key] = sum(c.get(key, 0) for c in per_client.values())
            continue
        pairs = [(c["images"], c[key]) for c in per_client.values()
                 if key in c and math.isfinite(c[key]) and c[key] >= 0 and c["images"] > 0]  # COCO's -1: none
        total = sum(n for n, _ in pairs)
        merged[key] = sum(n * v for n, v in pairs) / total if total else -1.0
    return {**merged, "per_client": per_client, "final": final, "evaluated_by": "clients",
            "images": int(sum(c["images"] for c in per_client.values())), "evaluation_failures": failures}
