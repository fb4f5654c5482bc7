"""``steerlab sae-features`` end to end on the random ``tiny-llama`` (4 layers, d_model 64).

The SAE (sae-lens directory format) is built in the test with two planted features: one whose
encoder reads the direction from failing to passing prompts (it fires on passing ones), one the
reverse. The command runs through a local typer app holding only this command; bad baselines
are checked through the command function itself (one clear error, nothing written).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import typer
from typer.testing import CliRunner

from steerlab.cli.sae_features import read_baseline, register, sae_features_cmd
from steerlab.directions import record
from steerlab.errors import SteerlabError
from steerlab.models import Model
from steerlab.vectors import SteeringVector

pd = pytest.importorskip("pandas")
pytest.importorskip("pyarrow")

LAYER, D_SAE, GOOD, BAD = 2, 16, 5, 9
PASSING = [f"def add{i}(a, b):\n    return a + b + {i}" for i in range(6)]
FAILING = [f"Write a program that prints {i} primes, then explain it." for i in range(5)]
STATUSES = ["fail", "error", "syntax_error", "timeout", "oom"]


def baseline_frame(passing: list[str], failing: list[str], extra: bool = True) -> Any:
    rows = [(p, "pass") for p in passing] + [
        (p, STATUSES[i % len(STATUSES)]) for i, p in enumerate(failing)
    ]
    if extra:
        rows.append(("def broken(): pass", "sandbox_error"))  # left out: says nothing
    return pd.DataFrame(
        {
            "task_id": [f"t{i}" for i in range(len(rows))],
            "prompt": [p for p, _ in rows],
            "code": ["pass"] * len(rows),
            "status": [s for _, s in rows],
            "complexity": [1] * len(rows),
        }
    )


def write_baseline(path: Path, df: Any) -> Path:
    from steerlab.pipelines.code.results import write_baseline as write

    write(df, path)
    return path


def planted_sae(model: Model, path: Path) -> dict[str, torch.Tensor]:
    """An SAE at blocks.2.hook_resid_post whose feature GOOD fires on the passing prompts and BAD
    on the failing ones (a threshold between the classes' projections); the rest random."""
    from safetensors.torch import save_file

    def acts(texts: list[str]) -> torch.Tensor:
        seqs = [model.encode(t) for t in texts]
        return record(model, seqs, [[-1]] * len(seqs), [LAYER]).acts[LAYER]  # (n, 64)

    a, b = acts(PASSING), acts(FAILING)
    u = a.mean(0) - b.mean(0)
    u = u / u.norm()
    mid = float(((a @ u).min() + (b @ u).max()) / 2)
    gen = torch.Generator().manual_seed(0)
    w_enc = torch.randn(model.d_model, D_SAE, generator=gen) * 0.05
    b_enc = torch.randn(D_SAE, generator=gen) * 0.05
    w_enc[:, GOOD], b_enc[GOOD] = u * 10, -mid * 10
    w_enc[:, BAD], b_enc[BAD] = -u * 10, mid * 10
    tensors = {
        "W_enc": w_enc,
        "b_enc": b_enc,
        "W_dec": torch.randn(D_SAE, model.d_model, generator=gen),
        "b_dec": torch.zeros(model.d_model),
    }
    path.mkdir(parents=True)
    save_file(tensors, str(path / "sae_weights.safetensors"))
    cfg = {
        "architecture": "standard",
        "d_in": model.d_model,
        "d_sae": D_SAE,
        "dtype": "float32",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "metadata": {"hook_name": f"blocks.{LAYER}.hook_resid_post", "model_name": "tiny-llama"},
    }
    (path / "cfg.json").write_text(json.dumps(cfg))
    return tensors


@pytest.fixture
def setup(tmp_path: Path, tiny_llama: Model) -> tuple[Path, Path, dict[str, torch.Tensor]]:
    tensors = planted_sae(tiny_llama, tmp_path / "sae")
    base = write_baseline(tmp_path / "run" / "baseline.parquet", baseline_frame(PASSING, FAILING))
    return tmp_path / "sae", base, tensors


def invoke(*args: object) -> Any:
    app = typer.Typer()
    register(app)
    app.command("noop")(lambda: None)  # a second command keeps "sae-features" a subcommand
    return CliRunner().invoke(app, ["sae-features", *(str(a) for a in args)])


def test_cli_writes_features_table_summary_and_vectors(
    setup: tuple[Path, Path, dict[str, torch.Tensor]], tmp_path: Path
) -> None:
    sae_dir, base, tensors = setup
    out = tmp_path / "features"
    r = invoke(
        "--model", "tiny-llama", "--sae", sae_dir, "--baseline", base, "--out", out,
        "--n-perm", "200", "--top", "3", "--quiet",
    )  # fmt: skip
    assert r.exit_code == 0, (r.output, r.exception)
    names = {p.name for p in out.iterdir()}
    assert names == {
        "features.csv",
        "top_features.json",
        f"correct_f{GOOD}.safetensors",
        f"incorrect_f{BAD}.safetensors",
    }
    top = json.loads((out / "top_features.json").read_text())
    assert (top["n_pass"], top["n_fail"], top["n_sandbox_error"]) == (6, 5, 1)
    assert top["site"] == "blocks.2.hook_resid_post" and top["position"] == "last"
    assert top["sae"]["source"] == str(sae_dir) and top["model"] == "tiny-llama"
    assert top["n_features"] == D_SAE
    assert top["n_features_tested"] + top["n_dead"] == D_SAE
    best_c, best_i = top["correct"][0], top["incorrect"][0]
    assert (best_c["feature"], best_c["auroc"]) == (GOOD, 1.0)
    assert (best_i["feature"], best_i["auroc"]) == (BAD, 0.0)
    assert best_c["p_value"] < 0.05 and best_i["p_value"] < 0.05  # 462 labellings in all
    assert len(top["correct"]) <= 3 and len(top["incorrect"]) <= 3
    csv = pd.read_csv(out / "features.csv")
    assert len(csv) == top["n_features_tested"] and csv["feature"].is_unique
    # the exported vectors are the decoder rows, at the SAE's site, ready for select-coefficients
    for role, feature in (("correct", GOOD), ("incorrect", BAD)):
        path = out / f"{role}_f{feature}.safetensors"
        vec = SteeringVector.load(path, 64)
        assert list(vec.layers) == [LAYER] and vec.hook_point == "resid_post"
        torch.testing.assert_close(vec.directions[LAYER], tensors["W_dec"][feature])
        assert vec.extra["feature"] == feature and vec.extra["discovery"]["role"] == role
        assert str(path) in r.output and f"--{role}-vector" in r.output
    assert "correct-preferring" in r.output and "incorrect-preferring" in r.output
    assert f"{top['n_features_tested']} live features tested" in r.output


def test_cli_mean_position_and_more_exports(
    setup: tuple[Path, Path, dict[str, torch.Tensor]], tmp_path: Path
) -> None:
    sae_dir, base, _ = setup
    out = tmp_path / "features"
    r = invoke(
        "--model", "tiny-llama", "--sae", sae_dir, "--baseline", base, "--out", out,
        "--n-perm", "50", "--position", "mean", "--export-top", "2", "--batch-size", "3",
        "--quiet",
    )  # fmt: skip
    assert r.exit_code == 0, (r.output, r.exception)
    top = json.loads((out / "top_features.json").read_text())
    assert top["position"] == "mean"
    for role in ("correct", "incorrect"):
        want = min(2, len(top[role]))
        assert len(top["vectors"][role]) == want
        for p in top["vectors"][role]:
            assert Path(p).is_file() and Path(p).name.startswith(f"{role}_f")


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (None, "no such file"),
        (lambda: baseline_frame(PASSING, FAILING).drop(columns=["status"]), "missing column"),
        (lambda: baseline_frame(PASSING, FAILING[:1]), "6 passing and 1 failing"),
        (lambda: baseline_frame(PASSING[:1], FAILING, extra=False), "1 passing and 5 failing"),
        (
            lambda: baseline_frame(PASSING, FAILING).assign(status="maybe"),
            "unknown status 'maybe'",
        ),
    ],
    ids=["missing-file", "missing-column", "too-few-failing", "too-few-passing", "bad-status"],
)
def test_bad_baseline_is_one_clear_error_and_writes_nothing(
    tmp_path: Path, make: Any, match: str
) -> None:
    base = tmp_path / "run" / "baseline.parquet"
    if make is not None:
        write_baseline(base, make())
    out = tmp_path / "features"
    with pytest.raises(SteerlabError, match=match) as e:
        sae_features_cmd(sae=str(tmp_path / "no-sae"), baseline=base, out=out, quiet=True)
    assert "\n" not in str(e.value)
    assert not out.exists()
    # through the command line: the same error (the real CLI prints it as one line, exit 2)
    r = invoke("--sae", tmp_path / "no-sae", "--baseline", base, "--out", out, "--quiet")
    assert r.exit_code != 0 and isinstance(r.exception, SteerlabError)
    assert not out.exists()


def test_sae_that_does_not_fit_the_model_writes_nothing(
    setup: tuple[Path, Path, dict[str, torch.Tensor]], tmp_path: Path
) -> None:
    _, base, _ = setup
    out = tmp_path / "features"
    with pytest.raises(SteerlabError, match="no such SAE"):
        sae_features_cmd(
            sae=str(tmp_path / "nowhere"), baseline=base, out=out, model="tiny-llama", quiet=True
        )
    with pytest.raises(SteerlabError, match="--position"):
        sae_features_cmd(sae="x", baseline=base, out=out, position="first", quiet=True)
    assert not out.exists()


def test_a_baseline_from_before_format_stamps_is_refused(tmp_path: Path) -> None:
    """Its statuses came from a sandbox that counted an early exit as a pass."""
    path = tmp_path / "baseline.parquet"
    baseline_frame(PASSING, FAILING).to_parquet(path, index=False)
    with pytest.raises(SteerlabError, match="has no baseline format stamp") as e:
        read_baseline(path)
    assert "\n" not in str(e.value) and str(path) in str(e.value)


def test_read_baseline_splits_by_status(tmp_path: Path) -> None:
    b = read_baseline(
        write_baseline(tmp_path / "baseline.parquet", baseline_frame(PASSING, FAILING))
    )
    assert (b.passed, b.failed, b.n_ignored) == (PASSING, FAILING, 1)


def test_an_sae_of_another_model_and_more_exports_than_reported_are_refused(
    setup: tuple[Path, Path, dict[str, torch.Tensor]], tmp_path: Path
) -> None:
    sae_dir, base, _ = setup
    out = tmp_path / "features"
    with pytest.raises(SteerlabError, match="--export-top 50 is more than --top 2"):
        sae_features_cmd(sae=str(sae_dir), baseline=base, out=out, top=2, export_top=50, quiet=True)
    cfg = json.loads((sae_dir / "cfg.json").read_text())
    cfg["metadata"]["model_name"] = "SmolLM2-360M-Instruct"
    (sae_dir / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(SteerlabError, match="trained on 'SmolLM2-360M-Instruct'") as e:
        sae_features_cmd(sae=str(sae_dir), baseline=base, out=out, model="tiny-llama", quiet=True)
    assert "\n" not in str(e.value)
    assert not out.exists()
