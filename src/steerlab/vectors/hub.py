"""Steering vectors on the Hugging Face Hub: a repository (or a downloaded snapshot of one) holds
``steering_vector.safetensors``, ``steering_vector.gguf`` when llama.cpp can apply the vector,
and a model card. Offline, fetching fails in one sentence (a snapshot already in the local Hub
cache still loads)."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Any, Protocol

from steerlab._util.hub import hub_offline, hub_reachable
from steerlab.errors import SteerlabError, VectorFileError
from steerlab.vectors.card import model_card
from steerlab.vectors.gguf_file import is_gguf

VECTOR_FILE = "steering_vector.safetensors"
GGUF_FILE = "steering_vector.gguf"
CARD_FILE = "README.md"
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
#: what a fetch downloads without filename=: the files push_to_hub writes, nothing else (a model
#: repository named by mistake costs no download of its weights)
_PATTERNS = [VECTOR_FILE, GGUF_FILE, CARD_FILE]


class HubVector(Protocol):
    """What a vector must offer to be pushed (``SteeringVector`` does)."""

    def save(self, path: str | Path) -> Path: ...
    def to_gguf(self, path: str | Path, *, llama_cpp: bool = True) -> Path: ...
    def llama_cpp_problem(self) -> str | None: ...
    def metadata(self) -> dict[str, Any]: ...
    def norm(self, layer: int) -> float: ...


def check_repo_id(repo_id: str) -> str:
    if not isinstance(repo_id, str) or not _REPO_ID.match(repo_id) or ".." in repo_id:
        raise SteerlabError(f"{repo_id!r} is not a Hub repository id (owner/name)")
    return repo_id


def write_vector_folder(vector: HubVector, folder: Path, repo_id: str) -> list[str]:
    """Write the repository's files into ``folder``; returns their names."""
    vector.save(folder / VECTOR_FILE)
    names = [VECTOR_FILE]
    gguf_ok = vector.llama_cpp_problem() is None
    if gguf_ok:
        vector.to_gguf(folder / GGUF_FILE)
        names.append(GGUF_FILE)
    meta = vector.metadata()
    norms = {int(k): vector.norm(int(k)) for k in meta["layers"]}
    card = model_card(meta, norms, repo_id, gguf_file=GGUF_FILE if gguf_ok else None)
    (folder / CARD_FILE).write_text(card, encoding="utf-8")
    names.append(CARD_FILE)
    return names


def push_vector_folder(
    vector: HubVector,
    repo_id: str,
    *,
    revision: str | None,
    private: bool | None,
    token: str | None,
    commit_message: str | None,
    api: Any,
) -> str:
    """Create the model repository if needed and upload the vector's files in one commit."""
    check_repo_id(repo_id)
    if api is None:
        if hub_offline() or not hub_reachable():
            raise SteerlabError(
                f"cannot push to {repo_id}: the Hugging Face Hub is not reachable from here "
                "(offline); save the vector and upload it from a machine that is online"
            )
        from huggingface_hub import HfApi

        api = HfApi(token=token)
    with tempfile.TemporaryDirectory(prefix="steerlab-hub-") as tmp:
        folder = Path(tmp)
        names = write_vector_folder(vector, folder, repo_id)
        try:
            api.create_repo(repo_id=repo_id, repo_type="model", private=private, exist_ok=True)
            if revision is not None:
                api.create_branch(repo_id=repo_id, branch=revision, exist_ok=True)
            info = api.upload_folder(
                repo_id=repo_id,
                repo_type="model",
                folder_path=str(folder),
                revision=revision,
                commit_message=commit_message or "Upload a steerlab steering vector",
                # a GGUF left from an earlier push would contradict the new card
                delete_patterns=None if GGUF_FILE in names else [GGUF_FILE],
            )
        except Exception as e:  # the hub client raises many types; each becomes one sentence
            raise SteerlabError(f"cannot push to {repo_id}: {_one_line(e)}") from e
    return str(getattr(info, "commit_url", info))


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def _snapshot(repo_id: str, revision: str | None, filename: str | None) -> Path:
    from huggingface_hub import snapshot_download

    check_repo_id(repo_id)
    local_only = hub_offline() or not hub_reachable()
    try:
        return Path(
            snapshot_download(
                repo_id=repo_id,
                revision=revision,
                allow_patterns=[filename] if filename is not None else _PATTERNS,
                local_files_only=local_only,
            )
        )
    except Exception as e:  # the hub client raises many types; each becomes one sentence
        if local_only:
            raise VectorFileError(
                f"cannot fetch {repo_id} from the Hugging Face Hub: it is not reachable from here "
                "(offline) and the repository is not in the local Hub cache; download it "
                "elsewhere and pass the local directory"
            ) from e
        raise VectorFileError(f"cannot fetch {repo_id}: {_one_line(e)}") from e


def vector_file_in(
    source: str | Path, *, revision: str | None = None, filename: str | None = None
) -> Path:
    """The vector file of a local directory or a Hub repository (fetched when needed)."""
    local = Path(source)
    if local.is_file():
        if revision is not None or filename is not None:
            raise SteerlabError(
                f"{local} is a file: revision= and filename= are for folders and Hub repositories"
            )
        return local
    if local.is_dir():
        folder, where = local, str(local)
        if revision is not None:
            raise SteerlabError(f"revision= is for Hub repositories; {local} is a local directory")
    elif (
        isinstance(source, Path)
        or local.exists()
        or local.suffix.lower() in (".gguf", ".safetensors")
        or not _REPO_ID.match(str(source))
    ):
        raise VectorFileError(
            f"{source}: no such vector file or folder (a Hub repository is named owner/name)"
        )
    else:
        folder, where = _snapshot(str(source), revision, filename), str(source)
        if filename is None and not any((folder / n).is_file() for n in (VECTOR_FILE, GGUF_FILE)):
            raise VectorFileError(
                f"{where}: no {VECTOR_FILE} or {GGUF_FILE} (the files push_to_hub writes); name "
                "the repository's vector file with filename="
            )
    if filename is not None:
        path = folder / filename
        if Path(filename).is_absolute() or ".." in Path(filename).parts or not path.is_file():
            raise VectorFileError(f"{where}: no file {filename!r}")
        return path
    return _pick(folder, where)


def _pick(folder: Path, where: str) -> Path:
    if (folder / VECTOR_FILE).is_file():
        return folder / VECTOR_FILE
    candidates = sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and ((p.suffix == ".safetensors" and _is_steerlab(p)) or _is_cvec(p))
    )
    safetensors = [p for p in candidates if p.suffix == ".safetensors"]
    pool = safetensors or candidates
    if not pool:
        raise VectorFileError(
            f"{where}: no steerlab vector (.safetensors) or control-vector (.gguf) file"
        )
    if len(pool) > 1:
        names = ", ".join(p.name for p in pool)
        raise VectorFileError(f"{where}: several vector files ({names}); pick one with filename=")
    return pool[0]


def _is_steerlab(path: Path) -> bool:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return "steerlab" in (f.metadata() or {})
    except (SafetensorError, OSError, ValueError):
        return False


def _is_cvec(path: Path) -> bool:
    from steerlab.vectors.gguf_file import read_control_vector

    if not is_gguf(path):
        return False
    try:
        read_control_vector(path)
    except VectorFileError:
        return False
    return True
