"""The model card of a steering vector on the Hub: what it was built on and from, its size per
layer, and how to apply it in steerlab and, where the vector allows, in llama.cpp and repeng."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


def _front_matter(model_id: str) -> str:
    lines = ["---", "library_name: steerlab", "tags:"]
    lines += ["- steerlab", "- steering-vector", "- control-vector"]
    if _HUB_ID.match(model_id):
        lines.append(f"base_model: {model_id}")
    lines.append("---")
    return "\n".join(lines)


def _fmt(x: Any) -> str:
    return f"{x:.4g}" if isinstance(x, int | float) else "-"


def model_card(
    meta: Mapping[str, Any], norms: Mapping[int, float], repo_id: str, gguf_file: str | None
) -> str:
    """Markdown with YAML front matter for ``repo_id``; ``meta`` is ``SteeringVector.metadata()``
    and ``norms`` the stored direction's norm per layer."""
    layers = [int(k) for k in meta["layers"]]
    model_id, point = str(meta["model_id"]), str(meta["hook_point"])
    raw, resid = meta.get("raw_norm", {}), meta.get("mean_resid_norm", {})
    rows = "\n".join(
        f"| {k} | {_fmt(norms[k])} | {_fmt(raw.get(str(k)))} | {_fmt(resid.get(str(k)))} |"
        for k in layers
    )
    layer_list = ", ".join(str(k) for k in layers)
    parts = [
        _front_matter(model_id),
        "",
        f"# Steering vector `{repo_id}`",
        "",
        f"A linear steering direction per layer for **{model_id}**, built with "
        f"[steerlab](https://pypi.org/project/steerlab/) {meta.get('steerlab_version', '')}.",
        "",
        "| | |",
        "|---|---|",
        f"| model | `{model_id}` |",
        f"| site | `blocks.L.hook_{point}` (L = each layer below) |",
        f"| layers | {layer_list} |",
        f"| method | `{meta['method']}` |",
        f"| built | {meta.get('created', '')} |",
        f"| inputs sha256 | `{meta.get('prompts_hash') or '-'}` |",
        "",
        "| layer | stored norm | construction norm | mean residual norm |",
        "|---|---|---|---|",
        rows,
        "",
        "The stored direction is the method's raw output (for a mean difference, the difference "
        'itself). `scale="diff"` adds α times it; `scale="absolute"` adds α times its unit '
        'direction; `scale="resid"` α times the mean residual norm.',
        "",
        "## Apply it in steerlab",
        "",
        "```python",
        "import steerlab as sl",
        "",
        f'v = sl.SteeringVector.from_pretrained("{repo_id}")',
        f'model = sl.load_model("{model_id}")',
        'steer = tuple(sl.Intervention(v, layer=k, alpha=4.0, scale="diff") for k in v.layers)',
        'rows = [sl.Row(model.format_prompt("Tell me about your day."), steer)]',
        "print(sl.generate(model, rows)[0].text)",
        "```",
        "",
        f"From the command line: `hf download {repo_id} --local-dir v`, then `steerlab generate "
        f"--model {model_id} --vector v/steering_vector.safetensors --layer {layers[0]} "
        '--alpha 4 --scale diff --prompt "..." --out out.jsonl`. The command\'s `--layer` '
        "values form a grid (one setting per layer); steering every layer at once, as above and "
        "as llama.cpp does, is the Python call.",
    ]
    if gguf_file is not None:
        parts += [
            "",
            "## Apply it in llama.cpp",
            "",
            f"`{gguf_file}` is a llama.cpp control vector: `direction.k` is added to the output "
            "of block k at every position, times the strength.",
            "",
            "```sh",
            f"llama-cli -m MODEL.gguf --control-vector-scaled {gguf_file} 4.0 \\",
            f"  --control-vector-layer-range {min(layers)} {max(layers)}",
            "```",
            "",
            'This equals steerlab\'s `add` with `scale="diff"`, `alpha=4.0`, `positions="all"` '
            "at every layer of the file.",
            "",
            "## Apply it in repeng",
            "",
            "```python",
            "from repeng import ControlModel, ControlVector",
            "",
            f'v = ControlVector.import_gguf("{gguf_file}")',
            f"model = ControlModel(base_model, [{layer_list}])",
            "model.set_control(v, 4.0)",
            "```",
        ]
    else:
        parts += [
            "",
            f"No llama.cpp control vector is included: llama.cpp steers block outputs "
            f"(resid_post) on layers >= 1, and this vector is at {point} on layers {layer_list}.",
        ]
    return "\n".join(parts) + "\n"
