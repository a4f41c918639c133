"""Multi-worker training: which strategy TF_CONFIG picks, and two worker processes on localhost
training one model under MultiWorkerMirroredStrategy (the chief writing the run, both ending
with the same weights, each global batch split between them)."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time

import pytest

from trainer import distribute
from trainer.config import from_dict

SMALL = {"name": "mmoe", "embedding_dim": 8, "expert_units": [32, 16], "tower_units": [16], "num_experts": 4}
BATCH = 512
# XLA off: its compile costs ~15 s per process here (with XLA on, the workers train the same model).
CONFIG = {
    "model": SMALL,
    "training": {
        "batch_size": BATCH,
        "epochs": 2,
        "eval_batch_size": 4096,
        "learning_rate": 0.005,
        "evals_per_epoch": 1,
        "embedding_l2": 0.0,
    },  # per share on each worker (README)
    "hardware": {"xla": False},
    "loss": {"convention": "clicked"},
}  # clicked: CVR's mean counts the global batch's clicks
TIMEOUT = 420  # seconds for the whole run: generous, the machine is shared


def _tf_config(addresses, task_type="worker", index=0, chief=None) -> str:
    cluster = {"worker": addresses, **({"chief": chief} if chief else {})}
    return json.dumps({"cluster": cluster, "task": {"type": task_type, "index": index}})


TWO = ["localhost:1111", "localhost:2222"]


def test_a_multi_task_cluster_picks_multi_worker_mirrored_strategy():
    assert distribute.choose("auto", _tf_config(TWO, index=1), gpus=0) == (
        distribute.MULTI_WORKER,
        distribute.Role(workers=2, index=1, task_type="worker", task_id=1),
    )
    # A chief task is worker 0; the workers follow it.
    name, role = distribute.choose("auto", _tf_config(TWO, "worker", 0, chief=["localhost:3333"]), gpus=2)
    assert name == distribute.MULTI_WORKER and (role.workers, role.index, role.is_chief) == (3, 1, False)
    name, role = distribute.choose("auto", _tf_config(TWO, "chief", 0, chief=["localhost:3333"]), gpus=0)
    assert (role.index, role.name) == (0, "chief")


@pytest.mark.parametrize(
    "tf_config",
    [
        None,
        "",
        _tf_config(["localhost:1111"]),
        json.dumps({"cluster": {"chief": ["localhost:1"]}, "task": {"type": "chief"}}),
    ],
)
def test_no_cluster_or_a_single_task_is_ignored(tf_config):
    assert distribute.choose("auto", tf_config, gpus=0) == (distribute.DEFAULT, distribute.Role())
    assert distribute.choose("auto", tf_config, gpus=2)[0] == distribute.MIRRORED


def test_distribute_none_ignores_tf_config():
    assert distribute.choose("none", _tf_config(TWO, index=1), gpus=2) == (distribute.DEFAULT, distribute.Role())


@pytest.mark.parametrize(
    "tf_config, words",
    [
        ("{not json", "not JSON"),
        (json.dumps({"cluster": {"worker": TWO, "ps": ["localhost:3"]}, "task": {"type": "ps", "index": 0}}), "ps"),
        (_tf_config(TWO, index=2), "index 2"),
        (json.dumps({"cluster": {"worker": TWO, "chief": ["a:1", "b:2"]}, "task": {"type": "chief"}}), "at most one"),
    ],
)
def test_a_cluster_we_cannot_train_on_is_refused(tf_config, words):
    with pytest.raises(distribute.ClusterError, match=words):
        distribute.choose("auto", tf_config, gpus=0)


def test_the_strategy_made_for_a_single_task_or_distribute_none_is_the_default():
    """In processes of their own, as MultiWorkerMirroredStrategy needs: neither waits for a cluster."""
    code = (
        "import json, os, tensorflow as tf\n"
        "from trainer import train\n"
        "from trainer.config import from_dict\n"
        "w = train._strategy(from_dict({'hardware': {'distribute': os.environ['DISTRIBUTE']}}))\n"
        "print(json.dumps([w.name, w.count, w.is_chief, w.strategy is tf.distribute.get_strategy()]))\n"
    )
    cases = ((_tf_config(["localhost:1111"]), "auto"), (_tf_config(TWO, index=1), "none"))
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", code],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "TF_CONFIG": tf_config, "DISTRIBUTE": setting, "CUDA_VISIBLE_DEVICES": ""},
        )
        for tf_config, setting in cases
    ]
    for process in processes:
        out, err = process.communicate(timeout=300)
        assert process.returncode == 0, err[-3000:]
        assert json.loads(out.splitlines()[-1]) == ["default", 1, True, True]


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _train_command(transformed, output, config_file) -> list[str]:
    return [
        sys.executable,
        "-m",
        "mtrank.cli",
        "train",
        "--transformed",
        str(transformed),
        "--output",
        str(output),
        "--config",
        str(config_file),
    ]


def _run_workers(commands_and_envs) -> list[tuple[int, str, str]]:
    """(exit status, stdout, stderr) of each process, all killed when any is still running after TIMEOUT."""
    processes = [
        subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for command, env in commands_and_envs
    ]
    deadline = time.time() + TIMEOUT
    outputs = []
    try:
        for process in processes:
            outputs.append(process.communicate(timeout=max(1.0, deadline - time.time())))
    except subprocess.TimeoutExpired:
        for process in processes:
            process.kill()
        details = [process.communicate()[1][-3000:] for process in processes]
        pytest.fail(f"the processes did not finish in {TIMEOUT} s; their stderr:\n" + "\n----\n".join(details))
    return [(process.returncode, out, err) for process, (out, err) in zip(processes, outputs)]


def _worker_envs(n: int) -> list[dict]:
    addresses = [f"localhost:{port}" for port in _free_ports(n)]
    base = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    return [{**base, "CUDA_VISIBLE_DEVICES": "", "TF_CONFIG": _tf_config(addresses, "worker", i)} for i in range(n)]


def test_when_the_chief_cannot_start_the_other_worker_stops_too(tmp_path, transformed_synthetic):
    """The chief's folder holds a run of another config: it refuses to resume it, and the other
    worker, waiting for the chief's run state, is told why and stops instead of waiting forever."""
    config_file = tmp_path / "config.json"
    config_file.write_text(json.dumps(CONFIG))
    run = tmp_path / "worker0" / "model"
    run.mkdir(parents=True)
    other = from_dict(CONFIG).replace(model={"num_experts": 2}).to_dict()
    (run / "config.json").write_text(json.dumps({"trainer": other, "input_spec": {}}))
    (run / "state.json").write_text(json.dumps({"evals_done": 1}))
    envs = _worker_envs(2)
    (chief, chief_out, chief_err), (worker, _, worker_err) = _run_workers(
        [(_train_command(transformed_synthetic[0], tmp_path / f"worker{i}", config_file), envs[i]) for i in range(2)]
    )
    assert chief == 2 and "different config (model.num_experts" in chief_err, chief_err[-3000:]
    assert worker == 2, worker_err[-3000:]
    assert "the chief (worker 0) stopped: TrainingError:" in worker_err and "model.num_experts" in worker_err


def test_two_workers_train_one_model(tmp_path, transformed_synthetic):
    transformed = transformed_synthetic[0]
    config_file = tmp_path / "config.json"
    config_file.write_text(json.dumps(CONFIG))
    scratch = tmp_path / "tmp1"  # the non-chief's TMPDIR: its checkpoints go there and are deleted
    scratch.mkdir()
    outputs = [tmp_path / "worker0", tmp_path / "worker1"]
    envs = _worker_envs(2)
    envs[1]["TMPDIR"] = str(scratch)
    reference_env = {k: v for k, v in envs[0].items() if k != "TF_CONFIG"}
    # The same run in one process, alongside: the workers must train the model it trains.
    runs = _run_workers(
        [(_train_command(transformed, outputs[i], config_file), envs[i]) for i in range(2)]
        + [(_train_command(transformed, tmp_path / "single", config_file), reference_env)]
    )
    for i, (status, _, err) in enumerate(runs):
        assert status == 0, f"process {i} exited {status}:\n{err[-4000:]}"
    (_, _, chief_err), (_, worker_out, worker_err), _ = runs

    assert "training on 2 workers with MultiWorkerMirroredStrategy (this is worker 0, chief)" in chief_err
    assert "training on 2 workers with MultiWorkerMirroredStrategy (this is worker 1, worker)" in worker_err

    # The chief's folder holds the run; the other worker wrote nothing to its output or left in TMPDIR.
    run = outputs[0] / "model"
    for name in ("config.json", "state.json", "metrics.json", "best.weights.h5", "serving/saved_model.pb"):
        assert (run / name).exists(), name
    assert list((run / "checkpoints").glob("ckpt-2.index")) and list((run / "logs").rglob("events.out.tfevents.*"))
    assert not outputs[1].exists() or not any(outputs[1].rglob("*"))
    assert not any(scratch.iterdir())

    metrics = json.loads((run / "metrics.json").read_text())
    dist = metrics["distribute"]
    assert (dist["strategy"], dist["workers"], dist["global_batch_size"]) == ("MultiWorkerMirroredStrategy", 2, BATCH)
    # Both ended with the same weights: the non-chief logs the digest of its own.
    assert dist["workers_agree"]
    assert re.search(rf"final weights digest {dist['final_weights_digest']}, the same on all 2 workers", worker_err)
    # Each global batch is split between the workers: an epoch is rows // global batch steps.
    assert dist["optimizer_steps"] == metrics["epochs_done"] * (metrics["rows"]["train"] // BATCH)
    # The non-chief took the chief's decisions and reports the chief's run.
    assert f"Trainer: mmoe, {metrics['epochs_done']:g} epochs" in worker_out
    assert metrics["epochs_done"] == len(metrics["history"]) and "test" in metrics

    # One model with the global batch: the single process's run, up to float rounding.
    single = json.loads((tmp_path / "single" / "model" / "metrics.json").read_text())
    assert single["distribute"]["optimizer_steps"] == dist["optimizer_steps"]
    for ours, theirs in zip(metrics["history"], single["history"], strict=True):
        for key in ("loss", "ctr_loss", "cvr_loss", "val_ctr_auc", "val_ctr_logloss"):
            assert ours[key] == pytest.approx(theirs[key], rel=2e-3, abs=2e-4), (ours["epoch"], key)
