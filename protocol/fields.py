"""What a strategy or a task adds to a run's results, declared once where it is computed.

The report (app/summary.py owns summary.json) derives the console line, the W&B keys and the
closing line from these declarations; it never asks which strategy or task is running.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ClientField:
    """A per-client value a strategy records under rounds[].clients.<partition id>.<key>.

    style "range": the console shows min-max over the round's clients with `fmt`;
    style "tally": the console counts each of `values` (W&B logs 1.0 for values[0], 0.0 for values[1]).
    console=False: recorded (and logged to W&B) but not shown on the console line.
    """

    key: str
    label: str
    style: str = "range"
    fmt: str = ".3f"
    values: tuple[str, ...] = ()
    console: bool = True


@dataclass(frozen=True)
class RoundField:
    """A round-level value a strategy records under rounds[].<key> (console and W&B)."""

    key: str
    label: str
    fmt: str = ".4f"


@dataclass(frozen=True)
class Metric:
    """An evaluation result a task reports as a share in [0, 1], shown as a percentage.
    A key ending in "*" stands for every key with that prefix (e.g. "semi_*": semi_1%, semi_10%)."""

    key: str
    label: str

    def present(self, results: dict) -> list[tuple[str, str]]:
        """(key, label) of this metric's entries present in `results`."""
        if not self.key.endswith("*"):
            return [(self.key, self.label)] if self.key in results else []
        prefix = self.key[:-1]
        return [(k, f"{self.label} {k[len(prefix):]}") for k in results if k.startswith(prefix)]


@dataclass(frozen=True)
class Series:
    """A history in summary.json: summary[name] = [{"round": r, <field>: eval[<key>], ...}, ...];
    per_client also keeps each client's values of those fields."""

    name: str
    fields: tuple[tuple[str, str], ...]
    per_client: bool = False
    optional: tuple[tuple[str, str], ...] = ()  # kept when the evaluation reported them
    # (name prefix, key prefix): every reported key that starts with the key prefix, renamed
    # (kNN with several k: knn_accuracy_k20 -> accuracy_k20, and its *_bn_reestimated form)
    prefixed: tuple[tuple[str, str], ...] = ()

    def entry(self, server_round: int, results: dict) -> dict | None:
        if not all(key in results for _, key in self.fields):
            return None
        out = {"round": server_round, **{name: results[key] for name, key in self.fields + self.optional
                                          if key in results}}
        for name, prefix in self.prefixed:
            out.update({name + key[len(prefix):]: value for key, value in results.items()
                        if key.startswith(prefix) and isinstance(value, (int, float))})
        if self.per_client:
            out["per_client"] = {pid: {name: c[key] for name, key in self.fields}
                                 for pid, c in (results.get("per_client") or {}).items()}
        return out


@dataclass(frozen=True)
class TaskMetrics:
    """A task's evaluation results as the report shows them.

    headline: every evaluation's console line and the closing line.
    final: the end-of-run results besides the headline (closing line of mode=evaluate, W&B summary).
    series: the history kept in summary.json.
    """

    headline: tuple[Metric, ...]
    final: tuple[Metric, ...]
    series: Series
