"""``direction.method: outcome_conditioned`` in the reliability pipeline: the direction is built
from the baseline's own completions on the building prompts, labeled by the baseline's
refusal/helpful scores, and refused with the counts when a class is too small."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from tests.pipeline_helpers import tiny_run_config

from steerlab.directions.outcome import outcome_conditioned
from steerlab.errors import SteerlabError
from steerlab.models import load_model
from steerlab.pipelines.reliability.config import load_config
from steerlab.pipelines.reliability.run import run_stages
from steerlab.pipelines.reliability.store import RunDir
from steerlab.vectors import SteeringVector


def _config(tmp: Path, min_per_class: int = 2) -> Path:
    path = tiny_run_config(tmp, "out", "outcome", prompts=10, max_new_tokens=6)
    cfg = yaml.safe_load(path.read_text())
    cfg["direction"] = {"method": "outcome_conditioned", "min_per_class": min_per_class}
    cfg["experiment"]["layers"] = [1, 2]
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_too_few_examples_of_a_class_is_one_clear_error(tmp_path: Path) -> None:
    cfg = load_config(_config(tmp_path))
    run = run_stages(cfg, ["baseline"], progress=False)
    base = run.load_stage("baseline")
    train = base[base.split == "harm_train"].iloc[:-2]  # minus the sign-check hold-out
    n_refusal = int(train.is_refusal.sum())
    n_helpful = int((train.is_helpful & ~train.is_refusal).sum())
    assert n_refusal < 2  # the tiny random model does not refuse
    with pytest.raises(SteerlabError, match=r"at least 2 refusal and 2 helpful") as err:
        run_stages(cfg, ["build-directions"], progress=False)
    assert f"has {n_refusal} refusal and {n_helpful} helpful" in str(err.value)
    assert not list(RunDir.existing(run.path).directions.glob("*.safetensors"))


def test_direction_is_the_labeled_mean_difference_of_the_baseline_completions(
    tmp_path: Path,
) -> None:
    cfg = load_config(_config(tmp_path))
    run = run_stages(cfg, ["baseline"], progress=False)
    # the tiny random model never refuses: label its completions by hand, as a scorer would
    parts = sorted(run.parts("baseline").glob("part-*.parquet"))
    for i, part in enumerate(parts):
        df = pd.read_parquet(part)
        flip = (df.index + i) % 2 == 0
        df["is_refusal"] = flip
        df["is_helpful"] = ~flip
        df.to_parquet(part, index=False)
    run_stages(cfg, ["build-directions"], progress=False)

    base = run.load_stage("baseline")
    held = set(base[base.split == "harm_train"].prompt_id.tolist()[-2:])  # sign_check_n = 2
    train = base[(base.split == "harm_train") & ~base.prompt_id.isin(held)]
    assert train.is_refusal.any() and (~train.is_refusal).any()
    model = load_model("tiny-llama")
    want = outcome_conditioned(
        model,
        train.prompt.tolist(),
        train.text.tolist(),
        train.is_refusal.tolist(),
        [1, 2],
        min_per_class=2,
    ).vector
    rd = RunDir.existing(run.path)
    for layer in (1, 2):
        got = SteeringVector.load(rd.direction_path(layer))
        assert got.method == "outcome_conditioned"
        assert torch.equal(got.direction(layer), want.direction(layer))
        assert got.extra["n_refusal"] == int(train.is_refusal.sum())
    sanity = run.read_json("sanity.json")
    assert sanity["directions"]["1"]["method"] == "outcome_conditioned"


def test_an_unfinished_baseline_is_refused_not_used(tmp_path: Path) -> None:
    """A killed baseline leaves some part files: building from them would freeze a direction
    made from part of the data, so the stage refuses until the baseline is complete."""
    cfg = load_config(_config(tmp_path))
    run = run_stages(cfg, ["baseline"], progress=False)
    sorted(run.parts("baseline").glob("part-*.parquet"))[-1].unlink()
    with pytest.raises(SteerlabError, match="to completion first"):
        run_stages(cfg, ["build-directions"], progress=False)
    assert not list(RunDir.existing(run.path).directions.glob("*.safetensors"))
