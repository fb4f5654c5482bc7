"""The sign-check stage on tiny-llama: ``sanity.json`` holds, per layer, the paired verdict that
:func:`~steerlab.pipelines.reliability.sign.layer_sign` gives on the stage's own rows and the
baseline's rows of the same held-out prompts."""

from __future__ import annotations

from pathlib import Path

import yaml
from tests.pipeline_helpers import tiny_run_config

from steerlab.pipelines.reliability.config import load_config
from steerlab.pipelines.reliability.run import run_stages
from steerlab.pipelines.reliability.sign import VERDICTS, layer_sign


def test_the_stage_stores_the_paired_verdict_of_its_rows(tmp_path: Path) -> None:
    path = tiny_run_config(tmp_path, "out", "sign", prompts=20, max_new_tokens=6)
    raw = yaml.safe_load(path.read_text())
    raw["experiment"]["layers"] = [1, 2]
    raw["sanity_checks"]["sign_check_n"] = 5
    path.write_text(yaml.safe_dump(raw))
    cfg = load_config(path)
    run = run_stages(cfg, ["baseline", "build-directions", "sign-check"], progress=False)

    sign = run.read_json("sanity.json")["sign_check"]
    steered, base = run.load_stage("sign_check"), run.load_stage("baseline")
    held = set(steered.prompt_id)
    assert sign["n"] == len(held) == 5
    base = base[(base.split == "harm_train") & base.prompt_id.isin(held)]
    assert set(sign["per_layer"]) == {"1", "2"}
    for layer, got in sign["per_layer"].items():
        want = layer_sign(steered[steered.layer == int(layer)], base, n_boot=cfg.metrics.n_boot)
        assert got == want and got["verdict"] in VERDICTS and got["n"] == 5
