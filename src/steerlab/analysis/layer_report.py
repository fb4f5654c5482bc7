"""What the layer finder measured: one :class:`LayerScore` per layer, and the
:class:`LayerReport` holding them in rank order, with its text table, CSV and plot.

matplotlib is imported only inside :meth:`LayerReport.plot`, so importing this module stays light.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from steerlab._util.io import atomic_path
from steerlab.errors import SteerlabError
from steerlab.interventions import Intervention
from steerlab.vectors import SteeringVector

CSV_COLUMNS = ("rank", "layer", "effect", "cost", "effect_per_cost", "resid_norm")


@dataclass(frozen=True)
class LayerScore:
    """One layer's result.

    ``effect``: mean rise of ``log P(target)`` (nats) over the test prompts; ``cost``: mean
    ``KL(unsteered ‖ steered)`` (nats) over the neutral prompts; ``effect_per_cost``:
    ``effect / cost`` (±inf when only the cost is 0, nan when both are); ``rank``: 1 = best;
    ``resid_norm``: the mean residual norm at the layer, so the added vector's norm was
    ``strength × resid_norm``.
    """

    layer: int
    effect: float
    cost: float
    effect_per_cost: float
    rank: int
    resid_norm: float

    def as_dict(self) -> dict[str, int | float]:
        return {name: getattr(self, name) for name in CSV_COLUMNS}


@dataclass(frozen=True)
class LayerReport:
    """What :func:`~steerlab.analysis.layer_finder.find_layers` measured. ``table`` is ordered by
    rank (best first).

    ``vector`` holds the direction used at each scored layer; its ``mean_resid_norm`` is the
    residual norm measured on the test and neutral prompts, so :meth:`intervention` reproduces a
    row's steering exactly (``scale="resid"``, ``alpha=strength``).
    """

    table: tuple[LayerScore, ...]
    vector: SteeringVector
    target_ids: tuple[int, ...]
    target_word: str | None
    strength: float
    hook_point: str
    positions: str
    rank_by: str
    baseline_logp: float
    test_prompts: tuple[str, ...]
    neutral_prompts: tuple[str, ...]

    @property
    def best(self) -> LayerScore:
        return self.table[0]

    @property
    def layers(self) -> list[int]:
        """Layers in rank order."""
        return [row.layer for row in self.table]

    def score(self, layer: int) -> LayerScore:
        for row in self.table:
            if row.layer == layer:
                return row
        raise SteerlabError(f"layer {layer} was not scored (scored: {sorted(self.layers)})")

    def intervention(self, layer: int) -> Intervention:
        """The intervention this report applied at ``layer`` (to steer with the winner)."""
        self.score(layer)
        return Intervention(
            self.vector,
            layer,
            "add",
            alpha=self.strength,
            hook_point=self.hook_point,
            positions=self.positions,
            scale="resid",
        )

    def format(self) -> str:
        """The table as aligned text, best layer first."""
        what = self.target_word if self.target_word is not None else list(self.target_ids)
        lines = [
            f"target {what!r} (token ids {list(self.target_ids)}), strength {self.strength:g} "
            f"x mean residual norm at {self.hook_point}, ranked by {self.rank_by}; "
            f"unsteered log P(target) = {self.baseline_logp:.4f}",
            f"{'rank':>4}  {'layer':>5}  {'effect':>10}  {'cost':>10}  {'effect/cost':>11}  "
            f"{'resid norm':>10}",
        ]
        for r in self.table:
            lines.append(
                f"{r.rank:>4}  {r.layer:>5}  {r.effect:>10.4f}  {r.cost:>10.4f}  "
                f"{r.effect_per_cost:>11.4g}  {r.resid_norm:>10.4g}"
            )
        return "\n".join(lines)

    def to_csv(self, path: str | Path) -> Path:
        """Write the table (columns :data:`CSV_COLUMNS`, rank order) atomically."""
        path = Path(path)
        with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
            writer.writeheader()
            for row in self.table:
                writer.writerow({k: repr(v) for k, v in row.as_dict().items()})
        return path

    def plot(self, path: str | Path) -> Path:
        """Effect (top) and cost (bottom) per layer as a PNG, the best layer marked."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        path = Path(path)
        rows = sorted(self.table, key=lambda r: r.layer)
        xs = [r.layer for r in rows]
        fig = Figure(figsize=(7.0, 5.0), layout="constrained")
        FigureCanvasAgg(fig)
        ax_effect, ax_cost = fig.subplots(2, 1, sharex=True)
        ax_effect.plot(xs, [r.effect for r in rows], marker="o", color="C0")
        ax_effect.axhline(0.0, color="0.6", linewidth=0.8)
        ax_effect.set_ylabel("effect: Δ log P(target)")
        ax_cost.plot(xs, [r.cost for r in rows], marker="s", color="C3")
        ax_cost.set_ylabel("cost: KL on neutral prompts")
        ax_cost.set_xlabel(f"layer ({self.hook_point})")
        for ax in (ax_effect, ax_cost):
            ax.axvline(self.best.layer, color="0.3", linestyle=":", linewidth=1.0)
            ax.grid(alpha=0.3)
        what = self.target_word if self.target_word is not None else list(self.target_ids)
        fig.suptitle(
            f"steering toward {what!r}: strength {self.strength:g} × mean residual norm; "
            f"best layer {self.best.layer} (by {self.rank_by})",
            fontsize=10,
        )
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=120)
        return path
