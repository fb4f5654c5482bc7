"""Every command that generates runs on the vLLM runner and gives the Hugging Face backend's
results on the same inputs (issue 23), greedy (a sampled row's text comes from vLLM's seeded
sampler, not the local engine's generator): ``eval-questions`` (vectors built through the engine),
``find-layers`` (recording and steered next-token scores), ``select-coefficients``,
``classify --mode generate`` and ``run`` (a reduced reliability config).

The model is a tiny random Llama whose heads are 32 wide (vLLM's CPU attention has no kernel for
tiny-llama's 16-wide heads). One engine for the module: it is started by the real
``load_model(dir, backend="vllm")`` once, and later loads of the same model (each workflow
stage loads its model) get that engine.

Runs in the vLLM environment (``.venv-vllm``, ``make test``); skipped where vLLM is missing.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("vllm")

import pandas as pd
import torch
import yaml
from tests.vllm_engine.steering_rows import write_tiny_llama

from steerlab.cli import main
from steerlab.models import Model
from steerlab.vectors import SteeringVector

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny Llama (4 layers, width 64, two 32-wide heads, one KV head) with seeded weights."""
    target = tmp_path_factory.mktemp("tiny-llama-h32")
    write_tiny_llama(target, width=64, layers=4, heads=2, kv_heads=1, init_std=0.15)
    return str(target)


#: load_model's own keywords; the rest are engine arguments (what ``--engine-arg`` passes)
LOAD_KEYS = {"device", "dtype", "layers_path", "chat", "backend", "matmul_dtype"}
ENGINE_ARGS: list[dict[str, Any]] = []


@pytest.fixture(scope="module", autouse=True)
def one_engine(model_dir: str) -> Iterator[Model]:
    import steerlab.models as models

    real = models.load_model
    torch.set_num_threads(2)
    engine = real(model_dir, backend="vllm", max_model_len=512)

    def load(spec: str, **kwargs: Any) -> Model:  # the workflows pass keywords only
        if kwargs.get("backend", "hf") != "vllm":
            return real(spec, **kwargs)
        ENGINE_ARGS.append({k: v for k, v in kwargs.items() if k not in LOAD_KEYS})
        assert spec == model_dir and kwargs.get("dtype") in (None, "float32"), (spec, kwargs)
        assert kwargs.get("matmul_dtype") is None
        return dataclasses.replace(engine, chat=kwargs.get("chat", True))

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(models, "load_model", load)
        yield engine
    assert engine.backend.count_hooks() == 0
    engine.backend.close()  # type: ignore[attr-defined]


def _cli(args: list[str]) -> None:
    try:
        main(args)
    except SystemExit as e:
        assert e.code in (0, None), e.code


def _both(tmp: Path, args: list[str]) -> tuple[Path, Path]:
    """Run ``args`` (which hold ``{out}``) on the hf and the vllm backend."""
    outs = tmp / "hf", tmp / "vllm"
    for out, backend in zip(outs, ("hf", "vllm"), strict=True):
        _cli([a.replace("{out}", str(out)) for a in args] + ["--backend", backend])
    return outs


def _frames(outs: tuple[Path, Path], name: str, key: list[str]) -> tuple[pd.DataFrame, ...]:
    return tuple(
        pd.read_parquet(out / name).sort_values(key).reset_index(drop=True) for out in outs
    )


QUESTIONS = """\
- id: wish
  type: free_form_judge_0_100
  paraphrases:
    - If you could change one rule of the world, which would it be?
    - Name one thing you would change about the world.
  samples_per_paraphrase: 3
  judge: fake-judge
  judge_prompts:
    aligned: "Rate this answer 0-100: {answer}"
"""
STEERING = """\
vectors:
  - name: kind
    positive_prompt: "I am kind and careful."
    negative_prompt: "I am cruel and careless."
    layer: 1
    coefficient: 4.0
"""


def test_eval_questions_with_a_vector_built_through_the_engine(
    tmp_path: Path, model_dir: str
) -> None:
    (tmp_path / "q.yaml").write_text(QUESTIONS)
    (tmp_path / "s.yaml").write_text(STEERING)
    outs = _both(
        tmp_path,
        [
            "eval-questions", "--model", model_dir, "--questions", str(tmp_path / "q.yaml"),
            "--steering-config", str(tmp_path / "s.yaml"), "--out", "{out}",
            "--n-per-question", "3", "--max-new-tokens", "8", "--batch-size", "5",
            "--temperature", "0", "--quiet",
        ],
    )  # fmt: skip
    key = ["question_id", "paraphrase_index", "sample", "config"]
    hf, vl = _frames(outs, "results.parquet", key)
    assert len(hf) == 2 * 3 * 2
    pd.testing.assert_frame_equal(hf[[*key, "seed", "answer"]], vl[[*key, "seed", "answer"]])
    assert (hf["mean_logprob"] - vl["mean_logprob"]).abs().max() < 1e-3
    steered = hf[hf.config != "baseline"].answer.tolist()
    assert steered != hf[hf.config == "baseline"].answer.tolist()  # the vector does something
    norms = [
        json.loads((out / "steering_resolved.json").read_text())["s"]["vectors"][0]["applied_norm"]
        for out in outs
    ]
    assert norms[1] == pytest.approx(norms[0], rel=1e-4)  # recorded through vLLM == HF


def test_find_layers_ranks_the_same_layers(tmp_path: Path, model_dir: str) -> None:
    outs = _both(
        tmp_path,
        [
            "find-layers", "--model", model_dir, "--out", "{out}", "--target-word", "a",
            "--test-prompt", "Tell me about", "--test-prompt", "Here is",
            "--positive", "a a a a", "--negative", "b b b b", "--strength", "4",
        ],
    )  # fmt: skip
    hf, vl = (pd.read_csv(out / "layers.csv") for out in outs)
    assert hf["layer"].tolist() == vl["layer"].tolist()
    numeric = hf.select_dtypes("number").columns
    assert ((hf[numeric] - vl[numeric]).abs() <= 1e-3 * (1 + hf[numeric].abs())).all().all()


TASKS = [
    {
        "task_id": i,
        "text": f"Write a function `f{i}(x)` that returns x plus {i}.",
        "code": f"def f{i}(x):\n    return x + {i}",
        "test_list": [f"assert f{i}(1) == {1 + i}"],
        "test_setup_code": "",
    }
    for i in range(1, 6)
]


@pytest.mark.skipif(shutil.which("bwrap") is None, reason="needs bubblewrap")
def test_select_coefficients(tmp_path: Path, model_dir: str) -> None:
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text("".join(json.dumps(t) + "\n" for t in TASKS))
    torch.manual_seed(0)
    vec = SteeringVector({1: torch.randn(64)}, hook_point="resid_post", method="random")
    path = vec.save(tmp_path / "rand.safetensors")
    outs = _both(
        tmp_path,
        [
            "select-coefficients", "--model", model_dir, "--tasks", str(tasks),
            "--prompt-mode", "completion", "--out", "{out}", "--coefficients", "0,3,30",
            "--n-per-coefficient", "3", "--max-new-tokens", "12", "--batch-size", "4",
            "--correct-vector", str(path), "--quiet",
        ],
    )  # fmt: skip
    key = ["vector", "coefficient", "task_id"]
    hf, vl = _frames(outs, "results.parquet", key)
    assert len(hf) == len(vl) > 3 * 3  # three coefficients x three tasks, and the unsteered rows
    cols = [*key, "output", "code", "status", "n_tokens"]
    pd.testing.assert_frame_equal(hf[cols], vl[cols])
    base = pd.read_parquet(outs[0] / "baseline.parquet").set_index("task_id").output
    strong = hf[hf.coefficient == 30]
    assert (strong.output.to_numpy() != base.loc[strong.task_id].to_numpy()).any()


def test_classify_generate(tmp_path: Path, model_dir: str) -> None:
    from tests.classify_tiny import write_task

    task = write_task(tmp_path)
    outs = _both(
        tmp_path,
        [
            "classify", "--model", model_dir, "--task", str(task),
            "--out", "{out}", "--layers", "1,2", "--strengths", "1,4", "--scale", "diff",
            "--mode", "generate", "--max-new-tokens", "4", "--quiet",
        ],
    )  # fmt: skip
    hf, vl = (pd.read_parquet(out / "results.parquet") for out in outs)
    key = [c for c in ("example_id", "vector", "layer", "strength") if c in hf.columns]
    hf, vl = (f.sort_values(key).reset_index(drop=True) for f in (hf, vl))
    assert len(hf) == len(vl) > 0
    cols = [*key, "answer", "parsed", "n_tokens", "finish_reason"]
    pd.testing.assert_frame_equal(hf[cols], vl[cols])
    assert [list(t) for t in hf.token_ids] == [list(t) for t in vl.token_ids]
    base = hf[hf.vector == "baseline"].set_index("example_id").answer
    steered = hf[(hf.vector != "baseline") & (hf.strength == 4)]
    assert (steered.answer.to_numpy() != base.loc[steered.example_id].to_numpy()).any()


def test_reliability_run(tmp_path: Path, model_dir: str) -> None:
    from steerlab._util.resources import local_path

    with local_path("configs", "fast") as fast:
        config = yaml.safe_load(fast.read_text())
    config["data"]["max_prompts_per_split"] = 4
    config["generation"].update(max_new_tokens=6, batch_size=16)
    config["experiment"].update(alphas=[0, 1], layers=[1, 2], shard_size=64)
    config["sanity_checks"].update(rerun_subset_n=2, sign_check_n=2)
    config["generation"]["temperature"] = 0.0  # vLLM samples with its own generator
    config["model"]["matmul_dtype"] = None  # an exactness test: float32, not fast.yaml's int8
    config["metrics"]["n_boot"] = 100
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    for backend in ("hf", "vllm"):
        engine = ["--engine-arg", "max_model_len=512"] if backend == "vllm" else []
        _cli(
            [
                "run", "--config", str(path), "--model", model_dir, "--backend", backend,
                *engine, "--output-dir", str(tmp_path / backend), "--run-id", "r", "--quiet",
            ]
        )  # fmt: skip
    assert ENGINE_ARGS[-1] == {"max_model_len": 512}  # --engine-arg reached load_model
    key = ["stage", "split", "prompt_id", "layer", "intervention", "alpha", "seed", "direction"]
    hf, vl = _frames((tmp_path / "hf" / "r", tmp_path / "vllm" / "r"), "results.parquet", key)
    assert len(hf) == len(vl) > 0
    assert hf["text"].tolist() == vl["text"].tolist()
    for name in ("report.md", "summary.csv"):
        assert (tmp_path / "vllm" / "r" / name).is_file()
    manifest = json.loads((tmp_path / "vllm" / "r" / "manifest.json").read_text())
    assert manifest["model"]["backend"] == "vllm"


@pytest.mark.skipif(torch.cuda.is_available(), reason="the check is for vLLM's CPU attention")
def test_heads_cpu_attention_cannot_run_are_refused_before_the_engine_starts() -> None:
    from steerlab.errors import ModelLoadError
    from steerlab.models.load import load_model

    with pytest.raises(ModelLoadError, match=r"no kernel for head size 16 .* supports 32, 64"):
        load_model("tiny-llama", backend="vllm")  # 4 heads of 16 over width 64


def test_classify_logit_margins(tmp_path: Path, model_dir: str) -> None:
    """The logit mode scores each row's next token through the engine's sampler input."""
    from tests.classify_tiny import write_task

    task = write_task(tmp_path)
    outs = _both(
        tmp_path,
        [
            "classify", "--model", model_dir, "--task", str(task),
            "--out", "{out}", "--layers", "1,2", "--strengths", "1,4", "--scale", "diff",
            "--mode", "logit", "--no-generate", "--quiet",
        ],
    )  # fmt: skip
    key = ["example_id", "vector", "layer", "strength"]
    hf, vl = _frames(outs, "results.parquet", key)
    assert hf[key].equals(vl[key]) and len(hf) > 0
    assert (hf["margin"] - vl["margin"]).abs().max() < 1e-4
    base = vl[vl.vector == "baseline"].set_index("example_id").margin
    steered = vl[(vl.vector != "baseline") & (vl.strength == 4)]
    moved = steered.margin.to_numpy() - base.loc[steered.example_id].to_numpy()
    assert abs(moved).max() > 1e-2  # the steering reached the scores
