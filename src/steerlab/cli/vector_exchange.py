"""``steerlab export-vector``, ``import-vector`` and ``push-vector``: steering vectors to and from
llama.cpp's control-vector GGUF and the Hugging Face Hub."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer

from steerlab.cli.options import BackendOpt, DeviceOpt, DtypeOpt, EngineArgOpt, model_from_options
from steerlab.errors import SteerlabError

FORMATS = ("gguf", "safetensors")


def register(app: typer.Typer) -> None:
    """Add this module's commands to ``app``."""
    app.command("export-vector")(export_vector_cmd)
    app.command("import-vector")(import_vector_cmd)
    app.command("push-vector")(push_vector_cmd)


def export_vector_cmd(
    vector: Annotated[Path, typer.Argument(help="a steering vector (.safetensors or .gguf)")],
    out: Annotated[Path, typer.Option("--out", "-o", help="the file to write")],
    fmt: Annotated[str, typer.Option("--format", help="gguf | safetensors")] = "gguf",
    any_site: Annotated[
        bool,
        typer.Option(
            "--any-site",
            help="gguf: write a vector llama.cpp would misapply or refuse (another site than "
            "resid_post: for steerlab only; a layer-0 direction: steerlab and repeng)",
        ),
    ] = False,
) -> None:
    """Write a vector as a llama.cpp control vector (GGUF) or as steerlab's safetensors.

    llama.cpp adds direction k to block k's output at every position, times the strength of
    --control-vector-scaled: steerlab's add with --scale diff and --alpha the strength."""
    from steerlab._util.pathnames import check_not_input
    from steerlab.vectors import SteeringVector

    if fmt not in FORMATS:
        raise SteerlabError(f"unknown --format {fmt!r}: use one of {', '.join(FORMATS)}")
    _check_suffix(out, fmt)
    check_not_input(out, {"vector": vector})
    vec = SteeringVector.load(vector)
    if fmt == "gguf":
        vec.to_gguf(out, llama_cpp=not any_site)
    else:
        vec.save(out)
    layers = ", ".join(str(k) for k in vec.layers)
    typer.echo(f"wrote {out} ({fmt}: {vec.hook_point} on layers {layers}, d_model {vec.d_model})")


def import_vector_cmd(
    source: Annotated[
        str,
        typer.Argument(
            help="a control-vector .gguf, a folder holding a vector, or a Hub repo id owner/name"
        ),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="output .safetensors")],
    revision: Annotated[str | None, typer.Option(help="Hub revision (branch, tag, commit)")] = None,
    filename: Annotated[
        str | None, typer.Option(help="the file inside a folder or repo holding several")
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            help="check that the vector fits this model (width, layers) and record it as the "
            "vector's model when the source names none"
        ),
    ] = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    backend: BackendOpt = "hf",
    engine_arg: EngineArgOpt = None,
) -> None:
    """Read a vector (llama.cpp, repeng or steerlab GGUF; a folder; a Hub repo) and save it as
    a steerlab .safetensors vector."""
    from steerlab._util.pathnames import check_not_input
    from steerlab.vectors import SteeringVector

    local = Path(source)
    _check_suffix(out, "safetensors")
    check_not_input(out, {"source": local if local.is_file() else None})
    vec = SteeringVector.from_pretrained(source, revision=revision, filename=filename)
    if model is not None:
        m = model_from_options(model, device, dtype, backend=backend, engine_arg=engine_arg)
        vec.check_d_model(m.d_model, source)
        for layer in vec.layers:
            if not 0 <= layer < m.n_layers:
                raise SteerlabError(
                    f"{source} has a direction for layer {layer}, but {m.name} has "
                    f"{m.n_layers} layers (0..{m.n_layers - 1})"
                )
        if vec.model_id == "unknown":
            vec = replace(vec, model_id=m.name)
    vec.save(out)
    layers = ", ".join(str(k) for k in vec.layers)
    typer.echo(
        f"wrote {out} ({vec.method}: {vec.hook_point} on layers {layers}, d_model {vec.d_model})"
    )


def _check_suffix(out: Path, fmt: str) -> None:
    """Refuse an output name that says another format than the one written."""
    other = {"gguf": ".safetensors", "safetensors": ".gguf"}[fmt]
    if out.suffix.lower() == other:
        raise SteerlabError(f"--out {out} names a {other} file, but this writes {fmt}")


def push_vector_cmd(
    vector: Annotated[Path, typer.Argument(help="a steering vector (.safetensors or .gguf)")],
    repo_id: Annotated[str, typer.Option("--repo-id", help="the Hub model repo, owner/name")],
    revision: Annotated[str | None, typer.Option(help="branch to commit to")] = None,
    private: Annotated[
        bool | None, typer.Option("--private/--public", help="visibility of a new repo")
    ] = None,
    message: Annotated[str | None, typer.Option(help="commit message")] = None,
) -> None:
    """Upload a vector to the Hugging Face Hub with a model card (and a llama.cpp GGUF when
    llama.cpp can apply it). The token comes from HF_TOKEN or `hf auth login`."""
    from steerlab.vectors import SteeringVector
    from steerlab.vectors.hub import check_repo_id

    check_repo_id(repo_id)
    vec = SteeringVector.load(vector)
    url = vec.push_to_hub(repo_id, revision=revision, private=private, commit_message=message)
    typer.echo(f"pushed {vector} to {repo_id}: {url}")
