"""Files that cannot run code when loaded, configs that cannot name code, annotations that cannot
leave their dataset, private keys that are never readable by others (issue "One bad site cannot
stop or steer a federation"). Every test here takes seconds: no Ray, no training."""

import json
import os
import random

import numpy as np
import pytest
import torch
from PIL import Image

from app.config import compose, to_plain
from app.resume import STATE_FILE, load_state, run_config, save_state, set_rng_states
from clients import state_store
from protocol.checks import ConfigError
from tasks.common.checkpoint import CheckpointError, UntrustedFileError, load_checkpoint, save_checkpoint
from tasks.common.data import DataError
from tasks.detection.annotations import read_coco, read_voc, write_voc
from tasks.sdr.net import SDRNet, load_backbone, save_backbone

REFUSED = "written by an older version of this project or is not a trusted file"


class RunsCode:
    """Unpickling this runs `touch <marker>`: what a planted file would do with weights_only=False."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def planted(path, marker, payload: dict):
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({**payload, "trap": RunsCode(marker)}, path)
    return path


def loads_with_weights_only(path):
    return torch.load(path, map_location="cpu", weights_only=True)


# ------------------------------------------------------------------- planted files are refused
def test_a_planted_checkpoint_is_refused_by_mode_evaluate_without_running_it(smoke_overrides, tmp_path):
    from app.commands import evaluate

    marker = tmp_path / "pwned"
    ckpt = planted(tmp_path / "evil.pt", marker, {"format": "fedssl-checkpoint-v1", "models": {}})
    command = [o for o in smoke_overrides if not o.startswith("output_dir=")] + [f"output_dir={tmp_path / 'out'}"]
    with pytest.raises(UntrustedFileError, match=f"checkpoint {ckpt} was {REFUSED}.*posix.system"):
        evaluate(command + ["mode=evaluate", f"checkpoint={ckpt}"])
    assert not marker.exists() and not (tmp_path / "out").exists()
    with pytest.raises(CheckpointError, match=REFUSED):  # the loader every checkpoint reader uses
        load_checkpoint(ckpt)
    assert not marker.exists()


def test_a_planted_federation_state_is_refused_by_resume_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    path = planted(tmp_path / STATE_FILE, marker, {"format": "fedssl-state-v2", "round": 1})
    with pytest.raises(CheckpointError, match=f"resume: the federation state {path} was {REFUSED}"):
        load_state(tmp_path)
    with pytest.raises(CheckpointError, match=REFUSED):
        run_config([f"resume={tmp_path}"], fresh=None)
    assert not marker.exists()


def test_a_state_of_the_older_format_is_refused_not_unpickled(tmp_path):
    """fedssl-state-v1 pickled NumPy objects (arrays, NumPy's random state)."""
    path = tmp_path / STATE_FILE
    path.parent.mkdir()
    torch.save({"format": "fedssl-state-v1", "round": 2, "arrays": [np.zeros(3)],
                "rng": {"numpy": np.random.get_state()}}, path)
    with pytest.raises(CheckpointError, match=f"{path} was {REFUSED}.*numpy"):
        load_state(tmp_path)


def test_a_planted_backbone_and_client_state_are_refused_without_running_them(tmp_path):
    marker = tmp_path / "pwned"
    backbone = planted(tmp_path / "backbone.pt", marker, {"format": "fedssl-backbone-v1"})
    with pytest.raises(CheckpointError, match=f"backbone {backbone} was {REFUSED}"):
        load_backbone(backbone)
    client = planted(tmp_path / "3" / "round-2.pt", marker, {"arrays": {}, "configs": {}})
    with pytest.raises(state_store.ClientStateError, match=f"client state {client} was {REFUSED}"):
        state_store.load(tmp_path / "3", 2)
    assert not marker.exists()


# ------------------------------------------------------- what the project writes loads safely
def test_a_checkpoint_loads_with_weights_only_and_round_trips(tmp_path):
    cfg = {"strategy": {"name": "fedu"}, "lr": 0.1, "seed": 3, "ids": [1, 2], "none": None}
    arrays = [np.arange(6, dtype=np.float32).reshape(2, 3), np.array([1, 2], dtype=np.int64)]
    path = save_checkpoint(tmp_path / "c.pt", cfg, ["a", "b"], {"global": arrays, "0": arrays}, 4)
    raw = loads_with_weights_only(path)
    assert raw["round"] == 4 and raw["config"] == cfg
    payload = load_checkpoint(path)
    assert payload["keys"] == ["a", "b"] and payload["config"] == cfg
    for name in ("global", "0"):
        got = [t.numpy() for t in payload["models"][name].values()]
        assert all(np.array_equal(a, b) and a.dtype == b.dtype for a, b in zip(got, arrays))


def test_the_federation_state_loads_with_weights_only_and_round_trips(tmp_path):
    cfg = to_plain(compose(["experiment=smoke", "strategy=fedu"]))
    cfg["command_line"] = ["experiment=smoke", "strategy=fedu"]
    arrays = [np.random.default_rng(0).normal(size=(3, 2)).astype(np.float32), np.array(7, dtype=np.int64)]
    strategy_state = {"participated": [0, 2], "run_token": "abc", "divergence": {0: np.float64(0.25), 2: 0.5},
                      "adopt_global": {0: np.bool_(True)}, "latest": {1: [np.ones(2, np.float16)]},
                      "names": np.array(["x", "yz"])}
    summary = {"rounds": [{"round": 1, "loss": np.float32(1.5)}], "wandb": {"run_id": "w1"}}
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    path = save_state(tmp_path, 2, cfg, "fingerprint", arrays, strategy_state, summary)
    expected = (random.random(), np.random.rand(3), torch.rand(2))
    raw = loads_with_weights_only(path)
    assert raw["format"] == "fedssl-state-v2" and raw["round"] == 2
    state = load_state(tmp_path)
    assert state["config"] == cfg and state["layout"] == "fingerprint" and state["wandb_run_id"] == "w1"
    assert all(np.array_equal(a, b) and a.dtype == b.dtype for a, b in zip(state["arrays"], arrays))
    s = state["strategy_state"]
    assert s["participated"] == [0, 2] and s["divergence"] == {0: 0.25, 2: 0.5} and s["adopt_global"] == {0: True}
    assert s["latest"][1][0].dtype == np.float16 and np.array_equal(s["latest"][1][0], np.ones(2))
    assert s["names"].tolist() == ["x", "yz"]
    assert state["summary"]["rounds"][0]["loss"] == 1.5
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    set_rng_states(state["rng"])  # the three streams continue where they were saved
    assert random.random() == expected[0] and np.array_equal(np.random.rand(3), expected[1])
    assert torch.equal(torch.rand(2), expected[2])


def test_a_value_that_would_need_pickling_is_refused_when_saved(tmp_path):
    with pytest.raises(TypeError, match=r"strategy_state.*\['gen'\].*numpy.random.*Generator"):
        save_state(tmp_path, 1, {}, "f", [], {"gen": np.random.default_rng(0)}, {})
    assert not (tmp_path / STATE_FILE).exists()


def test_the_sdr_backbone_and_the_client_state_load_with_weights_only_and_round_trip(tmp_path):
    torch.manual_seed(0)
    net = SDRNet(stem=4, shared=(4, 6), group=(2, 3), groups=1, strides=(1, 2))
    path = save_backbone(tmp_path / "b.pt", net, {"path": np.int64(3), "groups": [0, 0], "source": "c.pt"})
    raw = loads_with_weights_only(path)
    assert raw["path"] == 3 and raw["sizes"]["shared"] == [4, 6]
    loaded = load_backbone(path)
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), net.state_dict().values()))
    kept = {"target.w": torch.randn(3, 2), "queue": torch.arange(4)}
    info = {"rounds_trained": 2, "divergence": np.float64(0.1), "clusters": np.array([1, 0, 1])}
    saved = state_store.save(tmp_path / "5", 2, kept, info, keep_from=0)
    assert loads_with_weights_only(saved)["configs"][state_store.INFO]["rounds_trained"] == 2
    got_kept, got_info = state_store.load(tmp_path / "5", 2)
    assert all(torch.equal(got_kept[k], kept[k]) for k in kept)
    assert got_info["divergence"] == 0.1 and np.array_equal(got_info["clusters"], [1, 0, 1])


# ---------------------------------------------------------------- strategy._target_ allow-list
@pytest.mark.parametrize("target", ["os.system", "builtins.eval", "subprocess.Popen", "strategies.FedU"])
def test_a_strategy_target_outside_the_projects_strategies_is_refused(target):
    from app.federation import strategy_class, summary_schema
    from app.schema import validate

    cfg = to_plain(compose(["experiment=smoke", f"strategy._target_={target}"]))
    allowed = r"choose one of \[.*'strategies.base.FederatedAveraging'.*'strategies.fedu.FedU'"
    for check in (validate, strategy_class, summary_schema):
        with pytest.raises(ConfigError, match=f"strategy._target_='{target}' is not valid; {allowed}"):
            check(cfg)


def test_the_allowed_targets_are_the_strategies_packages_classes_and_cover_conf():
    from omegaconf import OmegaConf

    import strategies
    from app.registry import STRATEGY_TARGETS
    from tests.conftest import ROOT

    exported = {f"{c.__module__}.{c.__qualname__}" for c in map(lambda n: getattr(strategies, n), strategies.__all__)}
    assert set(STRATEGY_TARGETS) == exported
    for path in sorted((ROOT / "conf" / "strategy").glob("*.yaml")):
        assert OmegaConf.load(path)["_target_"] in STRATEGY_TARGETS, path.name


def test_a_nested_target_in_the_strategys_arguments_is_refused_before_anything_is_called(tmp_path):
    from app.federation import strategy_class

    marker = tmp_path / "called"
    cfg = to_plain(compose(["experiment=smoke", "+strategy.extra._target_=pathlib.Path.touch",
                            f"+strategy.extra.self={marker}"]))
    with pytest.raises(ConfigError, match=r"strategy.extra._target_: a strategy's arguments are plain values"):
        strategy_class(cfg)
    assert not marker.exists()


def test_resume_replays_the_saved_command_line_through_the_same_check(tmp_path):
    from app.federation import prepare

    command = ["experiment=smoke", "strategy=fedu", "strategy._target_=os.system"]
    cfg = dict(to_plain(compose(command)), command_line=command)
    save_state(tmp_path, 1, cfg, "f", [np.zeros(2)], {"participated": []}, {"rounds": []})
    resumed, out_dir, state = run_config([f"resume={tmp_path}", "num_rounds=3"], fresh=None)
    assert resumed["strategy"]["_target_"] == "os.system"  # replayed as saved ...
    with pytest.raises(ConfigError, match="strategy._target_='os.system' is not valid; choose one of"):
        prepare(resumed, out_dir, state)  # ... and refused before anything is built


# ------------------------------------------------------------- annotation paths stay inside
def _voc_site(root):
    image = np.zeros((8, 10, 3), np.uint8)
    write_voc(root, "trainval", [image], [np.array([[1, 1, 5, 5]], np.float32)], [np.array([1])], ("dog",))
    return root / "Annotations" / "000000.xml"


@pytest.mark.parametrize("name", ["../../x.png", "ABSOLUTE", "link/x.png", "../JPEGImages/../../x.png"])
def test_a_voc_filename_outside_the_dataset_root_is_refused(tmp_path, name):
    outside = tmp_path / "outside"
    outside.mkdir()
    Image.new("RGB", (10, 8)).save(outside / "x.png")
    root = tmp_path / "a" / "site"
    xml = _voc_site(root)
    (root / "JPEGImages" / "link").symlink_to(outside)  # a symlink that leads out of the root
    Image.new("RGB", (10, 8)).save(tmp_path / "a" / "x.png")
    name = str(outside / "x.png") if name == "ABSOLUTE" else name
    xml.write_text(xml.read_text().replace("000000.png", name))
    with pytest.raises(DataError, match=f"{xml}: image name '{name}' .*(outside|only name files inside) the dataset "
                                        f"root {root.resolve()}"):
        read_voc(root, classes=("dog",))


def test_a_voc_listing_id_outside_the_root_and_a_name_inside_it(tmp_path):
    root = tmp_path / "site"
    _voc_site(root)
    samples = read_voc(root, classes=("dog",))  # a name inside the root is read as before
    assert samples[0].image == root / "JPEGImages" / "000000.png"
    listing = root / "ImageSets" / "Main" / "trainval.txt"
    listing.write_text("../../../../etc/passwd\n")
    with pytest.raises(DataError, match=f"{listing}: annotation name .*outside the dataset root"):
        read_voc(root, classes=("dog",))


@pytest.mark.parametrize("name", ["../x.png", "ABSOLUTE", "sub/../../x.png"])
def test_a_coco_file_name_outside_the_root_is_refused(tmp_path, name):
    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    (root / "images").mkdir()
    Image.new("RGB", (10, 8)).save(tmp_path / "x.png")
    Image.new("RGB", (10, 8)).save(root / "images" / "ok.png")
    name = str(tmp_path / "x.png") if name == "ABSOLUTE" else name
    doc = {"categories": [{"id": 1, "name": "dog"}],
           "images": [{"id": 1, "file_name": "ok.png", "height": 8, "width": 10},
                      {"id": 2, "file_name": name, "height": 8, "width": 10}],
           "annotations": [{"id": 1, "image_id": 2, "category_id": 1, "bbox": [1, 1, 3, 3]}]}
    path = root / "annotations" / "instances_train.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(DataError, match=f"{path}: image 2 .*image name '{name}' .*the dataset root {root.resolve()}"):
        read_coco(root)
    doc["images"] = doc["images"][:1]
    doc["annotations"] = []
    path.write_text(json.dumps(doc))
    assert read_coco(root)[0][0].image == root / "images" / "ok.png"


# --------------------------------------------------------------------------- private keys
def test_private_keys_are_0600_from_their_first_byte_and_the_ca_key_is_kept_apart(tmp_path, monkeypatch, capsys):
    from ops import certificates, loopback

    writes = []  # (file, its mode when key bytes are written)
    real_write, real_open, opened = os.write, os.open, {}

    def spy_open(path, flags, mode=0o777, *a, **kw):
        fd = real_open(path, flags, mode, *a, **kw)
        opened[fd] = str(path)
        writes.append((str(path), os.fstat(fd).st_mode & 0o777, "open"))
        return fd

    def spy_write(fd, data):
        if fd in opened:
            writes.append((opened[fd], os.fstat(fd).st_mode & 0o777, "write"))
        return real_write(fd, data)

    monkeypatch.setattr(certificates.os, "open", spy_open)
    monkeypatch.setattr(certificates.os, "write", spy_write)
    old = os.umask(0)  # the mode must not rely on a umask
    try:
        folder = tmp_path / "certs"
        folder.mkdir()
        (folder / "server.key").write_bytes(b"an older key")  # an existing file is restricted, not reused as is
        os.chmod(folder / "server.key", 0o644)
        certificates.main([str(folder), "--hosts", "127.0.0.1", "--nodes", "1"])
    finally:
        os.umask(old)
    paths = {"ca_key": folder / "ca-private" / "ca.key", "server_key": folder / "server.key",
             "node": folder / "node-0"}
    for path in paths.values():
        assert path.stat().st_mode & 0o777 == 0o600, path
        assert any(w[0] == str(path) and w[2] == "write" for w in writes), path
    assert {mode for _, mode, call in writes if call == "write"} == {0o600}, writes  # every byte of every key
    opened_as = {path: mode for path, mode, call in writes if call == "open"}
    assert opened_as[str(paths["ca_key"])] == opened_as[str(paths["node"])] == 0o600  # created 0600
    assert opened_as[str(paths["server_key"])] == 0o644  # the older file, restricted before it is written
    assert (folder / "ca-private").stat().st_mode & 0o777 == 0o700
    assert b"older" not in paths["server_key"].read_bytes()
    # the SuperLink's folder holds no CA key; what it is given at run time lies outside ca-private/
    assert sorted(p.name for p in folder.iterdir() if p.is_file()) == ["ca.crt", "node-0", "node-0.pub", "server.key",
                                                                       "server.pem"]
    out = capsys.readouterr().out
    assert "does not need the CA key" in out and str(paths["ca_key"]) in out
    # the SuperLink a loopback federation starts is given nothing under ca-private/
    fed = loopback.LocalFederation(tmp_path / "lb")
    started = {}
    monkeypatch.setattr(fed, "_spawn", lambda name, cmd: started.setdefault(name, cmd))
    monkeypatch.setattr(fed, "_wait_for_port", lambda port, name: None)
    fed.start_superlink()
    given = [arg for arg in started["superlink"] if arg.startswith(str(fed.workdir / "certs"))]
    assert len(given) == 3 and not any("ca-private" in arg or arg.endswith("ca.key") for arg in given)
    assert fed.tls["ca_key"].is_file() and fed.tls["ca_key"].parent.name == "ca-private"
