"""A real multi-node Ray cluster on loopback (``ray start --head`` and a worker node, token authentication on), an
``mlflow server`` as the tracking URI, and a worker node killed mid-trial."""

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import _children, env, free_port, start_mlflow_server, stop, sweep_cmd, tiny_args

from emoe import tracking

pytestmark = pytest.mark.slow

RAY = str(Path(sys.executable).with_name("ray"))


class LoopbackCluster:
    """Ray nodes started by ``ray start ... --block`` in their own process groups, so a node can be killed whole
    (raylet and its workers) the way a machine dies."""

    def __init__(self, tmp_path: Path):
        token = tmp_path / "ray_auth_token"  # the documented set-up: one token, RAY_AUTH_MODE=token on every node
        token.write_text(secrets.token_hex(32))
        self.env = {**env(), "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token),
                    # a dead node is noticed within seconds, not the default half a minute
                    "RAY_health_check_period_ms": "500", "RAY_health_check_failure_threshold": "4",
                    "RAY_health_check_timeout_ms": "1000"}
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.logs = tmp_path / "ray_nodes"
        self.logs.mkdir()
        self.nodes: dict[str, subprocess.Popen] = {}

    def start(self, name: str, cpus: int, head: bool = False) -> None:
        where = ["--head", "--port", str(self.port), "--include-dashboard", "false"] if head else [
            "--address", self.address]
        log = open(self.logs / f"{name}.log", "w")
        self.nodes[name] = subprocess.Popen(
            [RAY, "start", *where, "--num-cpus", str(cpus), "--num-gpus", "0", "--resources", json.dumps({name: 1}),
             "--node-ip-address", "127.0.0.1", "--disable-usage-stats", "--block"],
            env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.wait_for(lambda nodes: name in self.alive(nodes), f"node {name} did not join")

    def nodes_info(self) -> list[dict]:
        code = ("import json, ray; ray.init(address=%r, logging_level='ERROR', log_to_driver=False); "
                "print(json.dumps([{'id': n['NodeID'], 'alive': n['Alive'], 'resources': n['Resources']} "
                "for n in ray.nodes()]))" % self.address)
        out = subprocess.run([sys.executable, "-c", code], env=self.env, capture_output=True, text=True, timeout=120)
        return json.loads(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 else []

    @staticmethod
    def alive(nodes: list[dict]) -> dict[str, str]:
        """name -> node id of the live nodes (each node carries a custom resource named after it)."""
        return {r: n["id"] for n in nodes if n["alive"] for r in n["resources"] if not r[0].isupper()
                and not r.startswith(("node:", "memory", "object_store_memory", "accelerator"))}

    def wait_for(self, ok, what: str, timeout: float = 120) -> list[dict]:
        deadline = time.time() + timeout
        while time.time() < deadline:
            nodes = self.nodes_info()
            if nodes and ok(nodes):
                return nodes
            time.sleep(1)
        raise AssertionError(what + "\n" + "\n".join(p.read_text()[-2000:] for p in self.logs.iterdir()))

    def kill(self, name: str) -> None:
        os.killpg(self.nodes[name].pid, signal.SIGKILL)
        self.nodes[name].wait(timeout=30)

    def shutdown(self) -> None:
        for name in self.nodes:
            if self.nodes[name].poll() is None:
                self.kill(name)
        # What `ray stop` does too: forget the dead head, which `ray start` recorded for later ray.init() calls.
        record = Path("/tmp/ray/ray_current_cluster")
        if record.exists() and record.read_text().strip().endswith(f":{self.port}"):
            record.unlink()


@pytest.fixture
def cluster(tmp_path):
    c = LoopbackCluster(tmp_path)
    try:
        c.start("head", cpus=1, head=True)
        c.start("worker", cpus=1)
        yield c
    finally:
        c.shutdown()


@pytest.fixture
def mlflow_server(tmp_path):
    port = free_port()
    server = start_mlflow_server(tmp_path, port)
    yield f"http://127.0.0.1:{port}"
    stop(server)


def cluster_args(cluster, model_dir, data_dir, tmp_path, uri, *extra):
    args = tiny_args(model_dir, data_dir, tmp_path, "--address", cluster.address, "--cpus-per-trial", "1",
                     "--scheduler", "none", *extra)
    args[args.index("--tracking-uri") + 1] = uri
    return args


def placements(uri: str, with_step: bool = False) -> dict[str, tuple]:
    """trial id -> (the node its run's placement tag names, its outcome[, its latest step]), read from MLflow while
    the sweep runs: the driver tags a run with its node (address and id) at the trial's first result, again when a
    retry runs elsewhere, and at its end."""
    try:
        _, _, _, children = _children(uri, "emoe-pretraining")
    except Exception:  # no experiment yet
        return {}
    return {c.data.tags[tracking.TRIAL_ID]: (c.data.tags[tracking.PLACEMENT].split()[2],
                                             c.data.tags.get(tracking.OUTCOME))
            + ((c.data.metrics.get("step", 0),) if with_step else ())
            for c in children if tracking.PLACEMENT in c.data.tags}


def test_sweep_on_a_two_node_cluster_logs_to_an_mlflow_server(cluster, mlflow_server, tiny_model_dir,
                                                              tiny_data_dir, tmp_path):
    nodes = cluster.alive(cluster.nodes_info())
    # Trials that ask for more CPUs than any node has would stay PENDING for ever: refused in one line, before any
    # MLflow run is created.
    greedy = cluster_args(cluster, tiny_model_dir, tiny_data_dir, tmp_path, mlflow_server, "--cpus-per-trial", "2")
    out = subprocess.run(sweep_cmd("pretraining", *greedy), capture_output=True, text=True, cwd=tmp_path,
                         env=cluster.env, timeout=300)
    errors = [line for line in out.stderr.splitlines() if line.startswith("error: ")]
    assert out.returncode == 2 and len(errors) == 1 and errors[0].startswith(
        f"error: --cpus-per-trial=2 asks for more CPUs than any node has (the largest node of the cluster at "
        f"{cluster.address}: 1 CPUs)"), out.stderr[-2000:]
    assert tracking.client(mlflow_server).get_experiment_by_name("emoe-pretraining") is None
    args = cluster_args(cluster, tiny_model_dir, tiny_data_dir, tmp_path, mlflow_server, "--seeds", "0,1",
                        "--learning-rates", "1e-3")
    out = subprocess.run(sweep_cmd("pretraining", *args), capture_output=True, text=True, cwd=tmp_path,
                         env=cluster.env, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    placed = placements(mlflow_server)
    assert len(placed) == 8
    # One CPU per node and one per trial: two trials at a time can only run on two nodes, so both did work.
    assert {node for node, _ in placed.values()} == {nodes["head"], nodes["worker"]}
    _, _, parents, children = _children(mlflow_server, "emoe-pretraining")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == 8 and len({c.data.tags[tracking.TRIAL_ID] for c in children}) == 8
    assert all(c.info.status == "FINISHED" and c.data.tags[tracking.OUTCOME] == "completed" for c in children)
    client = tracking.client(mlflow_server)
    assert all("partitions.npz" in {a.path for a in client.list_artifacts(c.info.run_id)}
               for c in children if c.data.tags[tracking.ARM].endswith("emoe"))


def test_worker_node_killed_mid_trial_is_retried_on_the_surviving_node(cluster, mlflow_server, tiny_model_dir,
                                                                       tiny_data_dir, tmp_path):
    nodes = cluster.alive(cluster.nodes_info())
    # Long trials (12 epochs of 400 sentences: 300 steps, a few seconds even for the fast random-init arms) so that
    # the kill lands mid-training: a 75-step random-init trial could end between being spotted and the kill.
    # --max-failures 5: until Ray notices the dead node (about 2 s here), a retry may be placed on it and fail again.
    args = cluster_args(cluster, tiny_model_dir, tiny_data_dir, tmp_path, mlflow_server, "--seeds", "0",
                        "--learning-rates", "1e-3", "--max-failures", "5", "--max-train-samples", "400",
                        "--epochs", "12", "--eval-steps", "5")
    proc = subprocess.Popen(sweep_cmd("pretraining", *args), cwd=tmp_path, env=cluster.env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        victim = None
        deadline = time.time() + 600
        while victim is None and time.time() < deadline and proc.poll() is None:
            # a trial early in its training on the worker (at most 30 of its 300 steps), so the kill lands mid-trial
            # and with a checkpoint already (written once its first report is taken)
            on_worker = [t for t, (node, outcome, step) in placements(mlflow_server, with_step=True).items()
                         if node == nodes["worker"] and outcome is None and step <= 30
                         and list((tmp_path / "ray").glob(f"*/emoe_trials/{t}/state.pt"))]
            victim = on_worker[0] if on_worker else None
            time.sleep(0.2)
        assert victim, "no trial started on the worker node"
        cluster.kill("worker")
        log, _ = proc.communicate(timeout=900)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, log[-4000:]
    (exp_dir,) = (tmp_path / "ray").iterdir()
    assert (exp_dir / "emoe_trials" / victim / "final.json").exists()
    # The victim started on the worker (seen above), died with it, and was retried, to the end, on the head node.
    assert placements(mlflow_server)[victim] == (nodes["head"], "completed"), log[-6000:]
    _, _, parents, children = _children(mlflow_server, "emoe-pretraining")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == 4 and len({c.data.tags[tracking.TRIAL_ID] for c in children}) == 4
    assert all(c.info.status == "FINISHED" and c.data.tags[tracking.OUTCOME] == "completed" for c in children)
    (retried,) = [c for c in children if c.data.tags[tracking.TRIAL_ID] == victim]
    assert int(retried.data.tags[tracking.RESTARTS]) >= 1 and retried.data.metrics["epoch"] == 12.0
    # It continued from its checkpoint: each optimiser step's evaluation once in MLflow (a restart from step 0
    # would have reported the steps before the kill again), and its final metrics are the uninterrupted run's.
    client = tracking.client(mlflow_server)
    steps = [m.step for m in client.get_metric_history(retried.info.run_id, "id_score")]
    assert sorted(steps) == list(range(5, 301, 5)), steps
    # The cell's records (both attempts): the retry says which checkpoint it continued from, and its
    # first report is the evaluation right after that checkpoint's step (5 optimiser steps later): nothing before
    # it was trained again.
    from emoe.tracking.records import TrialFiles

    results = TrialFiles(exp_dir, victim).load_reports(every=True)
    retry = [r for r in results if "resumed_from" in r]
    assert retry, "the retry did not continue from a checkpoint"
    origin = retry[0]["resumed_from"]
    assert origin >= 5 and min(r["step"] for r in retry if r["resumed_from"] == origin) == origin + 5, \
        [(r["step"], r.get("resumed_from")) for r in results]
    assert retried.data.tags[tracking.RESUMED] == str(origin)
    from conftest import assert_matches_uninterrupted

    assert_matches_uninterrupted(retried.data.metrics, exp_dir, victim)  # --cpus-per-trial 1
    assert all(tracking.RESTARTS not in c.data.tags for c in children if c is not retried)
