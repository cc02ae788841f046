"""The app builders: simulation resources and the deployment components read the same config."""

import os

import pytest
from flwr.app import Context, RecordDict

from app import deployment
from app.federation import client_resources, plan_cores
from strategies import FedU, Standalone


def test_auto_resources_follow_the_cores_plan(make_cfg):
    cores = os.cpu_count()
    res = client_resources(make_cfg("num_clients=5"))
    assert res == {"num_cpus": plan_cores(5, cores)[1], "num_gpus": 0.0}
    assert client_resources(make_cfg("num_clients=1"))["num_cpus"] == cores
    assert client_resources(make_cfg("client_resources.num_cpus=3"))["num_cpus"] == 3


def test_deployment_server_app_builds_from_run_config_overrides(data_dir, cache_dir, tmp_path):
    overrides = (f"experiment=smoke strategy=fedu num_clients=3 data_dir={data_dir} cache_dir={cache_dir} "
                 f"output_dir={tmp_path / 'srv'}")
    ctx = Context(run_id=7, node_id=0, node_config={}, state=RecordDict(), run_config={"overrides": overrides})
    federation = deployment.server_federation(ctx)
    comps = federation.server_components()
    assert isinstance(comps.strategy, FedU) and comps.config.num_rounds == 2
    assert not (tmp_path / "srv").exists()  # nothing is written before the run starts ...
    federation.report.start()
    assert (tmp_path / "srv" / "summary.json").is_file()  # ... then summary.json at once
    ctx = Context(run_id=7, node_id=0, node_config={}, state=RecordDict(),
                  run_config={"overrides": overrides.replace("strategy=fedu", "strategy=standalone")
                              .replace("srv", "srv2")})  # a new run: never into the first one's folder
    assert isinstance(deployment.server_federation(ctx).strategy, Standalone)


def test_deployment_client_app_takes_partition_and_data_from_node_config(data_dir, tmp_path):
    overrides = "experiment=smoke num_clients=3"
    node = {"partition-id": 2, "num-partitions": 3, "data-dir": str(data_dir), "state-dir": str(tmp_path / "st")}
    ctx = Context(run_id=7, node_id=5, node_config=node, state=RecordDict(), run_config={"overrides": overrides})
    client = deployment._client_fn(ctx).numpy_client
    assert client.pid == 2 and client.cfg["data_dir"] == str(data_dir)
    assert client.state_dir == tmp_path / "st" / "2"
    # every message builds a client: the config, the task and its section are resolved once per node setting
    again = deployment._client_fn(Context(run_id=7, node_id=5, node_config=dict(node, **{"partition-id": 1}),
                                          state=RecordDict(), run_config={"overrides": overrides})).numpy_client
    assert again.pid == 1 and again.cfg is client.cfg and again.settings is client.settings
    bad = dict(node, **{"num-partitions": 4})
    ctx = Context(run_id=7, node_id=5, node_config=bad, state=RecordDict(), run_config={"overrides": overrides})
    with pytest.raises(ValueError, match="num-partitions=4 but the run has num_clients=3"):
        deployment._client_fn(ctx)


def test_centralised_is_one_client_with_everything_the_federation_holds(make_cfg):
    from app.config import centralise

    cfg = centralise(make_cfg("strategy=centralised", "num_clients=4"))
    assert cfg["num_clients"] == 1 and cfg["partition"] == {"name": "iid"}
    assert cfg["examples_per_client"] == 4 * 64 and cfg["centralised_from_clients"] == 4
    assert centralise(make_cfg("strategy=fedu")) == make_cfg("strategy=fedu")
