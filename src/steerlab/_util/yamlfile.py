"""Reading a user's YAML file once, strictly: a key written twice in one mapping is an error
(the plain loader keeps the last silently), and undecodable bytes, malformed YAML (with its line)
and runaway nesting are one error sentence each, of the caller's error class."""

from __future__ import annotations

from collections.abc import Hashable
from pathlib import Path
from typing import Any

import yaml

from steerlab.errors import SteerlabError


class UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key written twice in one mapping. Merge keys
    (``<<: *base``) may still be overridden by the mapping's own keys."""


def _construct_mapping(loader: UniqueKeyLoader, node: yaml.MappingNode) -> dict[Hashable, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=True)
        if isinstance(key, Hashable) and key in seen:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping",
                node.start_mark,
                f"found the key {key!r} twice",
                key_node.start_mark,
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=True)


UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def read_yaml(file: Path, error: type[SteerlabError] = SteerlabError) -> Any:
    """Parse ``file`` with :class:`UniqueKeyLoader`; failures raise ``error`` naming the file."""
    where = str(file)
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise error(f"{where}: not valid UTF-8 ({e.reason})") from e
    try:
        return yaml.load(text, Loader=UniqueKeyLoader)  # a SafeLoader: no arbitrary objects
    except RecursionError as e:
        raise error(f"{where}: malformed YAML (nested too deeply)") from e
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = " ".join(str(getattr(e, "problem", None) or e).split())
        raise error(f"{where}{line}: malformed YAML ({problem})") from e
