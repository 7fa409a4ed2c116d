import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

# The full offline data beside the checkout (this project's machines); tests that need it skip without it.
DATA_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data"
needs_shared_data = pytest.mark.skipif(not (DATA_DIR / "sst2" / "train.jsonl").is_file(),
                                       reason=f"the full offline data is not at {DATA_DIR}")


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    os.environ["EMOE_CACHE_DIR"] = str(tmp_path_factory.mktemp("emoe-cache"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.use_deterministic_algorithms(False)
    yield


@pytest.fixture(autouse=True)
def _no_mlruns_in_checkout(monkeypatch, tmp_path):
    """MLflow falls back on ./mlruns when no tracking URI is set: point that fallback at the test's own folder."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/default-mlflow.db")


def tiny_model(arch: str, seed: int = 0):
    """A tiny random-weight base model of ``arch`` (hidden 32, d_ff 64, 3 blocks), in eval mode."""
    import transformers as T

    torch.manual_seed(seed)
    common = dict(vocab_size=100)
    configs = {
        "bert": lambda: T.BertConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64,
                                     **common),
        "roberta": lambda: T.RobertaConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=2,
                                           intermediate_size=64, **common),
        "distilbert": lambda: T.DistilBertConfig(dim=32, hidden_dim=64, n_layers=3, n_heads=2, **common),
        "gpt2": lambda: T.GPT2Config(n_embd=32, n_layer=3, n_head=2, n_inner=64, bos_token_id=0, eos_token_id=0,
                                     **common),
        "vit": lambda: T.ViTConfig(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=3,
                                   num_attention_heads=2, intermediate_size=64),
        "llama": lambda: T.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                       num_attention_heads=2, num_key_value_heads=2, **common),
    }
    return T.AutoModel.from_config(configs[arch]()).eval()


def tiny_inputs(arch: str, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    if arch == "vit":
        return {"pixel_values": torch.randn(2, 3, 16, 16, generator=g)}
    return {"input_ids": torch.randint(1, 100, (2, 9), generator=g)}


def hidden(model, inputs) -> torch.Tensor:
    return model(**inputs).last_hidden_state


ARCHS = ("bert", "roberta", "distilbert", "gpt2", "vit", "llama")


def write_jsonl(path: Path, rows) -> Path:
    import json

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _head(path: Path, n: int):
    import json

    with open(path) as f:
        return [json.loads(next(f)) for _ in range(n)]


PACKAGED_DATA = Path(__file__).resolve().parents[1] / "emoe" / "demo_data"

# A few NLI rows in the Hub's SNLI/SICK layout (0 entailment, 1 neutral, 2 contradiction), made up for the tests.
_NLI = [("A man plays a guitar.", "A person makes music.", 0), ("A dog runs in a park.", "A cat sleeps.", 2),
        ("Two kids eat lunch.", "The kids are at school.", 1), ("A woman reads a book.", "Someone is reading.", 0),
        ("A car is parked outside.", "The car is driving fast.", 2), ("People walk in the rain.", "It is cold.", 1)]


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory) -> Path:
    """The data layout with a few rows of each packaged file (SST-2, RTE, MRPC, STS-B and the OOD sets that exist
    offline: real data, shipped with the package) and a made-up SNLI; no file outside the checkout is read."""
    root = tmp_path_factory.mktemp("data")
    for rel, n in [("sst2/train.jsonl", 400), ("sst2/validation.jsonl", 64), ("imdb/test.jsonl", 40),
                   ("yelp/test.jsonl", 32), ("amazon/test.jsonl", 32), ("flipkart/test.jsonl", 32),
                   ("rte/train.jsonl", 96), ("rte/validation.jsonl", 32), ("mrpc/train.jsonl", 96),
                   ("mrpc/validation.jsonl", 32), ("stsb/train.jsonl", 96), ("stsb/validation.jsonl", 32),
                   ("qqp/train.jsonl", 32), ("scitail/test.jsonl", 32), ("sick/test.jsonl", 32)]:
        write_jsonl(root / rel, _head(PACKAGED_DATA / rel, n))
    for rel, n in [("snli/train.jsonl", 64), ("snli/validation.jsonl", 32)]:
        write_jsonl(root / rel, [{"premise": p, "hypothesis": h, "label": y, "idx": i}
                                 for i, (p, h, y) in enumerate((_NLI * n)[:n])])
    return root


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> str:
    """A tiny random BERT (hidden 32, 2 blocks, d_ff 64) saved with the packaged MiniLM's tokenizer."""
    import transformers as T

    from emoe.convert import resolve_model

    path = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = T.AutoTokenizer.from_pretrained(resolve_model("minilm"))
    torch.manual_seed(0)
    config = T.BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                          intermediate_size=64, max_position_embeddings=128)
    T.BertForSequenceClassification(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def assert_matches_uninterrupted(metrics: dict, exp_dir: Path, trial_id: str) -> None:
    """A trial's final ``id_score``, ``ood_score`` and ``train_loss`` (its MLflow run's ``metrics``) equal an
    uninterrupted in-process run of its config (from its cell's records): CPU, one thread, as
    ``--cpus-per-trial 1`` ran it."""
    from emoe.tracking.records import TrialFiles
    from emoe.train import train_and_evaluate

    config = TrialFiles(exp_dir, trial_id).load_config()["config"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        uninterrupted = train_and_evaluate(config)
    finally:
        torch.set_num_threads(threads)
    for name in ("id_score", "ood_score", "train_loss"):
        assert metrics[name] == pytest.approx(uninterrupted[name], abs=1e-6), name


def exact_wilcoxon_p(diff) -> float:
    """The two-sided Wilcoxon signed-rank p by brute force: every one of the 2^n sign assignments of the differences,
    zero differences ranked with the others and their ranks split between the signs (zsplit)."""
    import itertools

    import numpy as np
    from scipy import stats

    d = np.asarray(diff, float)
    r = stats.rankdata(np.abs(d))
    zero_half = r[d == 0].sum() / 2
    centre = r.sum() / 2
    observed = abs(r[d > 0].sum() + zero_half - centre)
    hits = 0
    for signs in itertools.product((1, -1), repeat=len(d)):
        flipped = d * np.array(signs)
        hits += abs(r[flipped > 0].sum() + zero_half - centre) >= observed - 1e-9
    return hits / 2 ** len(d)


# --- shared by the sweep, fault and cluster tests: run a sweep script on the tiny model and data, read its runs ---

SWEEPS = Path(__file__).resolve().parents[1] / "sweeps"


def sweep_cmd(script, *args):
    return [sys.executable, str(SWEEPS / f"{script}.py"), *args]


def tiny_args(model_dir, data_dir, tmp_path, *extra):
    return ["--model", model_dir, "--data-dir", str(data_dir), "--epochs", "1", "--max-train-samples", "64",
            "--max-eval-samples", "16", "--max-length", "32", "--batch-size", "16", "--num-experts", "4",
            "--top-k", "2", "--eval-steps", "1", "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db",
            "--storage-path", str(tmp_path / "ray"), *extra]


def run_tiny(script, model_dir, data_dir, tmp_path, *extra, environ=None):
    """Run ``sweeps/<script>.py`` on the tiny model and data in ``tmp_path``; it must succeed."""
    out = subprocess.run(sweep_cmd(script, *tiny_args(model_dir, data_dir, tmp_path, *extra)), capture_output=True,
                         text=True, cwd=tmp_path, env=environ or env(), timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


def env():
    return {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
            "RAY_DEDUP_LOGS": "0"}


def _children(uri, experiment):
    """The store's client, the experiment, its sweep (parent) runs and its trial runs."""
    from emoe import tracking

    client = tracking.client(uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get(tracking.ROLE) == "sweep"]
    children = [r for r in runs if r.data.tags.get(tracking.ROLE) == "trial"]
    return client, exp, parents, children


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_mlflow_server(root: Path, port: int) -> subprocess.Popen:
    """``mlflow server`` on loopback with a SQLite backend and a local artifact root, as the README documents."""
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri",
                             f"sqlite:///{root}/server.db", "--artifacts-destination", str(root / "artifacts"),
                             "--host", "127.0.0.1", "--port", str(port), "--workers", "1"], cwd=root,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError("mlflow server did not start")


def stop(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=60)


# --- shared by the report tests: synthetic trials with planted differences, and an MLflow sweep of them ---

def synthetic_trials(arms, tasks: int = 4, seeds: int = 2, shift: dict | None = None, noise: float = 0.003,
                     seed: int = 0):
    """Completed trials of ``arms`` (one learning rate) on ``tasks`` tasks x ``seeds`` seeds, as
    ``emoe.analysis.results.load_trials`` reads them: each task draws a level, each arm adds its ``shift`` (score
    units), each trial its own noise; ``ood_score`` is the mean of its two OOD sets, ``id_score`` 0.1 above it."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    rows = []
    for t in range(tasks):
        level = rng.normal(0.7, 0.03)
        for arm in arms:
            for s in range(seeds):
                v = level + (shift or {}).get(arm, 0.0) + rng.normal(0, noise)
                sets = v + rng.normal(0, noise, 2)
                rows.append({"run_id": f"task{t}-{arm}-{s}", "task": f"task{t}", "arm": arm, "seed": s,
                             "learning_rate": 1e-4, "outcome": "completed",
                             "method": "dense" if arm == "dense" else "emoe", "id_score": v + 0.1,
                             "ood_score.a": sets[0], "ood_score.b": sets[1], "ood_score": float(sets.mean())})
    return pd.DataFrame(rows)


def log_sweep(uri: str, experiment: str, trials, arms, unended=()) -> str:
    """An MLflow sweep of ``trials`` (``synthetic_trials``' columns) under one parent run that declares ``arms``: a
    trial whose outcome is failed logs no metric; each ``(task, arm, seed)`` of ``unended`` is a trial run that never
    ended (no outcome: still running, or its driver was killed). Returns the parent run id."""
    from emoe import tracking

    client = tracking.client(uri)
    exp = tracking.get_or_create_experiment(client, experiment)
    parent = client.create_run(exp, tags={tracking.ROLE: "sweep", tracking.SWEEP: "clustering",
                                          tracking.FACTOR: "clustering"}).info.run_id
    client.log_param(parent, "arms", ",".join(arms))
    rows = trials.to_dict("records")
    rows += [{"task": t, "arm": a, "seed": s, "learning_rate": 1e-4, "outcome": None} for t, a, s in unended]
    for i, r in enumerate(rows):
        run = tracking.TrialRun(client, exp, f"{r['arm']}-{i}", parent_run_id=parent,
                                tags={tracking.ARM: r["arm"], tracking.TRIAL_ID: f"t{i}"})
        run.log_params({"task": r["task"], "seed": r["seed"], "learning_rate": r["learning_rate"],
                        "method": "dense" if r["arm"] == "dense" else "emoe"})
        if r["outcome"] in ("completed", "early_stopped"):
            run.log_metrics({k: v for k, v in r.items() if k.startswith(("id_score", "ood_score"))}
                            | {"epoch": 1.0}, step=10)
        if r["outcome"] is not None:
            run.finish(r["outcome"])
    client.set_terminated(parent)
    return parent


# --- shared by the command-line and Hub tests: exit codes, a machine without network, a local Hugging Face cache ---

def exit_code(fn) -> int:
    """What the process would exit with: the returned code, or argparse's SystemExit code."""
    try:
        return fn()
    except SystemExit as e:
        return e.code


@pytest.fixture
def no_network(monkeypatch) -> list:
    """A machine without network and without HF_HUB_OFFLINE: every connection attempt (name lookups included)
    fails at once and is recorded in the returned list, so a test can tell the Hub's loaders never tried one."""
    import datasets.config
    from huggingface_hub import constants

    from emoe import hub

    attempts = []

    def refuse(what):
        def call(address, *args, **kwargs):
            attempts.append((what, address))
            raise OSError(101, "Network is unreachable")
        return call

    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(socket, "create_connection", refuse("connect"))
    monkeypatch.setattr(socket, "getaddrinfo", refuse("lookup"))
    hub.unreachable.cache_clear()
    yield attempts
    hub.unreachable.cache_clear()


def hub_cache(root: Path, repo_id: str, model_dir: str | Path) -> Path:
    """A Hugging Face cache at ``root`` holding ``model_dir``'s files as the Hub model ``repo_id`` (the layout
    ``huggingface_hub`` downloads into: ``models--org--name/snapshots/<commit>/``, ``refs/main``)."""
    import shutil

    commit = "0" * 40
    repo = root / f"models--{repo_id.replace('/', '--')}"
    shutil.copytree(model_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return root


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory) -> str:
    """A tiny random GPT-2 (``GPT2ForSequenceClassification``: n_embd 32, 3 blocks, 2 heads, d_ff 64) saved with a
    GPT-2-style byte-level BPE tokenizer (vocabulary 400) trained here on the packaged SST-2 sentences; like the real
    GPT-2's, its bos, eos and unk are ``<|endoftext|>`` and it has no pad token (emoe pads with eos)."""
    import json

    import transformers as T
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    path = tmp_path_factory.mktemp("tiny-gpt2")
    with open(PACKAGED_DATA / "sst2" / "train.jsonl") as f:
        lines = [json.loads(line)["sentence"] for line in f][:400]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.post_processor = processors.ByteLevel(trim_offsets=False)
    bpe.train_from_iterator(lines, trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                       show_progress=False))
    tokenizer = T.GPT2TokenizerFast(tokenizer_object=bpe, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                    unk_token="<|endoftext|>", model_max_length=128)
    assert tokenizer.pad_token is None
    eos = tokenizer.eos_token_id
    torch.manual_seed(0)
    config = T.GPT2Config(vocab_size=len(tokenizer), n_positions=128, n_embd=32, n_layer=3, n_head=2, n_inner=64,
                          bos_token_id=eos, eos_token_id=eos)
    T.GPT2ForSequenceClassification(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)
