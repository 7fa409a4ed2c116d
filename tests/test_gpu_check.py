"""The GPU check (benchmarks/gpu_check.py) on a CPU: its ``--cpu-smoke`` run gives one timed row per official
setting and command, built as the trials build them, and its packing figures read a sweep's records right.

No GPU and no network: tiny models of the real block counts, random token ids. Regenerate the smoke's output by
hand with ``python benchmarks/gpu_check.py --cpu-smoke --out /tmp/gpu_check``.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from emoe.sweep.design import COMMANDS
from emoe.sweep.design import SETTINGS as ALL_SETTINGS

SETTINGS = {name: s for name, s in ALL_SETTINGS.items() if s["script"] != "vision"}  # the check times text only
from emoe.tracking.records import TRIALS_DIR, SweepRecord

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def gpu_check():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import gpu_check

        yield gpu_check
    finally:
        sys.path.remove(str(BENCHMARKS))


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """The smoke run's JSON and markdown (one run for the module's tests)."""
    root = tmp_path_factory.mktemp("gpu_check")
    out = subprocess.run([sys.executable, str(BENCHMARKS / "gpu_check.py"), "--cpu-smoke", "--out", str(root / "out"),
                          "--work", str(root / "work")], capture_output=True, text=True, timeout=300, cwd=root)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return json.loads((root / "out" / "gpu_check.json").read_text()), (root / "out" / "gpu_check.md").read_text()


def test_one_timed_row_per_setting_and_command(smoke):
    result, _ = smoke
    wanted = [(s, c) for s, setting in SETTINGS.items() for c in COMMANDS[setting["script"]]]
    assert len(wanted) == 25
    assert [(r["setting"], r["command"]) for r in result["rows"]] == wanted
    for r in result["rows"]:
        assert "error" not in r, r
        assert r["ms_per_step"] > 0 and r["ratio_to_dense"] > 0, r
        if r["command"] == "dense":
            assert r["ratio_to_dense"] == 1.0
    assert not result["skipped_settings"] and result["packing"] is None
    assert set(result["clustering_s"]) == set(SETTINGS)
    assert all(c["clustering"] == "constrained" and c["seconds"] >= 0 for c in result["clustering_s"].values())


def test_rows_are_the_presets_trials(smoke):
    """Each row's model is its preset's trial: precision and batch from the script, the regimes' trainable sets
    nested as the official scripts train them."""
    rows = {(r["setting"], r["command"]): r for r in smoke[0]["rows"]}
    for (setting, command), r in rows.items():
        script = SETTINGS[setting]["script"]
        assert r["precision"] == ("fp32" if script == "full" else "fp16")
        assert r["grad_accum_steps"] == (2 if setting == "paper-gpt2-xl-lora" else 1)  # the README's 8 x 2
        assert r["batch_size"] == {"paper-gpt2-xl-lora": 16}.get(setting, 32)
        if script == "full":  # every parameter trains
            assert r["trainable_params"] == r["params"], (setting, command)
        else:  # LoRA: a small share; LoRA + Block trains the whole block beside it; EMoE-learn its gates beside EMoE's
            assert r["trainable_params"] < r["params"] / 2, (setting, command)
    for setting in ("paper-bert-large-lora", "paper-gpt2-xl-lora"):
        trained = {c: rows[setting, c]["trainable_params"] for c in COMMANDS["lora"]}
        assert trained["block"] > trained["dense"]
        assert trained["emoe-learn"] > trained["emoe"]
    assert rows["paper", "noisytune"]["params"] == rows["paper", "dense"]["params"]


def test_markdown_table(smoke):
    _, text = smoke
    table = [line for line in text.splitlines() if line.startswith("| paper")]
    assert len(table) == 25
    assert "| paper | bert-base-cased | emoe | fp32 | 2 x 1 |" in text
    assert "Packing:" in text and "not run" in text


def test_max_overlap(gpu_check):
    spans = [{"start": 0, "end": 10}, {"start": 1, "end": 5}, {"start": 2, "end": 6}, {"start": 7, "end": 12},
             {"start": None, "end": None}]  # a trial that never reported: not counted
    assert gpu_check.max_overlap(spans) == 3  # 0-10, 1-5 and 2-6 from 2 to 5
    assert gpu_check.max_overlap([{"start": 0, "end": 1}, {"start": 1, "end": 2}]) == 1  # one ends as one starts
    assert gpu_check.max_overlap([]) == 0


def _cell(root: Path, name: str, arm: str, start: float, end: float, pid: int, outcome: str | None) -> None:
    """A cell's records as a trial writes them: its config (the worker's start), its reports, the verdict."""
    cell = root / TRIALS_DIR / name
    cell.mkdir(parents=True)
    config = {"task": "sst2", "seed": 0, "learning_rate": 1e-4, "epochs": 1}
    (cell / "config.json").write_text(json.dumps({"arm": arm, "config": config, "started": start}))
    reports = [{"timestamp": t, "step": s, "epoch": s / 2, "id_score": 0.5, "pid": pid, "gpu_ids": "0",
                "node_id": "n1"} for s, t in ((1, (start + end) / 2), (2, end))]
    (cell / "reports.jsonl").write_text("".join(json.dumps(r) + "\n" for r in reports))
    if outcome:
        (cell / "ended.json").write_text(json.dumps({"outcome": outcome, "error": None}))


def test_sweep_figures_from_records(gpu_check, tmp_path):
    sweep = tmp_path / "emoe-clustering-20260101-000000"
    sweep.mkdir()
    SweepRecord("clustering", "clustering", {"a": {}, "b": {}}, {}, "emoe-clustering", "run").save(sweep)
    _cell(sweep, "a", "a", 100.0, 110.0, 1, "completed")
    _cell(sweep, "b", "b", 101.0, 111.0, 2, "completed")
    _cell(sweep, "c", "c", 105.0, 120.0, 3, "completed")  # three at once from 105 to 110
    _cell(sweep, "d", "d", 121.0, 130.0, 1, None)  # its actor reused; never ended
    figures = gpu_check.sweep_figures(tmp_path)
    assert figures["sweeps"] == [sweep.name]
    assert figures["max_concurrent"] == 3 and figures["workers"] == 3 and figures["completed"] == 3
    outcomes = {t["arm"]: t["outcome"] for t in figures["trials"]}
    assert outcomes == {"a": "completed", "b": "completed", "c": "completed", "d": "unended"}
    assert all(t["gpu_ids"] == ["0"] for t in figures["trials"])
    assert gpu_check.sweep_figures(tmp_path / "none")["trials"] == []
