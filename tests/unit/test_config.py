"""Pipeline configs: shipped configs and prompt sets are package data found by name; prompt files
inside a config are found relative to the config file, never the working directory."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

import steerlab
from steerlab._util.resources import local_path, resolve, shipped_names
from steerlab.errors import SteerlabError
from steerlab.pipelines.reliability.config import dump_config, load_config, parse_config
from steerlab.pipelines.reliability.run import resolve_config
from steerlab.tasks.prompts import PromptRow, read_prompts, shipped_prompts, write_prompts

PACKAGE = Path(steerlab.__file__).resolve().parent


def _prompts(path: Path, n: int = 3) -> list[PromptRow]:
    rows = [PromptRow(f"p{i}", f"prompt {i}", {"family": "f", "style": "s"}) for i in range(n)]
    write_prompts(rows, path)
    return rows


def _config(path: Path, data: dict[str, object]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({"model": {"name": "tiny-llama"}, "data": data}))
    return path


def test_shipped_files_are_package_data() -> None:
    assert shipped_names("configs") == ("default", "fast")
    assert shipped_names("prompts") == ("benign", "harm_test", "harm_train")
    for kind, name in (("configs", "fast"), ("prompts", "benign")):
        with local_path(kind, name) as path:
            assert path.is_file() and path.resolve().is_relative_to(PACKAGE)
    assert [len(shipped_prompts(s)) for s in ("harm_train", "harm_test", "benign")] == [
        150,
        150,
        200,
    ]


def test_shipped_configs_load_by_name_from_any_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    fast = load_config("fast")
    assert fast.data.max_prompts_per_split == 60
    assert fast.data.harm_train_path == "harm_train"  # a shipped name, stored as such
    assert load_config("default").data.max_prompts_per_split == 200
    assert resolve_config(None, fast=True)[0] == fast
    assert resolve_config(Path("fast"), fast=False)[0] == fast  # what `--config fast` passes
    assert resolve_config(None, fast=False)[0] == load_config("default")


def test_unknown_config_names_the_shipped_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SteerlabError) as info:
        load_config("fats")
    assert str(info.value) == (
        f"{tmp_path / 'fats'}: no such config file (shipped configs: default, fast)"
    )


def test_prompt_paths_are_relative_to_the_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = tmp_path / "project"
    mine = project / "prompts" / "mine.jsonl"
    _prompts(mine)
    cfg_file = _config(
        project / "configs" / "mine.yaml",
        {"harm_train_path": "../prompts/mine.jsonl", "benign_path": "benign"},
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    _prompts(tmp_path / "prompts" / "mine.jsonl", n=1)  # ../prompts/mine.jsonl from elsewhere
    monkeypatch.chdir(elsewhere)

    cfg = load_config(cfg_file)
    assert cfg.data.harm_train_path == str(mine)  # stored absolute; not the decoy
    assert cfg.data.benign_path == "benign"
    assert cfg.data.harm_test_path == "harm_test"  # not given: the shipped default
    monkeypatch.chdir(project)
    assert load_config(Path("configs/mine.yaml")) == cfg  # however the config itself is named
    # what is saved into a run directory means the same from anywhere
    assert parse_config(yaml.safe_load(dump_config(cfg)), "saved") == cfg


def test_user_file_wins_over_a_shipped_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _prompts(tmp_path / "benign", n=2)
    cfg_file = _config(tmp_path / "fast", {"benign_path": "benign"})
    monkeypatch.chdir(tmp_path)
    cfg = load_config("fast")
    assert cfg.model.name == "tiny-llama"
    assert cfg.data.benign_path == str(tmp_path / "benign")
    assert resolve("configs", "fast") == str(cfg_file)


def test_missing_prompt_file_names_config_key_and_path(tmp_path: Path) -> None:
    cfg_file = _config(tmp_path / "c.yaml", {"benign_path": "nope.jsonl"})
    with pytest.raises(SteerlabError) as info:
        load_config(cfg_file)
    assert str(info.value) == (
        f"{cfg_file}: data.benign_path: {tmp_path / 'nope.jsonl'}: no such prompt file "
        "(shipped prompt sets: benign, harm_test, harm_train)"
    )


def test_prompt_path_override_is_relative_to_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = _prompts(tmp_path / "p.jsonl")
    monkeypatch.chdir(tmp_path)
    cfg = load_config("fast", {"data.benign_path": "p.jsonl"})
    assert cfg.data.benign_path == str(tmp_path / "p.jsonl")
    assert read_prompts(cfg.data.benign_path) == rows


def test_backend_and_any_site_in_config() -> None:
    cfg = load_config("fast", {"model.backend": "nnsight", "direction.hook_point": "mlp_out"})
    assert cfg.model.backend == "nnsight" and cfg.direction.hook_point == "mlp_out"
    with pytest.raises(SteerlabError, match="backend"):
        load_config("fast", {"model.backend": "jax"})
    with pytest.raises(SteerlabError, match="hook_point"):
        load_config("fast", {"direction.hook_point": "blocks.3.hook_mlp_out"})
