"""End-to-end tests of the ``steerlab`` command.

Commands run in-process through ``steerlab.cli.main(argv)`` (SystemExit caught, output from
capsys) on the random ``tiny-llama`` model (4 layers, d_model 64, no download); one test runs the
installed console script in a real subprocess. Bad input must give exit code 2, exactly one
``error: ...`` line on stderr (no traceback) and no output file.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from tests.cli_run import Result, cli
from tests.integration import behaviour_data

from steerlab.cli import main
from steerlab.models.tiny import build_tiny_tokenizer
from steerlab.vectors import SteeringVector

MODEL = ("--model", "tiny-llama")
GEN = ("generate", *MODEL, "--max-new-tokens", "4")
BUILD = ("build-vector", *MODEL)
PROMPTS = ("hi", "Tell me a joke")
POS = ("I love this, it is great", "What a wonderful day")
NEG = ("I hate this, it is awful", "What a terrible day")
ROW_FIELDS = {"id", "prompt", "seed", "text", "token_ids", "logprobs", "entropies", "finish_reason"}
STEER_FIELDS = {
    "layer",
    "alpha",
    "intervention",
    "positions",
    "scale",
    "hook_point",
    "vector_model_id",
}


def ok(capsys: pytest.CaptureFixture[str], *argv: object) -> Result:
    r = cli(capsys, *argv)
    assert r.code == 0, f"exit {r.code}; stderr:\n{r.err}"
    return r


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def prompt_args(prompts: tuple[str, ...] = PROMPTS) -> list[str]:
    return [a for p in prompts for a in ("--prompt", p)]


# ----------------------------------------------------------------------------- shared artifacts


@pytest.fixture(scope="module")
def vec_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A contrast vector at layers 1 and 2 (built once through the CLI)."""
    out = tmp_path_factory.mktemp("vec") / "contrast.safetensors"
    argv = [*BUILD, "--layer", "1", "--layer", "2", "-o", str(out)]
    for p, n in zip(POS, NEG, strict=True):
        argv += ["--positive", p, "--negative", n]
    try:
        main(argv)
    except SystemExit as e:  # pragma: no cover - only on failure
        pytest.fail(f"building the shared vector exited with {e.code}")
    return out


@pytest.fixture(scope="module")
def unsteered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[int]]:
    """Greedy unsteered token ids per prompt text."""
    out = tmp_path_factory.mktemp("base") / "base.jsonl"
    try:
        main([*GEN, *prompt_args(), "-o", str(out)])
    except SystemExit as e:  # pragma: no cover - only on failure
        pytest.fail(f"unsteered generate exited with {e.code}")
    rows = read_rows(out)
    assert [r["prompt"] for r in rows] == list(PROMPTS)
    return {r["prompt"]: r["token_ids"] for r in rows}


# ----------------------------------------------------------------------------- build-vector


def _check_vector(out: Path, layers: list[int], method: str) -> SteeringVector:
    vec = SteeringVector.load(out, d_model=64)
    assert list(vec.layers) == layers
    assert vec.method == method
    assert vec.model_id == "tiny-llama"
    for layer in layers:
        assert torch.isfinite(vec.direction(layer)).all()
        assert vec.norm(layer) > 0
    stats_path = out.with_suffix(".stats.json")
    assert stats_path.is_file()
    stats = json.loads(stats_path.read_text())
    assert sorted(stats) == [str(layer) for layer in layers]
    return vec


def test_build_contrast_from_flags_and_from_jsonl_agree(tmp_path: Path, capsys) -> None:
    flags_out = tmp_path / "flags.safetensors"
    argv = [*BUILD, "--layer", "1", "--layer", "3", "-o", flags_out]
    for p, n in zip(POS, NEG, strict=True):
        argv += ["--positive", p, "--negative", n]
    r = ok(capsys, *argv)
    assert "layer 1:" in r.out and "layer 3:" in r.out
    a = _check_vector(flags_out, [1, 3], "contrast")

    pairs = write_jsonl(
        tmp_path / "pairs.jsonl",
        [{"positive": p, "negative": n} for p, n in zip(POS, NEG, strict=True)],
    )
    file_out = tmp_path / "file.safetensors"
    ok(capsys, *BUILD, "--layer", "1", "--layer", "3", "--prompts", pairs, "-o", file_out)
    b = _check_vector(file_out, [1, 3], "contrast")
    # Same pairs, same direction: the JSONL fields are read the right way round.
    for layer in (1, 3):
        torch.testing.assert_close(a.direction(layer), b.direction(layer))


@pytest.mark.parametrize("method", ["single", "forced-prefix", "labeled", "pca"])
def test_build_each_method(method: str, tmp_path: Path, capsys) -> None:
    out = tmp_path / f"{method}.safetensors"
    argv: list[object] = [*BUILD, "--method", method, "--layer", "2", "-o", out]
    if method == "single":
        argv += ["--positive", POS[0]]
    elif method == "forced-prefix":
        f = write_jsonl(
            tmp_path / "p.jsonl", [{"prompt": "How do I bake bread?"}, {"prompt": "Hi"}]
        )
        argv += ["--prompts", f]
    elif method == "labeled":
        rows = [{"text": t, "label": "pos"} for t in POS] + [
            {"text": t, "label": "neg"} for t in NEG
        ]
        argv += ["--prompts", write_jsonl(tmp_path / "l.jsonl", rows), "--label-a", "pos"]
    else:
        for p, n in zip(POS, NEG, strict=True):
            argv += ["--positive", p, "--negative", n]
    ok(capsys, *argv)
    _check_vector(out, [2], method.replace("-", "_"))


def test_build_labeled_label_a_sets_the_sign(tmp_path: Path, capsys) -> None:
    rows = [{"text": t, "label": "pos"} for t in POS] + [{"text": t, "label": "neg"} for t in NEG]
    f = write_jsonl(tmp_path / "l.jsonl", rows)
    vecs = {}
    for label in ("pos", "neg"):
        out = tmp_path / f"{label}.safetensors"
        ok(
            capsys,
            *BUILD,
            "--method",
            "labeled",
            "--layer",
            "1",
            "--prompts",
            f,
            "--label-a",
            label,
            "-o",
            out,
        )
        vecs[label] = SteeringVector.load(out)
    torch.testing.assert_close(vecs["pos"].direction(1), -vecs["neg"].direction(1))


# ----------------------------------------------------------------------------- info


def test_info_text_and_json(vec_path: Path, capsys) -> None:
    r = ok(capsys, "info", vec_path)
    assert "contrast" in r.out
    assert "tiny-llama" in r.out
    assert "layer   1:" in r.out and "layer   2:" in r.out
    assert "d_model: 64" in r.out

    meta = json.loads(ok(capsys, "info", vec_path, "--json").out)
    assert meta["method"] == "contrast"
    assert meta["model_id"] == "tiny-llama"
    assert meta["layers"] == [1, 2]
    assert meta["d_model"] == 64


# ----------------------------------------------------------------------------- generate


def test_generate_unsteered_rows(tmp_path: Path, capsys) -> None:
    out = tmp_path / "o.jsonl"
    r = ok(capsys, *GEN, *prompt_args(), "-o", out)
    assert "wrote 2 rows" in r.out
    rows = read_rows(out)
    assert [(row["id"], row["prompt"]) for row in rows] == [
        ("prompt0", PROMPTS[0]),
        ("prompt1", PROMPTS[1]),
    ]
    tok = build_tiny_tokenizer()
    for row in rows:
        assert set(row) >= ROW_FIELDS
        assert not STEER_FIELDS & set(row)  # unsteered rows carry no steering setting
        n = len(row["token_ids"])
        assert 1 <= n <= 4
        assert len(row["logprobs"]) == len(row["entropies"]) == n
        assert all(lp <= 0 for lp in row["logprobs"])
        assert all(h >= 0 for h in row["entropies"])
        assert row["finish_reason"] in ("eos", "length")
        if row["finish_reason"] == "length":
            assert n == 4
        assert row["text"] == tok.decode(row["token_ids"], skip_special_tokens=True)


def test_generate_prompts_file(tmp_path: Path, capsys, unsteered) -> None:
    f = write_jsonl(tmp_path / "p.jsonl", [{"id": "a", "prompt": PROMPTS[0]}, {"text": PROMPTS[1]}])
    out = tmp_path / "o.jsonl"
    ok(capsys, *GEN, "--prompts", f, "-o", out)
    rows = read_rows(out)
    assert [(r["id"], r["prompt"]) for r in rows] == [("a", PROMPTS[0]), ("line2", PROMPTS[1])]
    # The same prompts given by file or by flag generate the same tokens.
    assert [r["token_ids"] for r in rows] == [unsteered[p] for p in PROMPTS]


def test_generate_grid_and_alpha_zero(vec_path: Path, tmp_path: Path, capsys, unsteered) -> None:
    out = tmp_path / "grid.jsonl"
    alphas = [0.0, 60.0, -60.0]
    argv = [*GEN, *prompt_args(), "--vector", vec_path, "--layer", "1", "--layer", "2"]
    for a in alphas:
        argv += ["--alpha", a]
    r = ok(capsys, *argv, "-o", out)
    rows = read_rows(out)
    assert "wrote 12 rows" in r.out
    assert len(rows) == len(PROMPTS) * 2 * len(alphas)
    keys = sorted((row["prompt"], row["layer"], row["alpha"]) for row in rows)
    assert keys == sorted((p, layer, a) for p in PROMPTS for layer in (1, 2) for a in alphas)
    for row in rows:
        assert set(row) >= ROW_FIELDS | STEER_FIELDS
        assert (row["intervention"], row["positions"], row["scale"], row["hook_point"]) == (
            "add",
            "all",
            "absolute",
            "resid_post",
        )
    zero = [row for row in rows if row["alpha"] == 0.0]
    assert len(zero) == 4
    for row in zero:
        assert row["token_ids"] == unsteered[row["prompt"]]
    steered = [row for row in rows if row["alpha"] != 0.0]
    assert any(row["token_ids"] != unsteered[row["prompt"]] for row in steered)


def test_generate_default_layers_are_the_vectors(vec_path: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "o.jsonl"
    ok(capsys, *GEN, "--prompt", "hi", "--vector", vec_path, "-o", out)
    rows = read_rows(out)
    assert sorted((r["layer"], r["alpha"]) for r in rows) == [(1, 1.0), (2, 1.0)]


@pytest.mark.parametrize(("kind", "alpha"), [("add", 60.0), ("ablate", 1.0), ("clamp", 60.0)])
def test_generate_intervention_kinds(
    kind: str, alpha: float, vec_path: Path, tmp_path: Path, capsys, unsteered
) -> None:
    out = tmp_path / "o.jsonl"
    ok(
        capsys,
        *GEN,
        *prompt_args(),
        "--vector",
        vec_path,
        "--layer",
        "1",
        "--intervention",
        kind,
        "--alpha",
        alpha,
        "-o",
        out,
    )
    rows = read_rows(out)
    assert len(rows) == 2
    assert {(r["intervention"], r["alpha"], r["layer"]) for r in rows} == {(kind, alpha, 1)}
    if kind != "ablate":  # a large add/clamp must move a greedy continuation
        assert any(r["token_ids"] != unsteered[r["prompt"]] for r in rows)


@pytest.mark.parametrize("position", ["all", "prompt", "last-prompt", "generated", "window:-1:2"])
def test_generate_positions(position: str, vec_path, tmp_path: Path, capsys, unsteered) -> None:
    out = tmp_path / "o.jsonl"
    ok(
        capsys,
        *GEN,
        *prompt_args(),
        "--vector",
        vec_path,
        "--layer",
        "1",
        "--alpha",
        60,
        "--position",
        position,
        "-o",
        out,
    )
    rows = read_rows(out)
    assert len(rows) == 2
    assert {r["positions"] for r in rows} == {position}
    first_changed = [r["token_ids"][0] != unsteered[r["prompt"]][0] for r in rows]
    if position == "generated":
        # The first new token is predicted from the (unsteered) prompt; later ones are steered.
        assert not any(first_changed)
        assert any(r["token_ids"] != unsteered[r["prompt"]] for r in rows)
    else:  # every other window covers the last prompt token
        assert any(first_changed)


@pytest.mark.parametrize("scale", ["absolute", "diff", "resid"])
def test_generate_scales(scale: str, vec_path: Path, tmp_path: Path, capsys, unsteered) -> None:
    out = tmp_path / "o.jsonl"
    ok(
        capsys,
        *GEN,
        *prompt_args(),
        "--vector",
        vec_path,
        "--layer",
        "2",
        "--alpha",
        0,
        "--alpha",
        3,
        "--scale",
        scale,
        "-o",
        out,
    )
    rows = read_rows(out)
    assert len(rows) == 4
    assert {r["scale"] for r in rows} == {scale}
    for r in rows:
        if r["alpha"] == 0:
            assert r["token_ids"] == unsteered[r["prompt"]]


def test_generate_hook_point_name(vec_path: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "o.jsonl"
    ok(
        capsys,
        *GEN,
        "--prompt",
        "hi",
        "--vector",
        vec_path,
        "--alpha",
        5,
        "--hook-point",
        "blocks.1.hook_resid_pre",
        "-o",
        out,
    )
    rows = read_rows(out)
    assert [(r["layer"], r["hook_point"], r["alpha"]) for r in rows] == [(1, "resid_pre", 5.0)]


def test_generate_sampling_is_reproducible(tmp_path: Path, capsys) -> None:
    sample = [*GEN, *prompt_args(), "--temperature", 1.0, "--top-p", 0.9]
    outs = {}
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        outs[name] = tmp_path / f"{name}.jsonl"
        ok(capsys, *sample, "--seed", seed, "-o", outs[name])
    assert outs["a"].read_bytes() == outs["b"].read_bytes()
    a, c = read_rows(outs["a"]), read_rows(outs["c"])
    assert {r["seed"] for r in a} == {7}
    assert [r["token_ids"] for r in a] != [r["token_ids"] for r in c]


# ----------------------------------------------------------------------------- bad input


@dataclass
class Files:
    dir: Path
    out: Path  # everything a command may write goes under here
    vec: Path
    small_vec: Path
    missing: Path
    malformed: Path
    no_prompt: Path
    non_utf8: Path
    labeled: Path
    forced: Path
    not_vec: Path
    plain_safetensors: Path

    @property
    def out_jsonl(self) -> Path:
        return self.out / "out.jsonl"

    @property
    def out_vec(self) -> Path:
        return self.out / "v.safetensors"

    # Files only a few cases need are written when first asked for.

    def _write(self, name: str, data: str | bytes) -> Path:
        path = self.dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(data, bytes):
            path.write_bytes(data)
        else:
            path.write_text(data, encoding="utf-8")
        return path

    @property
    def non_utf8_yaml(self) -> Path:
        return self._write("bad.yaml", b"model:\n  name: \xff\xfe\n")

    @property
    def list_yaml(self) -> Path:
        return self._write("list.yaml", "- model\n- data\n")

    @property
    def scalar_yaml(self) -> Path:
        return self._write("scalar.yaml", "3\n")

    @property
    def scalar_section_yaml(self) -> Path:
        return self._write("section.yaml", "model: 3\n")

    @property
    def big_seed_yaml(self) -> Path:
        return self._write("seed.yaml", f"generation:\n  seed: {2**70}\n")

    @property
    def non_utf8_csv(self) -> Path:
        return self._write("non_utf8.csv", b"prompt\nfine\n\xff\xfe\n")

    @property
    def big_field_csv(self) -> Path:
        return self._write("big.csv", "prompt\nfine\n" + "a" * 200_000 + "\n")

    @property
    def deep_jsonl(self) -> Path:
        deep = "[" * 100_000 + "]" * 100_000
        return self._write("deep.jsonl", '{"prompt": "a"}\n{"prompt": "b", "x": ' + deep + "}\n")

    def vec_with_meta(self, name: str, **changes: object) -> Path:
        """The shared vector with its metadata fields replaced by ``changes``."""
        from safetensors import safe_open
        from safetensors.torch import save_file

        with safe_open(str(self.vec), framework="pt") as f:
            meta = json.loads((f.metadata() or {})["steerlab"])
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        meta.update(changes)
        path = self.dir / name
        save_file(tensors, str(path), metadata={"steerlab": json.dumps(meta)})
        return path

    @property
    def run_with_truncated_part(self) -> Path:
        """A run directory whose one baseline part file was cut in half."""
        import pandas as pd

        from steerlab.pipelines.reliability.config import PipelineConfig, dump_config

        run = self.dir / "run"
        parts = run / "parts" / "baseline"
        parts.mkdir(parents=True)
        (run / "config.yaml").write_text(dump_config(PipelineConfig()), encoding="utf-8")
        (run / "manifest.json").write_text(json.dumps({"layers": [1]}), encoding="utf-8")
        part = parts / "part-00000-0123456789.parquet"
        pd.DataFrame({"prompt_id": ["a", "b"], "text": ["x", "y"]}).to_parquet(part)
        part.write_bytes(part.read_bytes()[:-40])
        return part


@pytest.fixture
def files(tmp_path: Path, vec_path: Path) -> Files:
    from safetensors.torch import save_file

    small = SteeringVector(directions={1: torch.ones(32)}, model_id="other-model")
    small.save(tmp_path / "small.safetensors")
    (tmp_path / "malformed.jsonl").write_text('{"prompt": "a"}\n{"prompt": \n', encoding="utf-8")
    (tmp_path / "non_utf8.jsonl").write_bytes(b'{"prompt": "a"}\n{"prompt": "\xff\xfe"}\n')
    (tmp_path / "not_vec.txt").write_text("hello, I am not a vector\n", encoding="utf-8")
    save_file({"x": torch.zeros(3)}, str(tmp_path / "plain.safetensors"))
    return Files(
        dir=tmp_path,
        out=tmp_path / "out",
        vec=vec_path,
        small_vec=tmp_path / "small.safetensors",
        missing=tmp_path / "nope.jsonl",
        malformed=tmp_path / "malformed.jsonl",
        no_prompt=write_jsonl(tmp_path / "no_prompt.jsonl", [{"prompt": "a"}, {"id": "x"}]),
        non_utf8=tmp_path / "non_utf8.jsonl",
        labeled=write_jsonl(
            tmp_path / "labeled.jsonl", [{"text": "a", "label": "x"}, {"text": "b", "label": "y"}]
        ),
        forced=write_jsonl(tmp_path / "forced.jsonl", [{"prompt": "How?"}]),
        not_vec=tmp_path / "not_vec.txt",
        plain_safetensors=tmp_path / "plain.safetensors",
    )


Case = Callable[[Files], tuple[list[object], str]]


def run_args(f: Files, command: str = "run") -> list[object]:
    """``steerlab run`` (or a stage command) on tiny-llama, its runs under ``f.out``."""
    return [command, "--fast", "--model", "tiny-llama", "--output-dir", f.out, "--quiet"]


def eq_args(f: Files, questions: Path | None = None) -> list[object]:
    """``steerlab eval-questions`` on tiny-llama, its run directory under ``f.out``."""
    q = questions if questions is not None else _questions(f, "free_form")
    return ["eval-questions", "--model", "tiny-llama", "--questions", q, "--out", f.out / "eq"]


def _questions(f: Files, qtype: str) -> Path:
    text = f"- id: q1\n  type: {qtype}\n  paraphrases: [Hello there]\n  samples_per_paraphrase: 1\n"
    return f._write(f"q_{qtype}.yaml", text)


def _steering(f: Files, extra: str, layer: int = 1) -> Path:
    text = (
        "vectors:\n  - name: v\n    positive_prompt: kind\n    negative_prompt: cruel\n"
        f"    layer: {layer}\n    coefficient: 1.0\n{extra}"
    )
    return f._write(f"steer_{layer}_{len(extra)}.yaml", text)


def fl_args(f: Files) -> list[object]:
    """``steerlab find-layers`` on tiny-llama, writing under ``f.out``."""
    return [
        "find-layers", "--model", "tiny-llama", "--positive", "kind", "--negative", "cruel",
        "--test-prompt", "Tell me", "--target-word", "a", "--out", f.out / "fl",
    ]  # fmt: skip


def _code_tasks(f: Files, lines: str = "") -> Path:
    good = (
        '{"task_id": 1, "text": "Write f(x) returning x.", "code": "def f(x):\\n    return x", '
        '"test_list": ["assert f(1) == 1"], "test_setup_code": ""}\n'
    )
    return f._write(f"code_{len(lines)}.jsonl", good + lines)


def sc_args(f: Files, *vector: object) -> list[object]:
    """``steerlab select-coefficients`` on tiny-llama, its run directory under ``f.out``."""
    vec = list(vector) if vector else ["--vector", f.vec, "--layer", 1]
    return [
        "select-coefficients", "--model", "tiny-llama", "--tasks", _code_tasks(f),
        "--prompt-mode", "completion", "--max-new-tokens", 8, "--out", f.out / "sc", "--quiet",
        *vec,
    ]  # fmt: skip


def _cl_task(f: Files, extra: str = "") -> Path:
    rows = [
        {"id": f"{g}{p}{lab[0]}", "text": f"x{p}", "label": lab, "group": g, "split": sp}
        for g in ("A", "B")
        for sp, p in (("build", 1), ("eval", 2))
        for lab in ("vulnerable", "secure")
    ]
    f._write("cl.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    text = (
        "name: t\nprompt_template: 'Is {text} bad? Answer:'\nlabels: [vulnerable, secure]\n"
        "positive: vulnerable\nanswer_words: {vulnerable: [vulnerable], secure: [secure]}\n"
        "groups: {A: a, B: b}\nintended: {target: vulnerable, direction: raise}\n"
        f"data: cl.jsonl\nchat: false\n{extra}"
    )
    return f._write(f"cl_{len(extra)}.yaml", text)


def cl_args(f: Files, task: Path | None = None) -> list[object]:
    """``steerlab classify`` on tiny-llama, its run directory under ``f.out``."""
    t = task if task is not None else _cl_task(f)
    return ["classify", "--model", "tiny-llama", "--task", t, "--out", f.out / "cl", "--quiet"]


def _unlink(root: Path, rel: str) -> Path:
    (root / rel).unlink()
    return root


def _damage(root: Path, raw: bytes) -> Path:
    (root / "test" / "helping" / "test_dataset_ab.json").write_bytes(raw)
    return root


def _zero_vector(f: Files) -> Path:
    path = f.dir / "zero.safetensors"
    SteeringVector(directions={1: torch.zeros(64)}).save(path)
    return path


def _foreign_baseline(f: Files) -> Path:
    """A baseline.parquet in a run directory whose config names tiny-gpt2."""
    import pandas as pd

    run = f.dir / "other_run"
    run.mkdir()
    (run / "config.yaml").write_text("model:\n  name: tiny-gpt2\n", encoding="utf-8")
    path = run / "baseline.parquet"
    row = {"task_id": "code_0/1", "prompt": "p", "code": "c", "status": "pass", "complexity": 1}
    pd.DataFrame([row]).to_parquet(path)
    return path


def _stamped_baseline(f: Files, stamp: bytes | None) -> Path:
    """A baseline.parquet of the row task, on its own (no run directory around it), with the
    Parquet metadata stamp ``stamp`` (None: none, as steerlab wrote them before stamps)."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    row = {"task_id": "code_0/1", "prompt": "p", "code": "c", "status": "pass", "complexity": 1}
    table = pa.Table.from_pandas(pd.DataFrame([row]), preserve_index=False)
    if stamp is not None:
        table = table.replace_schema_metadata(
            {**(table.schema.metadata or {}), b"steerlab.baseline": stamp}
        )
    path = f.dir / f"baseline_{len(stamp or b'')}.parquet"
    pq.write_table(table, path)
    return path


def _run_yaml(f: Files, text: str) -> list[object]:
    """``steerlab run`` on tiny-llama with a config of ``text``, its runs under ``f.out``."""
    cfg = f._write("c.yaml", f"model:\n  name: tiny-llama\n{text}")
    return ["run", "--config", cfg, "--output-dir", f.out, "--quiet"]


def _run_with_prompts(f: Files, content: str | bytes) -> list[object]:
    """``steerlab run`` whose harm_train prompt file holds ``content``."""
    path = f._write("p.jsonl", content)
    return _run_yaml(f, f"data:\n  harm_train_path: {path}\n")


def beh_args(f: Files, data: Path | str | None = None, *extra: object) -> list[object]:
    """``steerlab behaviours`` on tiny-llama over a small CAA-layout set (or ``data``), its run
    directory under ``f.out``."""
    if data is None:
        data = behaviour_data.write_caa(f.dir / "caa")
    return [
        "behaviours",
        "--model",
        "tiny-llama",
        "--data",
        data,
        "--out",
        f.out / "bh",
        "--layers",
        "0",
        "--quiet",
        *extra,
    ]


def beh_bad_item(f: Files, name: str, **changes: object) -> Path:
    """A CAA-layout set whose first test item has ``changes`` applied."""
    root = behaviour_data.write_caa(f.dir / name, behaviours=("b",))
    target = root / "test" / "b" / "test_dataset_ab.json"
    items = json.loads(target.read_text(encoding="utf-8"))
    items[0] = {**items[0], **changes}
    behaviour_data.dump(target, items)
    return root


SAE_TRAIN = ["sae-train", *MODEL, "--site", "resid_post", "--layer", 1, "--quiet"]
JUDGE = ["--judge-url", "http://127.0.0.1:9/v1", "--judge-model", "m"]

BAD: dict[str, Case] = {
    "missing prompts file": lambda f: (
        [*GEN, "--prompts", f.missing, "-o", f.out_jsonl],
        "nope.jsonl",
    ),
    "malformed jsonl": lambda f: (
        [*GEN, "--prompts", f.malformed, "-o", f.out_jsonl],
        "malformed.jsonl:2",
    ),
    "jsonl line without prompt": lambda f: (
        [*GEN, "--prompts", f.no_prompt, "-o", f.out_jsonl],
        "no_prompt.jsonl:2",
    ),
    "non-utf8 jsonl": lambda f: (
        [*GEN, "--prompts", f.non_utf8, "-o", f.out_jsonl],
        "non_utf8.jsonl",
    ),
    "build-vector malformed jsonl": lambda f: (
        [*BUILD, "--layer", 1, "--prompts", f.malformed, "-o", f.out_vec],
        "malformed.jsonl:2",
    ),
    "layer out of range": lambda f: (
        [*GEN, "--prompt", "hi", "--vector", f.vec, "--layer", 7, "-o", f.out_jsonl],
        "7",
    ),
    "negative layer": lambda f: (
        [*GEN, "--prompt", "hi", "--vector", f.vec, "--layer", -1, "-o", f.out_jsonl],
        "-1",
    ),
    "build-vector layer out of range": lambda f: (
        [*BUILD, "--layer", 4, "--positive", "a", "--negative", "b", "-o", f.out_vec],
        "4",
    ),
    "alpha not a number": lambda f: (
        [*GEN, "--prompt", "hi", "--vector", f.vec, "--alpha", "abc", "-o", f.out_jsonl],
        "--alpha",
    ),
    "alpha nan": lambda f: (
        [*GEN, "--prompt", "hi", "--vector", f.vec, "--alpha", "nan", "-o", f.out_jsonl],
        "alpha",
    ),
    "alpha inf": lambda f: (
        [*GEN, "--prompt", "hi", "--vector", f.vec, "--alpha", "inf", "-o", f.out_jsonl],
        "alpha",
    ),
    "d_model mismatch": lambda f: (
        [*GEN, "--prompt", "hi", "--vector", f.small_vec, "-o", f.out_jsonl],
        "d_model",
    ),
    "info on a text file": lambda f: (["info", f.not_vec], "not_vec.txt"),
    "info on a plain safetensors": lambda f: (["info", f.plain_safetensors], "not a steerlab"),
    "info on a missing file": lambda f: (["info", f.missing], "nope.jsonl"),
    "unknown intervention": lambda f: (
        [*GEN, "--prompt", "hi", "--vector", f.vec, "--intervention", "boost", "-o", f.out_jsonl],
        "boost",
    ),
    "unknown intervention, unsteered": lambda f: (
        [*GEN, "--prompt", "hi", "--intervention", "boost", "-o", f.out_jsonl],
        "boost",
    ),
    "unknown position": lambda f: (
        [*GEN, "--prompt", "hi", "--vector", f.vec, "--position", "middle", "-o", f.out_jsonl],
        "middle",
    ),
    "empty window": lambda f: (
        [*GEN, "--prompt", "hi", "--vector", f.vec, "--position", "window:2:1", "-o", f.out_jsonl],
        "window:2:1",
    ),
    "unknown scale": lambda f: (
        [*GEN, "--prompt", "hi", "--vector", f.vec, "--scale", "huge", "-o", f.out_jsonl],
        "huge",
    ),
    "unknown hook point": lambda f: (
        [*GEN, "--prompt", "hi", "--vector", f.vec, "--hook-point", "mlp_in", "-o", f.out_jsonl],
        "mlp_in",
    ),
    "unknown backend": lambda f: (
        [*GEN, "--prompt", "hi", "--backend", "jax", "-o", f.out_jsonl],
        "jax",
    ),
    "engine arg without a value": lambda f: (
        [*GEN, "--prompt", "hi", "--engine-arg", "tensor_parallel_size", "-o", f.out_jsonl],
        "KEY=VALUE",
    ),
    "engine arg for a backend without an engine": lambda f: (
        [*GEN, "--prompt", "hi", "--engine-arg", "tensor_parallel_size=2", "-o", f.out_jsonl],
        "backend='vllm' only",
    ),
    "build with unknown backend": lambda f: (
        [
            *BUILD,
            "--positive",
            "a",
            "--negative",
            "b",
            "--layer",
            1,
            "--backend",
            "tl",
            "-o",
            f.out_vec,
        ],
        "unknown backend",
    ),
    "hook point names another layer": lambda f: (
        [
            *BUILD,
            "--positive",
            "a",
            "--negative",
            "b",
            "--layer",
            1,
            "--hook-point",
            "blocks.2.hook_mlp_out",
            "-o",
            f.out_vec,
        ],
        "names layer 2",
    ),
    "hook point layer out of range": lambda f: (
        [
            *GEN,
            "--prompt",
            "hi",
            "--vector",
            f.vec,
            "--hook-point",
            "blocks.9.hook_attn_out",
            "-o",
            f.out_jsonl,
        ],
        "out of range",
    ),
    "resid_mid on a parallel-residual model": lambda f: (
        [
            "generate",
            "--model",
            "tiny-neox",
            "--max-new-tokens",
            "4",
            "--prompt",
            "hi",
            "--vector",
            f.vec,
            "--hook-point",
            "resid_mid",
            "-o",
            f.out_jsonl,
        ],
        "parallel-residual",
    ),
    "run id escapes the output directory": lambda f: (
        [
            "run",
            "--fast",
            "--model",
            "tiny-llama",
            "--run-id",
            "../../escape",
            "--output-dir",
            f.out,
        ],
        "--run-id",
    ),
    "absolute run id": lambda f: (
        [
            "run",
            "--fast",
            "--model",
            "tiny-llama",
            "--run-id",
            str(f.dir / "abs"),
            "--output-dir",
            f.out,
        ],
        "--run-id",
    ),
    "split escapes the output directory": lambda f: (
        ["make-prompts", "--from", f.forced, "--split", "../evil", "--out-dir", f.out],
        "--split",
    ),
    "--out is the --prompts file": lambda f: (
        [*GEN, "--prompts", f.forced, "-o", f.forced],
        "is the --prompts file",
    ),
    "--out is the --vector file": lambda f: (
        [*GEN, "--prompt", "hi", "--vector", f.vec, "-o", f.vec],
        "is the --vector file",
    ),
    "empty --prompt": lambda f: ([*GEN, "--prompt", "  ", "-o", f.out_jsonl], "empty"),
    "both --prompt and --prompts": lambda f: (
        [*GEN, "--prompt", "hi", "--prompts", f.forced, "-o", f.out_jsonl],
        "--prompt",
    ),
    "neither --prompt nor --prompts": lambda f: ([*GEN, "-o", f.out_jsonl], "--prompt"),
    "--layer without --vector": lambda f: (
        [*GEN, "--prompt", "hi", "--layer", 1, "-o", f.out_jsonl],
        "--vector",
    ),
    "labeled without --label-a": lambda f: (
        [*BUILD, "--method", "labeled", "--layer", 1, "--prompts", f.labeled, "-o", f.out_vec],
        "--label-a",
    ),
    "forced-prefix last_prompt": lambda f: (
        [
            *BUILD,
            "--method",
            "forced-prefix",
            "--layer",
            1,
            "--prompts",
            f.forced,
            "--position",
            "last_prompt",
            "-o",
            f.out_vec,
        ],
        "last_prompt",
    ),
    "pca with one pair": lambda f: (
        [
            *BUILD,
            "--method",
            "pca",
            "--layer",
            1,
            "--positive",
            "a",
            "--negative",
            "b",
            "-o",
            f.out_vec,
        ],
        "pair",
    ),
    "unknown method": lambda f: (
        [*BUILD, "--method", "magic", "--layer", 1, "--positive", "a", "-o", f.out_vec],
        "magic",
    ),
    "unknown model spec": lambda f: (
        [*GEN[:1], "--model", "./nope-dir-xyz", "--prompt", "hi", "-o", f.out_jsonl],
        "nope-dir-xyz",
    ),
    "unknown device": lambda f: (
        [*GEN, "--prompt", "hi", "--device", "bogus", "-o", f.out_jsonl],
        "bogus",
    ),
    "top-p zero": lambda f: ([*GEN, "--prompt", "hi", "--top-p", 0, "-o", f.out_jsonl], "top_p"),
    "non-utf8 config": lambda f: (
        ["run", "--config", f.non_utf8_yaml, "--output-dir", f.out],
        "bad.yaml: not valid UTF-8",
    ),
    "non-utf8 csv prompt file": lambda f: (
        ["make-prompts", "--out-dir", f.out, "--from", f.non_utf8_csv, "--split", "x"],
        "non_utf8.csv:3",
    ),
    "config is a list, with overrides": lambda f: (
        ["run", "--config", f.list_yaml, "--model", "tiny-llama", "--output-dir", f.out],
        "list.yaml: the config must be a YAML mapping",
    ),
    "config is a scalar, with overrides": lambda f: (
        ["run", "--config", f.scalar_yaml, "--model", "tiny-llama", "--output-dir", f.out],
        "scalar.yaml: the config must be a YAML mapping",
    ),
    "config section is a scalar, with overrides": lambda f: (
        ["run", "--config", f.scalar_section_yaml, "--model", "tiny-llama", "--output-dir", f.out],
        "model must be a mapping",
    ),
    "seed beyond 64 bits": lambda f: (
        [*GEN, "--prompt", "hi", "--seed", 2**70, "-o", f.out_jsonl],
        "seed",
    ),
    "config seed beyond 64 bits": lambda f: (
        ["run", "--config", f.big_seed_yaml, "--output-dir", f.out],
        "generation.seed",
    ),
    "max-new-tokens past the context": lambda f: (
        ["generate", *MODEL, "--prompt", "hi", "--max-new-tokens", 600, "-o", f.out_jsonl],
        "> the model's 512 positions",
    ),
    "long prompt past a gpt2 context": lambda f: (
        [
            "generate",
            "--model",
            "tiny-gpt2",
            "--prompt",
            "hello " * 100,
            "--max-new-tokens",
            100,
            "-o",
            f.out_jsonl,
        ],
        "prompt0",
    ),
    "20 MB prompt": lambda f: (
        [*GEN, "--prompt", "hello world " * 1_750_000, "-o", f.out_jsonl],
        "> the model's 512 positions",
    ),
    "make-prompts beyond the templates": lambda f: (
        ["make-prompts", "--out-dir", f.out, "--n-train", 100_000_000],
        "100000000",
    ),
    "deeply nested json in jsonl": lambda f: (
        [*GEN, "--prompts", f.deep_jsonl, "-o", f.out_jsonl],
        "deep.jsonl:2",
    ),
    "csv field over the csv limit": lambda f: (
        ["make-prompts", "--out-dir", f.out, "--from", f.big_field_csv, "--split", "x"],
        "big.csv:3",
    ),
    "vector raw_norm a string": lambda f: (
        ["info", f.vec_with_meta("raw.safetensors", raw_norm="big")],
        "raw.safetensors: malformed steerlab vector metadata",
    ),
    "vector norm keys not layers": lambda f: (
        [
            *GEN,
            "--prompt",
            "hi",
            "--vector",
            f.vec_with_meta("keys.safetensors", mean_resid_norm={"one": 1.0}),
            "-o",
            f.out_jsonl,
        ],
        "keys.safetensors: malformed steerlab vector metadata",
    ),
    "vector metadata a list": lambda f: (
        ["info", f.vec_with_meta("kind.safetensors", method=["contrast"])],
        "kind.safetensors: malformed steerlab vector metadata",
    ),
    "truncated part file": lambda f: (
        ["report", "--run-dir", f.run_with_truncated_part.parents[2], "--quiet"],
        "part-00000-0123456789.parquet: unreadable part file",
    ),
    "vector is a directory": lambda f: (
        [*GEN, "--prompt", "hi", "--vector", f.dir, "-o", f.out_jsonl],
        "is a directory",
    ),
    "output is a directory": lambda f: (
        [*GEN, "--prompt", "hi", "-o", f.dir],
        f"{f.dir} is a directory",
    ),
    "empty contrast prompt": lambda f: (
        [*BUILD, "--layer", 1, "--positive", "", "--negative", "x", "-o", f.out_vec],
        "--positive prompt 1 is empty",
    ),
    "eval-questions: unknown question type": lambda f: (
        [*eq_args(f, _questions(f, "multiple_choice"))],
        "unknown type 'multiple_choice'",
    ),
    "eval-questions: missing question file": lambda f: (
        [*eq_args(f, f.missing)],
        "nope.jsonl",
    ),
    "eval-questions: malformed question YAML": lambda f: (
        [*eq_args(f, f._write("q_bad.yaml", "- id: [unclosed\n"))],
        "q_bad.yaml:",
    ),
    "eval-questions: unknown steering key": lambda f: (
        [*eq_args(f), "--steering-config", _steering(f, "    colour: red\n")],
        "colour",
    ),
    "eval-questions: steering layer out of range": lambda f: (
        [*eq_args(f), "--steering-config", _steering(f, "", layer=99)],
        "layer 99 is out of range",
    ),
    "eval-questions: steering config missing": lambda f: (
        [*eq_args(f), "--steering-config", f.missing],
        "nope.jsonl",
    ),
    "eval-questions: judge url without model": lambda f: (
        [*eq_args(f), "--judge-url", "http://127.0.0.1:1/v1"],
        "--judge-url and --judge-model go together",
    ),
    "eval-questions: zero samples": lambda f: (
        [*eq_args(f), "--n-per-question", 0],
        "--n-per-question",
    ),
    "find-layers: bad layer list": lambda f: (
        [*fl_args(f), "--layers", "1,x"],
        "comma-separated list of layer indices",
    ),
    "find-layers: layer out of range": lambda f: (
        [*fl_args(f), "--layers", "0,99"],
        "layer 99 is out of range",
    ),
    "select-coefficients: no vector": lambda f: (
        sc_args(f, "--layer", 1),
        "--incorrect-vector) or --vector-from-baseline",
    ),
    "select-coefficients: missing task file": lambda f: (
        [*sc_args(f), "--tasks", f.missing],
        "nope.jsonl",
    ),
    "select-coefficients: malformed task line": lambda f: (
        [*sc_args(f), "--tasks", _code_tasks(f, "{not json\n")],
        ":2",
    ),
    "select-coefficients: task line without test_list": lambda f: (
        [*sc_args(f), "--tasks", _code_tasks(f, '{"task_id": 2, "text": "t", "code": "x = 1"}\n')],
        "test_list",
    ),
    "select-coefficients: vector of another width": lambda f: (
        sc_args(f, "--vector", f.small_vec, "--layer", 1),
        "d_model",
    ),
    "select-coefficients: vector layer out of range": lambda f: (
        sc_args(f, "--vector", f.vec, "--layer", 99),
        "the model has layers",
    ),
    "select-coefficients: bad coefficient list": lambda f: (
        [*sc_args(f), "--coefficients", "1,x"],
        "--coefficients",
    ),
    "select-coefficients: repeated coefficient": lambda f: (
        [*sc_args(f), "--coefficients", "1,1"],
        "coefficients must be distinct",
    ),
    "select-coefficients: bad --select": lambda f: (
        [*sc_args(f), "--select", "foo"],
        "VECTOR=COEFFICIENT",
    ),
    "eval-questions: infinite temperature": lambda f: (
        [*eq_args(f), "--temperature", "inf"],
        "invalid temperature: Input should be a finite number",
    ),
    "eval-questions: top-p 0": lambda f: ([*eq_args(f), "--top-p", "0"], "invalid top_p"),
    "eval-questions: a seed beyond 64 bits": lambda f: (
        [*eq_args(f), "--seed", "99999999999999999999999"],
        "invalid seed",
    ),
    "select-coefficients: --select of a NaN coefficient": lambda f: (
        [*sc_args(f), "--select", "contrast=nan"],
        "invalid override.contrast: Input should be a finite number",
    ),
    "select-coefficients: similarity band outside [0, 1]": lambda f: (
        [*sc_args(f), "--similarity-band", "2,3"],
        "invalid min_similarity",
    ),
    "select-coefficients: NaN similarity band": lambda f: (
        [*sc_args(f), "--similarity-band", "nan,nan"],
        "Input should be a finite number",
    ),
    "select-coefficients: negative layer with --vector-from-baseline": lambda f: (
        sc_args(f, "--vector-from-baseline", "--layer", -1),
        "invalid layer",
    ),
    "select-coefficients: reversed similarity band": lambda f: (
        [*sc_args(f), "--similarity-band", "0.9,0.1"],
        "is reversed",
    ),
    "select-coefficients: --select of a vector the run lacks": lambda f: (
        [*sc_args(f), "--select", "nosuch=1"],
        "names vector 'nosuch', which this run does not have",
    ),
    "select-coefficients: --select of a coefficient off the grid": lambda f: (
        [*sc_args(f), "--select", "contrast=77"],
        "contrast=77 is not in the coefficient grid",
    ),
    "find-layers: strength 0": lambda f: ([*fl_args(f), "--strength", "0"], "strength 0"),
    "classify: --flip-groups naming no group": lambda f: (
        [*cl_args(f), "--flip-groups", " , "],
        "names no vector group",
    ),
    "select-coefficients: unknown prompt mode": lambda f: (
        [*sc_args(f), "--prompt-mode", "poetry"],
        "--prompt-mode 'poetry'",
    ),
    "select-coefficients: missing baseline file": lambda f: (
        [*sc_args(f), "--baseline", f.missing],
        "--baseline",
    ),
    "select-coefficients: baseline that is not parquet": lambda f: (
        [*sc_args(f), "--baseline", f.not_vec],
        "not a readable Parquet file",
    ),
    "classify: missing task file": lambda f: (cl_args(f, f.missing), "nope.jsonl"),
    "classify: unknown task key": lambda f: (cl_args(f, _cl_task(f, "colour: red\n")), "colour"),
    "classify: bad layer list": lambda f: ([*cl_args(f), "--layers", "1,x"], "--layers"),
    "classify: layer out of range": lambda f: (
        [*cl_args(f), "--layers", "99"],
        "layer 99 is out of range",
    ),
    "classify: negative strength": lambda f: (
        [*cl_args(f), "--strengths", "-1"],
        "strengths must be distinct and positive",
    ),
    "classify: logit mode at generated positions": lambda f: (
        [*cl_args(f), "--positions", "generated", "--mode", "logit"],
        "--positions generated with --mode logit",
    ),
    "classify: logit mode at a generated window": lambda f: (
        [*cl_args(f), "--positions", "window:0:8", "--mode", "logit"],
        "cannot change them",
    ),
    "classify: unknown positions": lambda f: (
        [*cl_args(f), "--positions", "middle"],
        "unknown positions 'middle'",
    ),
    "classify: unknown mode": lambda f: ([*cl_args(f), "--mode", "fast"], "mode"),
    "classify: flipping a vector the task lacks": lambda f: (
        [*cl_args(f), "--flip-groups", "A,C"],
        "--flip-groups: 'C' is not a vector of this task",
    ),
    "classify: flip-sign and flip-groups together": lambda f: (
        [*cl_args(f), "--flip-sign", "--flip-groups", "A"],
        "--flip-sign already negates every vector",
    ),
    "classify: unknown scale": lambda f: ([*cl_args(f), "--scale", "huge"], "scale"),
    "unknown executor": lambda f: ([*run_args(f), "--executor", "foo"], "unknown executor 'foo'"),
    "unknown executor, stage command": lambda f: (
        [*run_args(f, "sweep"), "--executor", "foo"],
        "unknown executor 'foo'",
    ),
    "--workers without ray": lambda f: ([*run_args(f), "--workers", 2], "need --executor ray"),
    "--ray-address without ray": lambda f: (
        [*run_args(f), "--ray-address", "x:1"],
        "need --executor ray",
    ),
    "--threads-per-worker without ray": lambda f: (
        [*run_args(f), "--threads-per-worker", 2],
        "need --executor ray",
    ),
    "zero ray workers": lambda f: (
        [*run_args(f), "--executor", "ray", "--workers", 0],
        "--workers must be >= 1, got 0",
    ),
    # starts (and stops) a local Ray cluster: more workers than it has CPUs
    "more ray workers than CPUs": lambda f: (
        [*run_args(f), "--executor", "ray", "--workers", 99],
        "--workers 99: the Ray cluster has",
    ),
    "nothing listens at the ray address": lambda f: (
        [*run_args(f), "--executor", "ray", "--ray-address", "127.0.0.1:1"],
        "cannot start Ray on 127.0.0.1:1",
    ),
    "eval-questions: empty judge model": lambda f: (
        [*eq_args(f), "--judge-url", "http://127.0.0.1:9/v1", "--judge-model", " "],
        "judge model",
    ),
    "eval-questions: judge url ftp": lambda f: (
        [*eq_args(f), "--judge-url", "ftp://x/v1", "--judge-model", "m"],
        "judge url",
    ),
    "eval-questions: judge url without a scheme": lambda f: (
        [*eq_args(f), "--judge-url", "127.0.0.1:8000/v1", "--judge-model", "m"],
        "judge url",
    ),
    "eval-questions: judge url file": lambda f: (
        [*eq_args(f), "--judge-url", "file:///etc/passwd", "--judge-model", "m"],
        "judge url",
    ),
    "eval-questions: empty judge key variable": lambda f: (
        [*eq_args(f), *JUDGE, "--judge-key-env", ""],
        "api_key_env",
    ),
    "behaviours: hook point with a layer": lambda f: (
        beh_args(f, None, "--hook-point", "blocks.1.hook_resid_post"),
        "without a layer",
    ),
    "behaviours: unknown hook point": lambda f: (
        beh_args(f, None, "--hook-point", "nowhere"),
        "nowhere",
    ),
    "behaviours: multipliers without 0": lambda f: (
        beh_args(f, None, "--multipliers", "1,2"),
        "0 among them",
    ),
    "behaviours: open multiplier 1e300": lambda f: (
        beh_args(f, None, "--open-multipliers", "1e300"),
        "1e6",
    ),
    "eval-questions: judge timeout 0": lambda f: (
        [*eq_args(f), *JUDGE, "--judge-timeout", "0"],
        "timeout_s",
    ),
    "eval-questions: judge timeout nan": lambda f: (
        [*eq_args(f), *JUDGE, "--judge-timeout", "nan"],
        "timeout_s",
    ),
    "eval-questions: judge retry budget -1": lambda f: (
        [*eq_args(f), *JUDGE, "--judge-retry-budget", "-1"],
        "max_total_s",
    ),
    "behaviours: judge timeout inf": lambda f: (
        beh_args(f, None, *JUDGE, "--judge-timeout", "inf"),
        "timeout_s",
    ),
    "select-coefficients: prompt and budget beyond the model": lambda f: (
        [*sc_args(f), "--max-new-tokens", 600],
        "positions",
    ),
    "build-vector: prompt longer than the model": lambda f: (
        [*BUILD, "--layer", 1, "--positive", "word " * 700, "--negative", "b", "-o", f.out_vec],
        "positions",
    ),
    "eval-questions: ten million samples": lambda f: (
        eq_args(
            f,
            f._write(
                "q_many.yaml",
                "- id: q1\n  type: free_form\n  paraphrases: [Hi]\n"
                "  samples_per_paraphrase: 10000000\n",
            ),
        ),
        "more than 1,000,000",
    ),
    "eval-questions: --n-per-question 100000000": lambda f: (
        [*eq_args(f), "--n-per-question", "100000000"],
        "more than 1,000,000",
    ),
    "run: empty prompt file": lambda f: (_run_with_prompts(f, ""), "file has no prompts"),
    "run: prompt file not UTF-8": lambda f: (
        _run_with_prompts(
            f, b'{"id": "a", "prompt": "\xff", "meta": {"family": "f", "style": "s"}}\n'
        ),
        "p.jsonl",
    ),
    "run: duplicate prompt ids": lambda f: (
        _run_with_prompts(
            f, '{"id": "a", "prompt": "x", "meta": {"family": "f", "style": "s"}}\n' * 2
        ),
        "duplicate",
    ),
    "run: a prompt line that is not an object": lambda f: (
        _run_with_prompts(
            f, '{"id": "a", "prompt": "x", "meta": {"family": "f", "style": "s"}}\n[1]\n'
        ),
        "p.jsonl:2",
    ),
    "run: identical prefixes": lambda f: (
        _run_yaml(f, "direction:\n  refusal_prefix: ' same'\n  compliance_prefix: ' same '\n"),
        "the same text",
    ),
    "run: empty prefix": lambda f: (
        _run_yaml(f, "sanity_checks:\n  alt_prefixes:\n    refusal_prefix: ''\n"),
        "non-empty",
    ),
    "report on a fresh directory": lambda f: (run_args(f, "report"), "no run directory yet"),
    "sweep on a fresh directory": lambda f: (run_args(f, "sweep"), "no run directory yet"),
    "sanity on a fresh directory": lambda f: (run_args(f, "sanity"), "no run directory yet"),
    "select-coefficients: unknown positions": lambda f: (
        [*sc_args(f), "--positions", "everywhere"],
        "everywhere",
    ),
    "select-coefficients: unknown hook point": lambda f: (
        [*sc_args(f), "--hook-point", "nowhere"],
        "nowhere",
    ),
    "select-coefficients: a zero vector": lambda f: (
        sc_args(f, "--vector", _zero_vector(f), "--layer", 1),
        "is zero",
    ),
    "sae-train: one token": lambda f: (
        [*SAE_TRAIN, "--tokens", 1, "-o", f.out / "sae"],
        "more than the training tokens",
    ),
    "sae-train: batch above the tokens": lambda f: (
        [*SAE_TRAIN, "--tokens", 200, "--batch-size", 5000, "-o", f.out / "sae"],
        "more than the training tokens",
    ),
    "sae-train: out folder holds other files": lambda f: (
        [
            *SAE_TRAIN,
            "--tokens",
            200,
            "--batch-size",
            100,
            "-o",
            f._write("x/notes.txt", "mine").parent,
        ],
        "holds other files (notes.txt)",
    ),
    "select-coefficients: a baseline of another model": lambda f: (
        [*sc_args(f), "--baseline", _foreign_baseline(f)],
        "generated by model 'tiny-gpt2'",
    ),
    "select-coefficients: a baseline from before format stamps": lambda f: (
        [*sc_args(f), "--baseline", _stamped_baseline(f, None)],
        "baseline_0.parquet has no baseline format stamp",
    ),
    "select-coefficients: a baseline of a newer format": lambda f: (
        [
            *sc_args(f),
            "--baseline",
            _stamped_baseline(f, b'{"format": 3, "steerlab_version": "9.0"}'),
        ],
        "is baseline format 3 (steerlab 9.0)",
    ),
    "select-coefficients: a baseline whose stamp is damaged": lambda f: (
        [*sc_args(f), "--baseline", _stamped_baseline(f, b"{not json")],
        "its baseline format stamp is damaged",
    ),
    "select-coefficients: resid_mid on a parallel-residual model": lambda f: (
        [*sc_args(f), "--model", "tiny-neox", "--hook-point", "resid_mid"],
        "'resid_mid' does not exist on tiny-neox",
    ),
    "select-coefficients: a resid_mid vector on a parallel-residual model": lambda f: (
        [
            *sc_args(
                f,
                "--vector",
                f.vec_with_meta("mid.safetensors", hook_point="resid_mid"),
                "--layer",
                1,
            ),
            "--model",
            "tiny-neox",
        ],
        "'resid_mid' does not exist on tiny-neox",
    ),
    "behaviours: no such data": lambda f: (beh_args(f, f.dir / "nope"), "nope"),
    "behaviours: a split file missing": lambda f: (
        beh_args(
            f, _unlink(behaviour_data.write_caa(f.dir / "m"), "test/helping/test_dataset_ab.json")
        ),
        "test_dataset_ab.json: missing",
    ),
    "behaviours: item without an answer": lambda f: (
        beh_args(f, beh_bad_item(f, "k", answer_matching_behavior=None)),
        "item 0",
    ),
    "behaviours: answer not a choice": lambda f: (
        beh_args(f, beh_bad_item(f, "c", answer_matching_behavior="(C)")),
        "(C) is not one",
    ),
    "behaviours: three non-matching answers": lambda f: (
        beh_args(f, beh_bad_item(f, "l", answer_not_matching_behavior=["(A)", "(B)", "(C)"])),
        "lists 3 answers",
    ),
    "behaviours: malformed json": lambda f: (
        beh_args(f, _damage(behaviour_data.write_caa(f.dir / "j"), b'[{"question": ')),
        "malformed JSON",
    ),
    "behaviours: non-utf8 json": lambda f: (
        beh_args(f, _damage(behaviour_data.write_caa(f.dir / "u"), b"[\xff]")),
        "UTF-8",
    ),
    "behaviours: unknown behaviour": lambda f: (
        beh_args(f, None, "--behaviours", "nosuch"),
        "'nosuch' is not in",
    ),
    "behaviours: empty behaviours": lambda f: (
        beh_args(f, None, "--behaviours", ","),
        "names nothing",
    ),
    "behaviours: one multiplier": lambda f: (
        beh_args(f, None, "--multipliers", "1"),
        "multipliers",
    ),
    "behaviours: nan multiplier": lambda f: (
        beh_args(f, None, "--multipliers", "0,nan"),
        "multipliers",
    ),
    "behaviours: generated positions": lambda f: (
        beh_args(f, None, "--steer-positions", "generated"),
        "generated",
    ),
    "behaviours: unknown positions": lambda f: (
        beh_args(f, None, "--steer-positions", "everywhere"),
        "everywhere",
    ),
    "behaviours: layer out of range": lambda f: (beh_args(f, None, "--layers", "9"), "9"),
    "behaviours: unknown shift": lambda f: (beh_args(f, None, "--shifts", "sideways"), "shifts"),
    "behaviours: judge url without model": lambda f: (
        beh_args(f, None, "--judge-url", "http://127.0.0.1:9/v1"),
        "--judge-model",
    ),
    "behaviours: judge url not http": lambda f: (
        beh_args(f, None, "--judge-url", "ftp://x", "--judge-model", "m"),
        "judge",
    ),
    "behaviours: test fraction 1.5": lambda f: (
        beh_args(f, None, "--test-fraction", "1.5"),
        "--test-fraction",
    ),
    "behaviours: hub reference without a file": lambda f: (
        beh_args(f, "hf://datasets/Anthropic/model-written-evals"),
        "hf://datasets/",
    ),
    "behaviours: descriptions with an unknown key": lambda f: (
        beh_args(f, behaviour_data.write_caa(f.dir / "y", info="helping:\n  colour: red\n")),
        "behaviours.yaml",
    ),
    "behaviours: read position": lambda f: (
        beh_args(f, None, "--read-position", "middle"),
        "read_position",
    ),
}


def assert_one_error_line(r: Result, must_contain: str) -> None:
    assert r.code == 2, f"exit {r.code}; stderr:\n{r.err}"
    assert "Traceback" not in r.err
    lines = r.err.strip().splitlines()
    assert len(lines) == 1, f"expected one stderr line, got:\n{r.err}"
    assert lines[0].startswith("error:"), lines[0]
    assert must_contain in lines[0], f"{must_contain!r} not in {lines[0]!r}"


def _snapshot(root: Path, skip: Path) -> dict[str, bytes]:
    """Every input file's bytes (a run directory's ``.lock`` is its lock, not an input)."""
    return {
        str(p): p.read_bytes()
        for p in root.rglob("*")
        if p.is_file()
        and p.name != ".lock"
        and skip not in p.parents
        and p.stat().st_size < 1 << 22
    }


@pytest.mark.parametrize("name", list(BAD))
def test_bad_input(name: str, files: Files, capsys) -> None:
    argv, must_contain = BAD[name](files)
    before = _snapshot(files.dir, files.out)
    r = cli(capsys, *argv)
    assert_one_error_line(r, must_contain)
    written = sorted(p.name for p in files.out.rglob("*")) if files.out.exists() else []
    assert written == [], f"output left behind: {written}"
    assert _snapshot(files.dir, files.out) == before, "an input file was changed or created"


def test_failed_run_keeps_existing_output(files: Files, capsys) -> None:
    files.out.mkdir()
    files.out_jsonl.write_text("old\n", encoding="utf-8")
    r = cli(capsys, *GEN, "--prompt", "hi", "--vector", files.small_vec, "-o", files.out_jsonl)
    assert_one_error_line(r, "d_model")
    assert files.out_jsonl.read_text(encoding="utf-8") == "old\n"
    assert sorted(p.name for p in files.out.iterdir()) == ["out.jsonl"]


# ----------------------------------------------------------------------------- real process


def test_console_script_error_has_no_traceback(tmp_path: Path) -> None:
    script = Path(sys.executable).with_name("steerlab")
    cmd = [str(script)] if script.is_file() else [sys.executable, "-m", "steerlab.cli"]
    out = tmp_path / "o.jsonl"
    proc = subprocess.run(
        [*cmd, "generate", "--model", "./nope-dir-xyz", "--prompt", "hi", "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
    assert "nope-dir-xyz" in lines[0]
    assert proc.stdout == ""
    assert not out.exists()


def test_make_prompts_generates_and_ingests(tmp_path: Path) -> None:
    from steerlab.cli import main
    from steerlab.tasks.prompts import read_prompts

    out = tmp_path / "prompts"
    main(
        [
            "make-prompts",
            "--out-dir",
            str(out),
            "--n-train",
            "5",
            "--n-test",
            "6",
            "--n-benign",
            "7",
            "--seed",
            "3",
        ]
    )
    sizes = {
        s: len(read_prompts(out / f"{s}.jsonl")) for s in ("harm_train", "harm_test", "benign")
    }
    assert sizes == {"harm_train": 5, "harm_test": 6, "benign": 7}
    csv_file = tmp_path / "mine.csv"
    csv_file.write_text("prompt,family\nHow do I pick a lock?,theft\nWrite a poem,writing\n")
    main(["make-prompts", "--out-dir", str(out), "--from", str(csv_file), "--split", "extra"])
    rows = read_prompts(out / "extra.jsonl")
    assert [r.meta["family"] for r in rows] == ["theft", "writing"]
    with pytest.raises(SystemExit) as exc:
        main(["make-prompts", "--out-dir", str(out), "--from", str(csv_file)])
    assert exc.value.code == 2
