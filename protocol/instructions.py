"""What a client is told each round: the whole protocol between a strategy and a client.

A strategy writes one `Instructions` per selected client into that client's fit config (as
Flower's FedProx sends `proximal-mu`); the client reads nothing else to decide what to do with
the weights it receives (convention 2, docs/architecture.md#conventions-and-where-they-come-from). Values are Flower config scalars (int, float, str,
bool); a key that is absent takes its default.

- layout, layout_options: the fingerprint of the upload layout and the settings that shape it
  (SSL: sync, bn); the client builds its model with these options and refuses a mismatch.
- replace: load the received weights (a client's first participation always does).
- mix: "" (replace) or "ema": mix the received model into the local one with FedEMA's rule,
  mix_tau (its autoscaler) and mix_lambda (fixed lambda; absent = autoscaler) (docs/algorithms.md#fedema).
- adopt_global_predictor: take the optional parts (FedU's predictor) from the server (docs/algorithms.md#the-divergence-aware-predictor-update-dapu).
- keep_optional: keep a local copy of the optional parts (FedU under DAPU or predictor=local).
- keep_everything: keep the whole local model between rounds (standalone, FedEMA).
  Parts that never travel (BYOL's target, MoCo's key encoder and queue, a re-ID classifier) are
  always kept.
- cdw: also report FedPav's cosine-distance weight (docs/algorithms.md#cosine-distance-weight-reallocation).
- transfer_dtype: the dtype float32 weights travel in, both ways (protocol/transfer.py): the
  client decodes what it receives and encodes its upload with it.
- resume_round, checkpoint_every, last_checkpoint: where a restarted client finds its saved state
  and which of its state files it may prune.
- run_token, session: which run this is (kept across a resume) and which start of its server (new
  at every start and resume): a client whose saved state belongs to another run starts anew; one
  whose state was written in an earlier session drops its files after `resume_round` (the
  interrupted part); within one session a restarted client continues from its newest file.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

LAYOUT_OPTION_PREFIX = "layout_"


@dataclass(frozen=True)
class Instructions:
    server_round: int
    layout: str = ""
    layout_options: dict = field(default_factory=dict)
    replace: bool = True
    mix: str = ""
    mix_tau: float = 0.0
    mix_lambda: float | None = None
    adopt_global_predictor: bool = True
    keep_optional: bool = False
    keep_everything: bool = False
    cdw: bool = False
    transfer_dtype: str = "float32"
    resume_round: int = 0
    checkpoint_every: int = 0
    last_checkpoint: int = 0
    run_token: str = ""
    session: str = ""

    def to_config(self) -> dict:
        """The Flower fit config: scalars only; None values are left out."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "layout_options":
                out.update({LAYOUT_OPTION_PREFIX + k: v for k, v in value.items()})
            elif value is not None:
                out[f.name] = value
        return out

    @classmethod
    def from_config(cls, config: dict) -> Instructions:
        """Read a fit config written by `to_config` (absent keys take their defaults)."""
        names = {f.name for f in fields(cls)} - {"layout_options"}
        kwargs = {k: config[k] for k in names if k in config}
        options = {k[len(LAYOUT_OPTION_PREFIX):]: v for k, v in config.items() if k.startswith(LAYOUT_OPTION_PREFIX)}
        return cls(layout_options=options, **kwargs)
