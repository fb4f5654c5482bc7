"""Reading a steering config: YAML in, a validated :class:`SteeringConfigFile` out, or one
sentence naming the file, the vector and the key; and the check of its layers against a model."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from steerlab._util.resources import local_path, resolve
from steerlab._util.yamlfile import read_yaml
from steerlab.errors import SteerlabError
from steerlab.steering_config.spec import VECTOR_KEYS, SteeringConfigError, SteeringConfigFile
from steerlab.vectors import SteeringVector


def parse_steering_config(
    data: Any, where: str = "<steering config>", base: Path | None = None
) -> SteeringConfigFile:
    """Validate already-parsed YAML ``data``; errors name ``where``, the vector and the key.

    A relative ``vector_file`` is taken from ``base`` (default: the working directory) and
    stored absolute; the file is read to check that it is a vector with a direction at
    ``layer``.
    """
    if data is None:
        raise SteeringConfigError(
            f"{where}: the file is empty: write `vectors: []` for no steering"
        )
    if not isinstance(data, dict):
        raise SteeringConfigError(
            f"{where}: a steering config must be a mapping with a `vectors` list, got {_kind(data)}"
        )
    raw = data.get("vectors")
    try:
        cfg = SteeringConfigFile.model_validate(data)
    except ValidationError as e:
        raise SteeringConfigError(_format_error(where, e, raw)) from e
    specs = list(cfg.vectors)
    for i, spec in enumerate(specs):
        if spec.vector_file is not None:
            label = f"{where}: {cfg.label(i)}"
            path = _vector_path(spec.vector_file, base, label)
            vec = load_vector(path, f"{label}: vector_file")
            if spec.layer not in vec.layers:
                raise SteeringConfigError(
                    f"{label}: vector_file {path} has no direction at layer {spec.layer} "
                    f"(it has layers {list(vec.layers)})"
                )
            specs[i] = spec.model_copy(update={"vector_file": path})
    cfg = cfg.model_copy(update={"vectors": tuple(specs)})
    cfg._source = where
    return cfg


def load_steering_config(
    ref: str | os.PathLike[str], base: Path | None = None
) -> SteeringConfigFile:
    """Read and validate a steering config file, or a shipped one by name (``smollm2_example``).

    A relative ``ref`` is taken from ``base`` (default: the working directory); ``vector_file``
    paths inside it from the file's own directory.
    """
    with local_path("steering", resolve("steering", ref, base)) as file:
        return parse_steering_config(_read_yaml(file), str(file), file.parent)


def _vector_path(ref: str, base: Path | None, label: str) -> str:
    """``ref`` as an absolute path (a relative one taken from ``base``, default the working
    directory); a missing file is an error naming the vector."""
    path = Path(ref).expanduser()
    if not path.is_absolute():
        path = (base or Path.cwd()) / path
    path = Path(os.path.abspath(path))  # without the ../ a user wrote
    if not path.is_file():
        raise SteeringConfigError(f"{label}: vector_file: {path}: no such vector file")
    return str(path)


def load_vector(path: str, where: str, d_model: int | None = None) -> SteeringVector:
    """The saved vector at ``path`` (checked against ``d_model`` when given); an error prefixed
    with ``where``."""
    try:
        return SteeringVector.load(path, d_model)
    except SteerlabError as e:
        raise SteeringConfigError(f"{where}: {e}") from e


def _label(raw: Any, index: int) -> str:
    name = None
    if isinstance(raw, list) and index < len(raw) and isinstance(raw[index], dict):
        name = raw[index].get("name")
    return f"vectors[{index}] ({name!r})" if isinstance(name, str) else f"vectors[{index}]"


def _format_error(where: str, err: ValidationError, raw: Any) -> str:
    first = err.errors()[0]
    loc = list(first["loc"])
    msg = str(first["msg"]).removeprefix("Value error, ")
    more = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
    head = where
    if len(loc) >= 2 and loc[0] == "vectors" and isinstance(loc[1], int):
        head = f"{where}: {_label(raw, loc[1])}"
        loc = loc[2:]
    if first["type"] == "extra_forbidden":
        key = loc[-1] if loc else "?"
        known = VECTOR_KEYS if head != where else ("vectors",)
        return f"{head}: unknown key {key!r} (known keys: {', '.join(known)}){more}"
    if first["type"] == "missing" and loc:
        return f"{head}: missing key {'.'.join(str(x) for x in loc)!r}{more}"
    at = ".".join(str(x) for x in loc)
    return f"{head}: {at}: {msg}{more}" if at else f"{head}: {msg}{more}"


def _kind(value: Any) -> str:
    return "a list" if isinstance(value, list) else f"the scalar {value!r}"[:60]


def _read_yaml(file: Path) -> Any:
    return read_yaml(file, SteeringConfigError)


# ----------------------------------------------------------------------------- model checks


def check_against_model(cfg: SteeringConfigFile, n_layers: int) -> None:
    """Raise one clear error for the first vector whose layer a model of ``n_layers`` lacks."""
    for i, spec in enumerate(cfg.vectors):
        if spec.layer >= n_layers:
            raise SteeringConfigError(
                f"{cfg.source}: {cfg.label(i)}: layer {spec.layer} is out of range: the model "
                f"has {n_layers} layers (valid: 0..{n_layers - 1})"
            )
