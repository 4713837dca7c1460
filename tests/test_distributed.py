"""Distributed training equals single-device training on the same global task batches.

The reference runs in this process (default strategy); MirroredStrategy (2 logical CPUs) and
MultiWorkerMirroredStrategy (2 local worker processes on loopback, TF_CONFIG) run in fresh
processes, all at once. The batches are built so that the replicas' shares hold different numbers
of scored tasks and the clip (global norm 0.05) is active: a per-replica loss normalizer or a
per-replica clip would change the weights. The multi-worker run exchanges the embedding tables'
gradients dense (packed with the rest), the mirrored run all-gathers them (as for large tables).
"""

import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from limaml_tf.training import multi_worker_config

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import dist_worker  # noqa: E402

pytestmark = pytest.mark.heavy  # end-to-end / several processes: `make test`, not `make test-fast`


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _weights(path):
    data = np.load(path)
    return [data[k] for k in data.files if k.startswith("arr_")], (data["loss"] if "loss" in data else None)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    d = tmp_path_factory.mktemp("dist")
    init, out = str(d / "init"), str(d / "out")
    dist_worker.main(["--mode", "single", "--models", "limaml,vanilla", "--init", init, "--out", out + "_single"])
    env = {**os.environ, "PYTHONPATH": os.path.dirname(HERE)}
    script = os.path.join(HERE, "dist_worker.py")
    procs = [subprocess.Popen([sys.executable, script, "--mode", "mirrored", "--models", "limaml,vanilla",
                               "--init", init, "--out", out + "_mirrored", "--dense-exchange-values", "0"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)]
    ports = _free_ports(2)
    for i in range(2):
        procs.append(subprocess.Popen([sys.executable, script, "--mode", "worker", "--init", init,
                                       "--out", out + "_multiworker"],
                                      env={**env, "TF_CONFIG": multi_worker_config(ports, i)},
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    for p in procs:
        log, _ = p.communicate(timeout=600)
        assert p.returncode == 0, log[-4000:]
    return out


@pytest.mark.parametrize("mode,model", [("mirrored", "limaml"), ("mirrored", "vanilla"),
                                        ("multiworker", "limaml")])
def test_distributed_matches_single_device(runs, mode, model):
    init, _ = _weights(runs.replace("out", "init") + f"_{model}.npz")
    single, single_loss = _weights(f"{runs}_single_{model}.npz")
    dist, dist_loss = _weights(f"{runs}_{mode}_{model}.npz")
    moved = max(np.abs(a - b).max() for a, b in zip(single, init))
    assert moved > 1e-3  # training did change the weights
    for a, b in zip(single, dist):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dist_loss, single_loss, rtol=1e-5)  # the reported loss is the global mean
