"""Expert-data selection before any RL: rank SFT runs on different data, check the ranking against A_post.

The paper's finding: the SFT run with the lowest minimum validation loss (on a shared held-out set) tends
to give the highest RL ceiling A_post. Here the data sets are ranked by a quantity known after SFT alone
(minimum validation loss, lower is better; on curves without loss, e.g. the reference curves, the best SFT
performance, higher is better), and where RL branches were fitted, the quantity is correlated with A_post.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import stats

MIN_VAL_LOSS, BEST_SFT_P = "min_val_loss", "best_sft_p"
# Where a run records its validation set (summary.json: data -> sft_val_fingerprint).
VAL_FINGERPRINT_KEY = "sft_val_fingerprint"
_LOWER_IS_BETTER = {MIN_VAL_LOSS: True, BEST_SFT_P: False}


@dataclass
class DatasetScore:
    """One expert data set (one SFT trunk)."""

    scene: str
    value: float
    """The ranking quantity (minimum validation loss or best SFT P)."""
    rank: int
    """1 = the best data set by the ranking quantity."""
    a_post: float | None
    """Highest fitted ceiling among the scene's branches (None without a supportable fit)."""
    n_branches: int
    """Branches with a supportable ceiling."""


@dataclass
class SelectionReport:
    quantity: str
    """'min_val_loss' or 'best_sft_p'."""
    ranking: list[DatasetScore]
    pearson: float | None = None
    """Pearson r of the quantity with A_post over data sets having both (None: under 3, or constant)."""
    spearman: float | None = None
    """Spearman rho of the same pairs."""
    n_pairs: int = 0
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def correlation(x, y) -> tuple[float | None, float | None]:
    """(Pearson r, Spearman rho); None where undefined (fewer than 3 pairs, or a constant side)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"correlation needs two 1-D sequences of equal length, got {x.shape} and {y.shape}")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise ValueError("correlation: every value must be finite")
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return None, None
    r = float(stats.pearsonr(x, y)[0])
    rho = float(stats.spearmanr(x, y)[0])
    return r, (rho if math.isfinite(rho) else None)


def rank_datasets(
    values: dict[str, float], a_post: dict[str, list[float]] | None = None, quantity: str = MIN_VAL_LOSS
) -> SelectionReport:
    """Rank data sets by `quantity`; correlate it with each data set's best A_post where there is one.

    values: scene -> minimum validation loss (or best SFT P); a_post: scene -> its branches' ceilings.
    """
    if quantity not in _LOWER_IS_BETTER:
        raise ValueError(f"unknown selection quantity {quantity!r}; known: {', '.join(_LOWER_IS_BETTER)}")
    if not values:
        raise ValueError("data selection needs at least one SFT run")
    for scene, v in values.items():
        if not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"data selection: {quantity} of {scene!r} is {v!r}, not a finite number")
    lower = _LOWER_IS_BETTER[quantity]
    order = sorted(values, key=lambda s: values[s] if lower else -values[s])
    a_post = a_post or {}
    ranking = []
    for rank, scene in enumerate(order, 1):
        ceilings = [a for a in a_post.get(scene, []) if a is not None and math.isfinite(a)]
        ranking.append(
            DatasetScore(
                scene, float(values[scene]), rank, max(ceilings) if ceilings else None, len(ceilings)
            )
        )
    pairs = [(d.value, d.a_post) for d in ranking if d.a_post is not None]
    report = SelectionReport(quantity, ranking, n_pairs=len(pairs))
    by = "minimum validation loss (lower is better)" if lower else "best SFT performance (higher is better)"
    report.notes.append(
        f"ranked by {by}; A_post per data set = the highest supportable ceiling of its RL branches"
    )
    if len(pairs) >= 3:
        report.pearson, report.spearman = correlation(*zip(*pairs))
        if lower:
            report.notes.append("the paper expects a negative correlation: lower loss, higher ceiling")
    else:
        report.notes.append(f"no correlation: {len(pairs)} data set(s) with both values, need 3")
    return report


def val_set_fingerprint(rows) -> dict:
    """What identifies a validation set: the SHA-256 of its (prompt, response) pairs, in any row order, and
    the row count. Two runs' validation losses are comparable only when these are equal."""
    lines = sorted(json.dumps([r["prompt"], r["response"]], ensure_ascii=False) for r in rows)
    digest = hashlib.sha256("\n".join(lines).encode()).hexdigest()
    return {"sha256": digest, "rows": len(lines)}


def describe_fingerprint(fp: dict | None) -> str:
    if not fp:
        return "not recorded"
    return f"{fp['rows']} rows, sha256 {fp['sha256'][:12]}"


def shared_val_refusal(fingerprints: dict[str, list]) -> str | None:
    """Why the scenes' minimum validation losses cannot be ranked against each other (None: they can).

    fingerprints: scene -> the validation-set fingerprints its runs recorded (None for a run that recorded
    none). Ranking needs every run of every scene measured on one and the same validation set."""
    every = {json.dumps(fp, sort_keys=True) if fp else None for fps in fingerprints.values() for fp in fps}
    if len(every) == 1 and None not in every:
        return None
    parts = []
    for scene, fps in fingerprints.items():
        kinds = sorted({describe_fingerprint(fp) for fp in fps})
        parts.append(f"{scene}: {' / '.join(kinds)}")
    return (
        "data selection refused: the minimum validation losses were measured on different (or unrecorded) "
        f"validation sets ({'; '.join(parts)}); give every data scene one validation file "
        "(data.sft_val_path) or re-measure their checkpoints on one with --val FILE"
    )
