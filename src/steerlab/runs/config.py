"""The base of every workflow's config: strict pydantic, validated once, saved unchanged.

A workflow's config model subclasses :class:`RunConfig`. ``run_id`` names a run, not its content,
so it is left out of :meth:`RunConfig.canonical` (what a reopened run directory is compared
against) and of :meth:`RunConfig.digest` (the default run id's hash).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, TypeVar

import yaml
from pydantic import ValidationError

from steerlab._util.strict import Strict
from steerlab.errors import SteerlabError

C = TypeVar("C", bound="RunConfig")


class RunConfig(Strict):
    run_id: str | None = None

    def canonical(self) -> dict[str, Any]:
        """The config as plain data, without ``run_id``."""
        data = self.model_dump(mode="json")
        data.pop("run_id", None)
        return data

    def digest(self) -> str:
        blob = json.dumps(self.canonical(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:10]

    def dump(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    @classmethod
    def parse(cls: type[C], data: Any, where: str) -> C:
        """Validate plain data (an empty document is the defaults); errors name ``where`` and
        the first bad key."""
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise SteerlabError(f"{where}: the config must be a YAML mapping")
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            raise SteerlabError(format_validation_error(where, e)) from e


def format_validation_error(where: str, err: ValidationError) -> str:
    first = err.errors()[0]
    loc = ".".join(str(x) for x in first["loc"])
    msg = first["msg"]
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
    more = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
    return f"{where}: {loc}: {msg}{more}"


def diff_keys(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two canonical configs."""
    out = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += diff_keys(va, vb, f"{prefix}{k}.")
        elif va != vb:
            out.append(f"{prefix}{k}")
    return out
