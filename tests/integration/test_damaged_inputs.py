"""Damaged or ambiguous inputs to `run` and to vector files: one `error:` line naming the file,
exit code 2, and nothing in the run directory changed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from tests.cli_run import cli

from steerlab.errors import SteerlabError
from steerlab.pipelines.reliability.config import load_config
from steerlab.runs.rundir import RunDir


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("model:\n  name: tiny-llama\nmodel:\n  name: tiny-gpt2\n", "found the key 'model' twice"),
        ("generation:\n  max_new_tokens: 2\n  max_new_tokens: 3\n", "'max_new_tokens' twice"),
        ("", "the config file is empty"),
        ("# only a comment\n", "the config file is empty"),
    ],
)
def test_run_config_with_a_key_twice_or_empty_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, match: str
) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(text)
    with pytest.raises(SteerlabError, match=match):
        load_config(cfg)
    work = tmp_path / "work"
    work.mkdir()
    r = cli(capsys, "run", "-c", cfg, "--output-dir", work / "runs")
    assert r.code == 2 and match in r.err and "Traceback" not in r.err, r.err
    assert len(r.err.strip().splitlines()) == 1 and str(cfg) in r.err
    assert not list(work.iterdir())


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"\xff\xfe not utf-8\n", "not valid UTF-8"),
        (b"model: [unclosed\n", "malformed YAML"),
        (b"a: 1\na: 2\n", "found the key 'a' twice"),
    ],
)
def test_run_dir_with_a_damaged_config_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes, match: str
) -> None:
    rd = tmp_path / "rd"
    rd.mkdir()
    (rd / "config.yaml").write_bytes(content)
    (rd / "manifest.json").write_text("{}\n")
    before = _snapshot(rd)
    r = cli(capsys, "run", "--run-dir", rd)
    assert r.code == 2 and match in r.err and "damaged" in r.err, r.err
    assert len(r.err.strip().splitlines()) == 1 and "Traceback" not in r.err
    assert _snapshot(rd) == before


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", "\udcff"])
def test_damaged_json_side_file_is_one_sentence(tmp_path: Path, content: str) -> None:
    rd = tmp_path / "rd"
    rd.mkdir()
    (rd / "config.yaml").write_text("model:\n  name: tiny-llama\n")
    (rd / "manifest.json").write_bytes(content.encode("utf-8", "surrogateescape"))
    with pytest.raises(SteerlabError, match=r"manifest.json: not a JSON object.*damaged"):
        RunDir.existing(rd, type(load_config("fast"))).read_json("manifest.json")


def test_vector_file_of_integer_tensors_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    meta = {
        "format": "steerlab.vector/1",
        "hook_point": "resid_post",
        "method": "contrast",
        "model_id": "m",
        "layers": [0],
        "d_model": 4,
        "raw_norm": {},
        "mean_resid_norm": {},
        "prompts_hash": "",
        "steerlab_version": "0",
        "created": "now",
        "extra": {},
    }
    path = tmp_path / "ints.safetensors"
    save_file({"layer.0": torch.arange(4)}, str(path), metadata={"steerlab": json.dumps(meta)})
    r = cli(capsys, "info", path)
    assert r.code == 2 and "not floating point" in r.err and str(path) in r.err, r.err


def test_a_part_file_of_another_schema_is_named(tmp_path: Path) -> None:
    import pandas as pd

    from steerlab.runs.shards import stage_results

    parts = tmp_path / "parts" / "grid"
    parts.mkdir(parents=True)
    pd.DataFrame({"a": [1], "b": [2]}).to_parquet(parts / "part-00000-aaaaaaaaaa.parquet")
    pd.DataFrame({"a": [1], "c": [2]}).to_parquet(parts / "part-00001-bbbbbbbbbb.parquet")
    with pytest.raises(SteerlabError, match=r"part-00001-bbbbbbbbbb.parquet: its columns differ"):
        stage_results(tmp_path, "grid")


@pytest.mark.parametrize("content", [b"{not json", b"[1]", b"\xff"])
def test_a_damaged_sanity_file_stops_the_report(tmp_path: Path, content: bytes) -> None:
    from steerlab.pipelines.reliability.report import _read_json

    path = tmp_path / "sanity.json"
    path.write_bytes(content)
    with pytest.raises(SteerlabError, match=r"sanity.json: (damaged|expected a JSON object)"):
        _read_json(path)


def test_a_vector_that_cannot_be_written_is_one_line_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """safetensors reports a full disk with its own exception type: it becomes an OSError
    naming the file (the command line prints it as one line), and no temp file is left."""
    import safetensors.torch

    from steerlab.vectors import SteeringVector

    def full_disk(*args: object, **kwargs: object) -> None:
        raise RuntimeError(
            "Error while serializing: I/O error: No space left on device (os error 28)"
        )

    monkeypatch.setattr(safetensors.torch, "save_file", full_disk)
    out = tmp_path / "v.safetensors"
    with pytest.raises(OSError, match=r"cannot write .*v.safetensors: No space left on device"):
        SteeringVector(directions={1: torch.ones(4)}).save(out)
    assert list(tmp_path.iterdir()) == []
