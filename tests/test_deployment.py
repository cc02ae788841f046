"""Real deployment on loopback: SuperLink + SuperNodes started by the test, TLS and SuperNode
authentication on, stopped by the test also when it fails (issue 4)."""

import json

import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ops.certificates import make_node_key, make_tls
from ops.local_federation import main
from ops.loopback import REFUSED, FederationError, LocalFederation
from ops.processes import alive, descendants
from tasks.common.data import DataError
from tasks.common.local_data import load_local_images, local_images


def _all_pids(fed: LocalFederation) -> list[int]:
    return [pid for proc in fed.procs.values() for pid in (proc.pid, *descendants(proc.pid))]


def test_secure_loopback_federation_runs_fedu_for_two_rounds(tmp_path, data_dir, cache_dir, capsys):
    own = tmp_path / "site1.npz"  # SuperNode 1 serves its own images (40x40, resized to 32x32)
    np.savez(own, x=np.random.default_rng(0).integers(0, 256, (80, 40, 40, 3), dtype=np.uint8))
    code = main(["--nodes", "2", "--workdir", str(tmp_path / "fed"), "--data-dir", str(data_dir),
                 "--local-data", f"1={own}", "experiment=smoke", "strategy=fedu", f"cache_dir={cache_dir}",
                 "wandb.mode=offline",
                 "--timeout", "900"])
    out = capsys.readouterr().out
    assert code == 0, out + (tmp_path / "fed" / "logs" / "superlink.log").read_text()[-3000:]
    assert "TLS + SuperNode authentication" in out and "finished:completed; summary.json: completed" in out
    s = json.loads((tmp_path / "fed" / "run" / "summary.json").read_text())
    assert s["status"] == "completed" and [r["round"] for r in s["rounds"]] == [1, 2]
    assert all(sorted(r["clients"]) == ["0", "1"] and not r["failures"] for r in s["rounds"])
    assert (tmp_path / "fed" / "run" / "checkpoint_final.pt").is_file()
    # the W&B run is written (and closed) by the ServerApp, as in simulation
    assert s["wandb"]["run_id"] and list((tmp_path / "fed" / "run" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert s["final"]["knn_accuracy"] > 0 and s["final"]["linear_accuracy"] is not None
    # each SuperNode kept its client state on its own disk, under --node-config state-dir
    assert sorted(p.name for p in (tmp_path / "fed" / "client_state").iterdir()) == ["0", "1"]
    config = (tmp_path / "fed" / "flwr-home" / "config.toml").read_text()
    assert "root-certificates" in config and "insecure" not in config


def test_an_unregistered_supernode_is_refused_and_everything_is_stopped(tmp_path, data_dir):
    node = {"partition-id": 0, "num-partitions": 1, "data-dir": str(data_dir)}
    fed = LocalFederation(tmp_path / "fed")
    try:
        fed.start_superlink()
        stranger = fed.start_supernode("stranger", node, private_key=fed.node_key("stranger", register=False))
        assert stranger.wait(timeout=120) != 0  # it gives up instead of retrying forever
        assert REFUSED in fed.log_tail("stranger", 40)
        assert "No SuperNode found with the given public key" in (fed.logs / "superlink.log").read_text()
        fed.start_supernode("member", node)  # registered: comes online
        fed.wait_for_nodes(1, timeout=120, watch=["superlink", "member"])
        with pytest.raises(FederationError, match="stranger was refused by the SuperLink: its public key is not registered"):
            fed.wait_for_nodes(1, timeout=5)  # the script's own check names the refused node
        assert fed.online_nodes() == 1
        pids = _all_pids(fed)
    finally:
        fed.stop()
    assert not [p for p in pids if alive(p)]


def test_a_failed_run_is_reported_as_failed_not_as_success(tmp_path, cache_dir, capsys):
    empty = tmp_path / "no-data"
    empty.mkdir()  # the ServerApp cannot find the dataset: `flwr run` still exits 0, the script must not
    code = main(["--nodes", "1", "--workdir", str(tmp_path / "fed"), "--insecure", f"data_dir={empty}",
                 "experiment=smoke", f"cache_dir={cache_dir}", "--timeout", "300"])
    captured = capsys.readouterr()
    assert code == 1
    assert "finished:failed" in captured.out and "the run did not complete" in captured.err


def test_num_clients_comes_from_the_number_of_supernodes(tmp_path):
    with pytest.raises(SystemExit, match="use --nodes"):
        main(["--workdir", str(tmp_path), "num_clients=3"])
    with pytest.raises(SystemExit, match="num_clients"):
        main(["--workdir", str(tmp_path), "num_clinets=3"])  # a typo is refused before anything starts


def test_development_certificates_chain_to_the_ca_and_name_the_hosts(tmp_path):
    paths = make_tls(tmp_path, ["127.0.0.1", "superlink.example.org"])
    ca = x509.load_pem_x509_certificate(paths["ca_cert"].read_bytes())
    server = x509.load_pem_x509_certificate(paths["server_cert"].read_bytes())
    server.verify_directly_issued_by(ca)
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert san.get_values_for_type(x509.DNSName) == ["superlink.example.org"]
    assert oct(paths["server_key"].stat().st_mode)[-3:] == "600"
    private, public = make_node_key(tmp_path, "node-0")
    pub = serialization.load_ssh_public_key(public.read_bytes())
    assert isinstance(pub, ec.EllipticCurvePublicKey) and pub.curve.name == "secp384r1"
    key = serialization.load_ssh_private_key(private.read_bytes(), password=None)
    assert key.public_key().public_numbers() == pub.public_numbers()


def test_a_node_serves_its_own_images_from_a_file_or_a_folder(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(1)
    np.savez(tmp_path / "gray.npz", x_train=rng.integers(0, 256, (10, 28, 28), dtype=np.uint8))
    x = load_local_images(str(tmp_path / "gray.npz"))
    assert x.shape == (10, 32, 32, 3) and x.dtype == np.uint8
    assert (x[:, :2] == 0).all() and (x[..., 0] == x[..., 2]).all()  # padded, grey repeated to RGB
    folder = tmp_path / "site"
    (folder / "sub").mkdir(parents=True)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (64, 48, 3), dtype=np.uint8)).save(folder / "sub" / f"{i}.png")
    assert load_local_images(str(folder)).shape == (3, 32, 32, 3)
    big = np.full((4, 64, 64, 3), 200, dtype=np.uint8)
    np.savez(tmp_path / "big.npz", x=big)
    assert (load_local_images(str(tmp_path / "big.npz")) == 200).all()  # resized, values kept
    assert len(local_images(str(tmp_path / "gray.npz"), 4, seed=0)) == 4
    np.savez(tmp_path / "labels_only.npz", y=np.zeros(3))
    with pytest.raises(DataError, match="needs key 'x' or 'x_train'"):
        load_local_images(str(tmp_path / "labels_only.npz"))
    with pytest.raises(DataError, match="does not exist"):
        load_local_images(str(tmp_path / "missing"))
    (folder / "sub" / "broken.jpg").write_bytes(b"not an image")
    with pytest.raises(DataError, match="broken.jpg: not a readable image"):
        load_local_images(str(folder))
