"""Vectors that travel: llama.cpp's control-vector GGUF, repeng's and steering-vectors' objects,
the Hub (without network), the nnsight "last token at every step" position mode, pca's sign
rules. Peer tools run on tiny random models; the embedded-model checks are in tests/slow."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import gguf
import numpy as np
import pytest
import torch
from tests.cli_run import cli

from steerlab.directions.pca import first_component
from steerlab.engine.generate import GenerationConfig, Row, generate
from steerlab.errors import SteerlabError, VectorFileError
from steerlab.interventions import Intervention
from steerlab.models import Model, load_model
from steerlab.vectors import SteeringVector
from steerlab.vectors.gguf_file import STEERLAB_KEY
from steerlab.vectors.hub import CARD_FILE, GGUF_FILE, VECTOR_FILE, write_vector_folder


def _import_repeng() -> Any:
    pytest.importorskip("sklearn")
    if not hasattr(np, "float_"):  # repeng 0.4 annotates with np.float_, which numpy 2 removed
        np.float_ = np.float64  # type: ignore[attr-defined]
    return pytest.importorskip("repeng")


def _same(a: SteeringVector, b: SteeringVector) -> None:
    assert a.layers == b.layers
    for k in a.layers:
        assert torch.equal(a.directions[k], b.directions[k])
    assert a.metadata() == b.metadata()


def _new_tokens(out: torch.Tensor, n_prompt: int, model: Model) -> list[int]:
    """A Hugging Face ``generate`` row's new tokens up to (without) the first EOS."""
    toks = out[0, n_prompt:].tolist()
    for i, t in enumerate(toks):
        if t in model.eos_token_ids:
            return toks[:i]
    return toks


def _write_foreign_gguf(
    path: Path, dirs: dict[int | str, np.ndarray], arch: str = "controlvector"
) -> None:
    """A GGUF written the way repeng's export_gguf and llama.cpp's cvector-generator write it."""
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_string(f"{arch}.model_hint", "llama")
    writer.add_uint32(f"{arch}.layer_count", len(dirs))
    for layer, d in dirs.items():
        writer.add_tensor(f"direction.{layer}", d)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


# ---------------------------------------------------------------- GGUF


def test_gguf_round_trip_loses_nothing(
    tiny_llama: Model, make_vector: Callable, tmp_path: Path
) -> None:
    v = make_vector(tiny_llama, seed=3, layers=[1, 2, 3])
    back = SteeringVector.from_gguf(v.to_gguf(tmp_path / "v.gguf"))
    _same(v, back)
    assert SteeringVector.load(tmp_path / "v.gguf").metadata() == v.metadata()  # by suffix
    (tmp_path / "v.bin").write_bytes((tmp_path / "v.gguf").read_bytes())
    assert SteeringVector.load(tmp_path / "v.bin").metadata() == v.metadata()  # by magic


def test_gguf_has_llama_cpps_layout(tiny_llama: Model, make_vector: Callable, tmp_path: Path):
    v = make_vector(tiny_llama, seed=1, layers=[1, 3])
    reader = gguf.GGUFReader(str(v.to_gguf(tmp_path / "v.gguf")))
    assert reader.get_field("general.architecture").contents() == "controlvector"
    assert reader.get_field("controlvector.model_hint").contents() == v.model_id
    assert reader.get_field("controlvector.layer_count").contents() == 2
    assert json.loads(reader.get_field(STEERLAB_KEY).contents()) == v.metadata()
    tensors = {t.name: t for t in reader.tensors}
    assert set(tensors) == {"direction.1", "direction.3"}
    for k in (1, 3):
        t = tensors[f"direction.{k}"]
        assert t.tensor_type == gguf.GGMLQuantizationType.F32
        assert np.array_equal(np.asarray(t.data), v.directions[k].numpy())


def test_gguf_refuses_what_llama_cpp_would_misapply(
    tiny_llama: Model, make_vector: Callable, tmp_path: Path
) -> None:
    at_mlp = make_vector(tiny_llama, seed=1, layers=[1], hook_point="mlp_out")
    with pytest.raises(SteerlabError, match="mlp_out"):
        at_mlp.to_gguf(tmp_path / "a.gguf")
    with_zero = make_vector(tiny_llama, seed=1, layers=[0, 1])
    with pytest.raises(SteerlabError, match="layer 0"):
        with_zero.to_gguf(tmp_path / "b.gguf")
    assert not list(tmp_path.iterdir())
    for v, name in ((at_mlp, "a.gguf"), (with_zero, "b.gguf")):  # for steerlab readers: exact
        _same(v, SteeringVector.from_gguf(v.to_gguf(tmp_path / name, llama_cpp=False)))


def test_foreign_gguf_steers_as_llama_cpp_adds_it(tiny_llama: Model, tmp_path: Path) -> None:
    """llama.cpp adds strength * direction.k to block k's output at every position: a forward
    hook on decoder layer k doing exactly that gives the tokens steerlab gives."""
    gen = np.random.default_rng(0)
    dirs = {k: gen.standard_normal(tiny_llama.d_model).astype(np.float32) for k in (1, 2)}
    _write_foreign_gguf(tmp_path / "cv.gguf", dirs)
    v = SteeringVector.load(tmp_path / "cv.gguf")
    assert v.hook_point == "resid_post" and v.method == "control_vector"
    assert v.extra["model_hint"] == "llama" and v.layers == (1, 2)
    strength = 2.5
    prompt = "The weather today is"
    ivs = tuple(
        Intervention(v, layer=k, alpha=strength, scale="diff", positions="all") for k in (1, 2)
    )
    (res,) = generate(tiny_llama, [Row(prompt, ivs)], GenerationConfig(max_new_tokens=8))
    fresh = load_model("tiny-llama")
    hooks = []
    for k, d in dirs.items():
        add = torch.from_numpy(d) * strength

        def hook(_m: Any, _i: Any, out: Any, add: torch.Tensor = add) -> Any:
            return out + add if torch.is_tensor(out) else (out[0] + add, *out[1:])

        hooks.append(fresh.hf.model.layers[k].register_forward_hook(hook))
    ids = torch.tensor([fresh.encode(prompt)])
    try:
        with torch.inference_mode():
            out = fresh.hf.generate(input_ids=ids, max_new_tokens=8, do_sample=False)
    finally:
        for h in hooks:
            h.remove()
    assert list(res.token_ids) == _new_tokens(out, ids.shape[1], fresh)
    (plain,) = generate(tiny_llama, [Row(prompt)], GenerationConfig(max_new_tokens=8))
    assert plain.token_ids != res.token_ids


def test_bad_ggufs_are_one_sentence(tmp_path: Path) -> None:
    (tmp_path / "text.gguf").write_text("not a gguf\n")
    _write_foreign_gguf(tmp_path / "model.gguf", {1: np.ones(8, np.float32)}, arch="llama")
    w = gguf.GGUFWriter(str(tmp_path / "other.gguf"), "controlvector")
    w.add_tensor("token_embd.weight", np.ones(8, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    _write_foreign_gguf(tmp_path / "twod.gguf", {1: np.ones((2, 4), np.float32)})
    _write_foreign_gguf(
        tmp_path / "widths.gguf", {1: np.ones(8, np.float32), 2: np.ones(9, np.float32)}
    )
    _write_foreign_gguf(tmp_path / "zeros.gguf", {"01": np.ones(8, np.float32)})
    _write_foreign_gguf(tmp_path / "digits.gguf", {"\u0663": np.ones(8, np.float32)})
    _write_foreign_gguf(tmp_path / "empty.gguf", {1: np.ones(0, np.float32)})
    expected = {
        "zeros.gguf": "'direction.01' is not a direction.<layer> tensor",
        "digits.gguf": "is not a direction.<layer> tensor",
        "empty.gguf": "not one direction",
        "text.gguf": "not a GGUF file",
        "model.gguf": "general.architecture is 'llama'",
        "other.gguf": "token_embd.weight",
        "twod.gguf": "not one direction",
        "widths.gguf": "different widths",
    }
    for name, what in expected.items():
        with pytest.raises(VectorFileError, match=re.escape(what)) as e:
            SteeringVector.load(tmp_path / name)
        assert str(tmp_path / name) in str(e.value) and "\n" not in str(e.value)
    # what llama.cpp also takes: a (1, n) direction, and F16 (recorded: llama.cpp reads only F32)
    _write_foreign_gguf(
        tmp_path / "row.gguf",
        {1: np.ones((1, 8), np.float32), 2: np.full(8, 0.5, np.float16)},
    )
    v = SteeringVector.load(tmp_path / "row.gguf")
    assert v.d_model == 8 and v.extra["stored_as"] == "F16"
    assert torch.equal(v.direction(2), torch.full((8,), 0.5))


def test_cli_export_import_round_trip_and_bad_input(
    tiny_llama: Model, make_vector: Callable, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    v = make_vector(tiny_llama, seed=2, layers=[1, 2])
    v.save(tmp_path / "v.safetensors")
    r = cli(
        capsys, "export-vector", str(tmp_path / "v.safetensors"), "--out", str(tmp_path / "v.gguf")
    )
    assert r.code == 0, r.out + r.err
    r = cli(
        capsys, "import-vector", str(tmp_path / "v.gguf"), "--out", str(tmp_path / "w.safetensors")
    )
    assert r.code == 0, r.out + r.err
    _same(v, SteeringVector.load(tmp_path / "w.safetensors"))
    # a foreign GGUF of the wrong width, or with a layer the model lacks: exit 2, nothing written
    _write_foreign_gguf(tmp_path / "wide.gguf", {1: np.ones(65, np.float32)})
    _write_foreign_gguf(tmp_path / "deep.gguf", {9: np.ones(64, np.float32)})
    for name, what in (("wide.gguf", "d_model 65"), ("deep.gguf", "layer 9")):
        out = tmp_path / f"{name}.safetensors"
        r = cli(
            capsys,
            "import-vector",
            str(tmp_path / name),
            "--model",
            "tiny-llama",
            "--out",
            str(out),
        )
        assert r.code == 2 and what in (r.out + r.err) and "Traceback" not in (r.out + r.err), (
            r.out + r.err
        )
        assert not out.exists()
    r = cli(capsys, "import-vector", str(tmp_path / "model.gguf"), "--out", str(tmp_path / "x.st"))
    assert r.code == 2 and "no such vector file" in (r.out + r.err)
    at_mlp = make_vector(tiny_llama, seed=1, layers=[1], hook_point="mlp_out")
    at_mlp.save(tmp_path / "mlp.safetensors")
    r = cli(
        capsys,
        "export-vector",
        str(tmp_path / "mlp.safetensors"),
        "--out",
        str(tmp_path / "m.gguf"),
    )
    assert r.code == 2 and "--any-site" in (r.out + r.err) and not (tmp_path / "m.gguf").exists()
    r = cli(
        capsys,
        "export-vector",
        str(tmp_path / "mlp.safetensors"),
        "--out",
        str(tmp_path / "m.gguf"),
        "--any-site",
    )
    assert r.code == 0, r.out + r.err
    # an output name that says the other format is refused
    r = cli(capsys, "import-vector", tmp_path / "v.gguf", "--out", tmp_path / "w2.gguf")
    assert r.code == 2 and "names a .gguf file" in r.err and not (tmp_path / "w2.gguf").exists()
    # a foreign vector imported with --model records that model
    _write_foreign_gguf(tmp_path / "ok.gguf", {1: np.ones(64, np.float32)})
    r = cli(
        capsys,
        "import-vector",
        str(tmp_path / "ok.gguf"),
        "--model",
        "tiny-llama",
        "--out",
        str(tmp_path / "ok.st"),
    )
    assert r.code == 0, r.out + r.err
    assert SteeringVector.load(tmp_path / "ok.st").model_id == tiny_llama.name


# ---------------------------------------------------------------- other tools' objects


def test_repeng_round_trip_and_gguf_readers(
    tiny_llama: Model, make_vector: Callable, tmp_path: Path
) -> None:
    repeng = _import_repeng()
    v = make_vector(tiny_llama, seed=4, layers=[1, 2, 3])
    cv = v.to_repeng()
    assert isinstance(cv, repeng.ControlVector) and set(cv.directions) == {1, 2, 3}
    back = SteeringVector.from_repeng(cv, model_id=v.model_id)
    for k in v.layers:
        assert torch.equal(back.directions[k], v.directions[k])
    # repeng reads steerlab's GGUF; steerlab reads repeng's
    read = repeng.ControlVector.import_gguf(str(v.to_gguf(tmp_path / "v.gguf")))
    for k in v.layers:
        assert np.array_equal(read.directions[k], v.directions[k].numpy())
    cv.export_gguf(str(tmp_path / "repeng.gguf"))
    theirs = SteeringVector.load(tmp_path / "repeng.gguf")
    assert theirs.layers == v.layers and theirs.hook_point == "resid_post"
    for k in v.layers:
        assert torch.equal(theirs.directions[k], v.directions[k])


def test_repeng_control_model_equals_steerlab_add(tiny_llama: Model, make_vector: Callable):
    """repeng's ControlModel.set_control(v, coeff) == steerlab add, scale diff, alpha coeff."""
    repeng = _import_repeng()
    v = make_vector(tiny_llama, seed=5, layers=[1, 2])
    coeff, prompt = 3.0, "Once upon a time"
    fresh = load_model("tiny-llama")
    control = repeng.ControlModel(fresh.hf, [1, 2])
    try:
        control.set_control(v.to_repeng(), coeff)
        ids = torch.tensor([fresh.encode(prompt)])
        with torch.inference_mode():
            out = control.generate(input_ids=ids, max_new_tokens=8, do_sample=False)
    finally:
        control.unwrap()
    ivs = tuple(Intervention(v, layer=k, alpha=coeff, scale="diff") for k in (1, 2))
    (res,) = generate(tiny_llama, [Row(prompt, ivs)], GenerationConfig(max_new_tokens=8))
    assert list(res.token_ids) == _new_tokens(out, ids.shape[1], tiny_llama)
    (plain,) = generate(tiny_llama, [Row(prompt)], GenerationConfig(max_new_tokens=8))
    assert plain.token_ids != res.token_ids


def test_steering_vectors_round_trip_and_apply(tiny_llama: Model, make_vector: Callable) -> None:
    sv_lib = pytest.importorskip("steering_vectors")
    for point, layer_type in (("resid_post", "decoder_block"), ("mlp_out", "mlp")):
        v = make_vector(tiny_llama, seed=6, layers=[1, 3], hook_point=point)
        sv = v.to_steering_vectors()
        assert isinstance(sv, sv_lib.SteeringVector) and sv.layer_type == layer_type
        back = SteeringVector.from_steering_vectors(sv, model_id=v.model_id)
        assert back.hook_point == point and back.layers == v.layers
        for k in v.layers:
            assert torch.equal(back.directions[k], v.directions[k])
    with pytest.raises(SteerlabError, match="resid_mid"):
        make_vector(tiny_llama, layers=[1], hook_point="resid_mid").to_steering_vectors()
    with pytest.raises(SteerlabError, match="input_layernorm"):
        SteeringVector.from_steering_vectors(
            sv_lib.SteeringVector({1: torch.ones(64)}, layer_type="input_layernorm")
        )
    # apply(model, multiplier=m) == steerlab add, scale diff, alpha m
    v = make_vector(tiny_llama, seed=7, layers=[1, 2])
    fresh = load_model("tiny-llama")
    prompt = "A short story:"
    ids = torch.tensor([fresh.encode(prompt)])
    with torch.inference_mode(), v.to_steering_vectors().apply(fresh.hf, multiplier=2.0):
        out = fresh.hf.generate(input_ids=ids, max_new_tokens=8, do_sample=False)
    ivs = tuple(Intervention(v, layer=k, alpha=2.0, scale="diff") for k in (1, 2))
    (res,) = generate(tiny_llama, [Row(prompt, ivs)], GenerationConfig(max_new_tokens=8))
    assert list(res.token_ids) == _new_tokens(out, ids.shape[1], tiny_llama)
    (plain,) = generate(tiny_llama, [Row(prompt)], GenerationConfig(max_new_tokens=8))
    assert plain.token_ids != res.token_ids


# ---------------------------------------------------------------- positions, pca sign


@pytest.mark.filterwarnings("ignore:.*was never reached:UserWarning")
def test_last_prompt_and_generated_equals_nnsights_every_step_pattern(
    tiny_llama: Model, make_vector: Callable
) -> None:
    """``for step in tracer.all(): laye(r.out + r.err)[:, -1, :] += a * v`` steers the last prompt
    token and every generated token: steerlab's ``last-prompt-and-generated``."""
    nnsight = pytest.importorskip("nnsight")
    v = make_vector(tiny_llama, seed=8, layers=[1], norm=8.0)
    alpha, prompt, n = 1.5, "Hello there, friend", 8
    fresh = load_model("tiny-llama")
    lm = nnsight.TransformersModel(fresh.hf, tokenizer=fresh.tokenizer, task="text-generation")
    ids = torch.tensor([fresh.encode(prompt)])
    direction = v.direction(1)
    with lm.generate(max_new_tokens=n, do_sample=False) as tracer:
        with tracer.invoke(ids):
            for _step in tracer.all():
                lm.model.layers[1].output[:, -1, :] += alpha * direction
        with tracer.invoke():
            out = tracer.result.save()
    want = _new_tokens(out, ids.shape[1], tiny_llama)
    cfg = GenerationConfig(max_new_tokens=n)
    got = {}
    for mode in ("last-prompt-and-generated", "window:-1:", "last-prompt", "generated"):
        iv = Intervention(v, layer=1, alpha=alpha, scale="diff", positions=mode)
        (res,) = generate(tiny_llama, [Row(prompt, (iv,))], cfg)
        got[mode] = list(res.token_ids)
    assert got["last-prompt-and-generated"] == want == got["window:-1:"]
    assert got["last-prompt"] != want and got["generated"] != want  # the mode matters here


def test_pca_sign_rules() -> None:
    """Nine small differences along +e0 and one large one along -e0: the mean points to -e0,
    the majority of pairs to +e0."""
    diffs = torch.zeros(10, 4)
    diffs[:9, 0] = 1.0
    diffs[9, 0] = -20.0
    diffs[:, 1] = torch.linspace(-0.1, 0.1, 10)
    pc_mean, ev = first_component(diffs, center=False)
    pc_vote, ev_vote = first_component(diffs, center=False, sign="vote")
    assert pc_mean[0] < 0 < pc_vote[0] and ev == ev_vote
    assert torch.equal(pc_mean, -pc_vote)
    with pytest.raises(SteerlabError, match="sign rule"):
        first_component(diffs, center=False, sign="majority")


# ---------------------------------------------------------------- the Hub, without network


class _StubHub:
    """Stands in for HfApi: records the calls and the uploaded folder's files."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.files: dict[str, bytes] = {}

    def create_repo(self, **kw: Any) -> None:
        self.calls.append(("create_repo", kw))

    def create_branch(self, **kw: Any) -> None:
        self.calls.append(("create_branch", kw))

    def upload_folder(self, **kw: Any) -> Any:
        self.calls.append(("upload_folder", kw))
        folder = Path(kw["folder_path"])
        self.files = {p.name: p.read_bytes() for p in folder.iterdir()}
        return SimpleNamespace(commit_url=f"https://hub.test/{kw['repo_id']}/commit/1")


def test_hub_push_card_and_local_snapshot(
    tiny_llama: Model,
    make_vector: Callable,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    v = make_vector(tiny_llama, seed=9, layers=[1, 2])
    stub = _StubHub()
    url = v.push_to_hub("alice/refusal-vector", private=True, api=stub)
    assert url == "https://hub.test/alice/refusal-vector/commit/1"
    (create, create_kw), (upload, upload_kw) = stub.calls
    assert create == "create_repo" and create_kw["private"] is True and create_kw["exist_ok"]
    assert upload == "upload_folder" and upload_kw["repo_id"] == "alice/refusal-vector"
    assert upload_kw["revision"] is None and upload_kw["delete_patterns"] is None
    assert set(stub.files) == {VECTOR_FILE, GGUF_FILE, CARD_FILE}
    card = stub.files[CARD_FILE].decode()
    assert card.startswith("---\nlibrary_name: steerlab\n")
    for text in (
        tiny_llama.name,
        "blocks.L.hook_resid_post",
        'from_pretrained("alice/refusal-vector")',
        "--control-vector-scaled steering_vector.gguf",
        "ControlVector.import_gguf",
        "| 1 | 2 |",
    ):
        assert text in card, text
    # the pushed files, as a downloaded snapshot, load back exactly
    snap = tmp_path / "snapshot"
    snap.mkdir()
    for name, data in stub.files.items():
        (snap / name).write_bytes(data)
    _same(v, SteeringVector.from_pretrained(snap))
    (snap / VECTOR_FILE).unlink()
    _same(v, SteeringVector.from_pretrained(snap))  # the GGUF alone gives the same vector
    # a vector llama.cpp cannot apply gets no GGUF and a card that says why
    folder = tmp_path / "mlp"
    folder.mkdir()
    names = write_vector_folder(
        make_vector(tiny_llama, layers=[1], hook_point="mlp_out"), folder, "a/b"
    )
    assert names == [VECTOR_FILE, CARD_FILE]
    assert "No llama.cpp control vector" in (folder / CARD_FILE).read_text()
    # pushed to a branch: the branch is created; a stale GGUF of an earlier push is deleted
    stub = _StubHub()
    make_vector(tiny_llama, layers=[1], hook_point="mlp_out").push_to_hub(
        "alice/v", revision="v2", api=stub
    )
    assert [c for c, _ in stub.calls] == ["create_repo", "create_branch", "upload_folder"]
    assert stub.calls[1][1]["branch"] == "v2" and stub.calls[2][1]["revision"] == "v2"
    assert stub.calls[2][1]["delete_patterns"] == [GGUF_FILE]
    assert set(stub.files) == {VECTOR_FILE, CARD_FILE}
    # offline: a repo id fails in one sentence; a folder without a vector too
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    with pytest.raises(VectorFileError, match="offline") as e:
        SteeringVector.from_pretrained("alice/not-cached")
    assert "\n" not in str(e.value)
    with pytest.raises(SteerlabError, match="offline"):
        v.push_to_hub("alice/refusal-vector")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "README.md").write_text("hi")
    with pytest.raises(VectorFileError, match="no steerlab vector"):
        SteeringVector.from_pretrained(empty)
    r = cli(capsys, "import-vector", str(empty), "--out", str(tmp_path / "e.safetensors"))
    assert r.code == 2 and "no steerlab vector" in (r.out + r.err)
    assert not (tmp_path / "e.safetensors").exists()
