"""``steerlab sae-train`` end to end on the random ``tiny-llama`` (4 layers, d_model 64).

In-process through ``steerlab.cli.main`` (as tests/integration/test_cli.py does), with the cache
in a temporary directory; one bad-input case also runs the real console script. Bad input gives
exit code 2, one ``error: ...`` line on stderr and no output directory.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from tests.cli_run import cli

SMALL = (
    "sae-train",
    "--model",
    "tiny-llama",
    "--expansion",
    "2",
    "--k",
    "4",
    "--tokens",
    "2048",
    "--eval-tokens",
    "256",
    "--generations",
    "1",
    "--batch-size",
    "64",
    "--quiet",
)


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STEERLAB_CACHE", str(tmp_path / "cache"))


def test_sae_train_writes_the_sae_and_reuses_it(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out = tmp_path / "sae"
    r = cli(capsys, *SMALL, "--site", "blocks.2.hook_resid_post", "--out", out)
    assert r.code == 0, r.err
    assert {p.name for p in out.iterdir()} == {
        "cfg.json",
        "sae_weights.safetensors",
        "metrics.json",
        "training.json",
    }
    cfg = json.loads((out / "cfg.json").read_text())
    assert (cfg["architecture"], cfg["k"], cfg["d_sae"]) == ("topk", 4, 128)
    assert cfg["metadata"]["hook_name"] == "blocks.2.hook_resid_post"
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0 < metrics["l0"] <= 4
    for word in ("explained variance", "L0", "dead features", "clean", "zero-ablated"):
        assert word in r.out
    assert "trained:" in r.out
    cached = Path(r.out.split("trained: ")[1].splitlines()[0])
    assert cached.is_dir() and str(cached).startswith(str(tmp_path / "cache"))

    # the same settings again (short site form): nothing is trained
    again = cli(capsys, *SMALL, "--site", "resid_post", "--layer", "2", "--out", tmp_path / "b")
    assert again.code == 0, again.err
    assert "reused from the cache (nothing trained)" in again.out
    assert str(cached) in again.out
    assert (tmp_path / "b" / "sae_weights.safetensors").read_bytes() == (
        out / "sae_weights.safetensors"
    ).read_bytes()

    sae_lens = pytest.importorskip("sae_lens")
    assert type(sae_lens.SAE.load_from_disk(str(out))).__name__ == "TopKSAE"


@pytest.mark.parametrize(
    ("site", "words"),
    [
        ("blocks.7.hook_resid_post", ("out of range", "tiny-llama")),
        ("blocks.1.hook_bogus", ("unknown hook site",)),
        ("resid_post", ("needs a layer",)),
    ],
)
def test_a_bad_site_is_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, site: str, words: tuple[str, ...]
) -> None:
    out = tmp_path / "sae"
    r = cli(capsys, *SMALL, "--site", site, "--out", out)
    assert r.code == 2
    lines = r.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), r.err
    assert all(w in lines[0] for w in words), lines[0]
    assert not out.exists()


def test_bad_settings_are_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    for extra in (("--architecture", "gated"), ("--width", "2", "--k", "8")):
        r = cli(capsys, *SMALL, "--site", "blocks.1.hook_resid_post", *extra)
        assert r.code == 2, r.err
        lines = r.err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:"), r.err


def test_the_console_script_reports_a_bad_site(tmp_path: Path) -> None:
    script = Path(sys.executable).with_name("steerlab")
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "steerlab.cli"]
    proc = subprocess.run(
        [*cmd, *SMALL, "--site", "blocks.1.hook_bogus"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
    assert "blocks.1.hook_bogus" in lines[0]
