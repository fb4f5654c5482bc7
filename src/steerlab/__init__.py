"""steerlab: build linear steering directions, steer batched generation, measure the effects.

The everyday names live here::

    import steerlab as sl

    model = sl.load_model("embedded")              # or sl.wrap(hf_model, tokenizer), a
                                                   # HookedTransformer, an nnsight LanguageModel
    v = sl.contrast(model, [("I love this.", "I hate this.")], layers=[6]).vector
    rows = [sl.Row(model.format_prompt("Tell me about your day."),
                   (sl.Intervention(v, layer=6, alpha=4.0, scale="diff"),))]
    print(sl.generate(model, rows)[0].text)

Imports are lazy, so ``import steerlab`` stays cheap (torch and transformers load on first use).
"""

from __future__ import annotations

import importlib
from typing import Any

from steerlab._util.version import __version__

_NAMES = {
    "load_model": "steerlab.models",
    "wrap": "steerlab.models",
    "Model": "steerlab.models",
    "SteeringVector": "steerlab.vectors",
    "contrast": "steerlab.directions",
    "single": "steerlab.directions",
    "forced_prefix": "steerlab.directions",
    "labeled": "steerlab.directions",
    "pca": "steerlab.directions",
    "record": "steerlab.directions",
    "Intervention": "steerlab.interventions",
    "compile_plan": "steerlab.engine.plan",
    "steering": "steerlab.engine.handle",
    "generate": "steerlab.engine.generate",
    "Row": "steerlab.engine.generate",
    "RowResult": "steerlab.engine.generate",
    "GenerationConfig": "steerlab.engine.generate",
    "Site": "steerlab.sites",
    "parse_site": "steerlab.sites",
    "SteerlabError": "steerlab.errors",
    "create_contrast_vector": "steerlab.shortcuts",
    "generate_with_steering": "steerlab.shortcuts",
    "find_best_layers_for_steering": "steerlab.shortcuts",
}

__all__ = ["__version__", *_NAMES]


def __getattr__(name: str) -> Any:
    module = _NAMES.get(name)
    if module is None:
        raise AttributeError(f"module 'steerlab' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
