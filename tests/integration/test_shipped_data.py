"""``steerlab run`` from a directory that is not the repository: the installed package finds its
own configs and prompt sets, prompt files in a user's config are found relative to that config,
and a bad prompt file is one error line naming file and line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from steerlab.cli import main
from steerlab.pipelines.reliability.store import RunDir
from steerlab.tasks.prompts import SPLITS, PromptRow, read_prompts, shipped_prompts, write_prompts


def _steerlab() -> list[str]:
    script = Path(sys.executable).with_name("steerlab")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "steerlab.cli"]


# hang detectors, not speed limits: the run takes a few minutes on 2 quiet cores, and the suite
# must pass on a machine three times slower (speed is measured in benchmarks/)
@pytest.mark.timeout(3600)
def test_fast_run_from_outside_the_repository(tmp_path: Path) -> None:
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    cmd = [*_steerlab(), "run", "--fast", "--model", "tiny-llama", "--run-id", "ci", "--quiet"]
    done = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=3000)
    assert done.returncode == 0, done.stderr[-3000:]

    run = work / "artifacts" / "runs" / "ci"  # experiment.output_dir: relative to the CWD
    assert [p.name for p in work.iterdir()] == ["artifacts"]
    for name in ("config.yaml", "results.parquet", "summary.csv", "report.md"):
        assert (run / name).is_file(), name
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["data"]["harm_train_path"] == "harm_train"
    for split in SPLITS:
        assert read_prompts(run / "prompts" / f"{split}.jsonl") == shipped_prompts(split)[:60]
    said = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(said) == len(set(said)), "a message was repeated:\n" + done.stderr


def _project(tmp_path: Path, benign: str) -> Path:
    """``project/cfg.yaml`` whose benign prompts are ``prompts/benign.jsonl`` beside it."""
    cfg = {
        "model": {"name": "tiny-llama"},
        "data": {"benign_path": benign, "max_prompts_per_split": 3},
        "generation": {"max_new_tokens": 2, "batch_size": 16},
        "experiment": {"output_dir": "runs"},
    }
    path = tmp_path / "project" / "cfg.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_run_reads_prompt_files_relative_to_its_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # meta without template: family and style are all a prompt file needs
    mine = [
        PromptRow("m0", "Tell me about tides.", {"family": "f", "style": "s"}),
        PromptRow("m9", "And about clouds.", {"family": "g", "style": "t", "template": "x"}),
    ]
    cfg = _project(tmp_path, "prompts/benign.jsonl")
    write_prompts(mine, cfg.parent / "prompts" / "benign.jsonl")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)

    main(["baseline", "--config", "../project/cfg.yaml", "--run-id", "rel", "--quiet"])
    run = RunDir.existing(elsewhere / "runs" / "rel")
    assert read_prompts(run.path / "prompts" / "benign.jsonl") == mine
    shipped = shipped_prompts("harm_test")[:3]
    assert read_prompts(run.path / "prompts" / "harm_test.jsonl") == shipped
    baseline = run.load_stage("baseline")
    benign = baseline[baseline.split == "benign"].sort_values("prompt_id")
    assert list(benign.prompt_id) == ["m0", "m9"]
    assert list(benign.template) == ["unknown", "x"]


def test_bad_prompt_file_is_one_error_line_naming_file_and_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = _project(tmp_path, "prompts/benign.jsonl")
    bad = cfg.parent / "prompts" / "benign.jsonl"
    bad.parent.mkdir()
    bad.write_text(
        '{"id": "a", "prompt": "p", "meta": {"family": "f", "style": "s"}}\n'
        '{"id": "b", "prompt": "q", "meta": {"family": "f"}}\n'
    )
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(["baseline", "--config", str(cfg), "--run-id", "bad", "--quiet"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert [x for x in err.splitlines() if x.startswith("error:")] == [
        f"error: {bad}:2: meta is missing style"
    ]
