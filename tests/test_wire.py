"""What crosses the wire: declared once per method, derived identically on both sides."""

import pytest

from tasks.ssl.methods.byol import BYOL
from tasks.ssl.model import divergence_layers, kept_keys, upload_keys


@pytest.fixture(scope="module")
def byol():
    return BYOL(arch="resnet10", width=0.125, proj_hidden=8, proj_dim=4, pred_hidden=8)


def parts(keys):
    return {k.split(".", 1)[0] for k in keys}


def test_fedu_uploads_online_encoder_and_predictor_never_the_target(byol):
    keys = upload_keys(byol, byol.sync_plan("online"))
    assert parts(keys) == {"online", "predictor"}
    assert not any(k.startswith("target.") for k in keys)
    assert any(k.startswith("online.projector.") for k in keys)
    assert keys == [k for k in byol.state_dict() if k.split(".", 1)[0] in ("online", "predictor")]


def test_sync_ablation_changes_the_uploaded_encoder(byol):
    assert parts(upload_keys(byol, byol.sync_plan("target"))) == {"target", "predictor"}
    assert parts(upload_keys(byol, byol.sync_plan("both"))) == {"online", "target", "predictor"}
    plan = byol.sync_plan("target")
    assert plan.local == ("online",) and plan.eval_encoder == "target"
    assert all(k.startswith("target.backbone.") for k in
               [upload_keys(byol, plan)[i] for i in divergence_layers(upload_keys(byol, plan), plan)])
    with pytest.raises(ValueError, match="valid"):
        byol.sync_plan("teacher")


def test_bn_local_keeps_batchnorm_out_of_the_upload(byol):
    keys = upload_keys(byol, byol.sync_plan("online"), bn="local")
    assert not any(".bn" in k or "running_mean" in k or "num_batches_tracked" in k for k in keys)
    assert any(k.endswith("conv1.weight") for k in keys)


def test_client_keeps_exactly_what_the_server_does_not_replace(byol):
    plan = byol.sync_plan("online")
    up = upload_keys(byol, plan)
    fedu = kept_keys(byol, plan, up, keep_everything=False, keep_optional=True)
    assert parts(fedu) == {"target", "predictor"}
    fedbyol = kept_keys(byol, plan, up, keep_everything=False, keep_optional=False)
    assert parts(fedbyol) == {"target"}
    standalone = kept_keys(byol, plan, up, keep_everything=True, keep_optional=False)
    assert standalone == list(byol.state_dict())
