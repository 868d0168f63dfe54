"""The synthetic task's `study` layout: data knobs that move one thing at a time.

In the classic layout (synthetic.write_splits) every split is cut from one seeded sample, so the SFT size also
changes the validation, RL and held-out sets, and the difficulty changes all of them. Here every difficulty
level d has one seeded order of its problems (a shuffle of all of them where they can be enumerated, else a
stream of distinct draws), and the splits take from it:

    front  the shared splits (held-out eval, then SFT validation, then RL prompts), drawn with `shared_mix`
    next   the SFT train set: the first n rows of one sequence drawn with `sft_mix`
    back   the pretraining corpus of the base model (switchpoint/pretrain.py), enumerable levels only

So the shared splits do not depend on any SFT knob (their files are byte-identical across variants), a smaller
SFT set is a prefix of a larger one with the same mix, two mixes of one size differ only in how many rows come
from each level, and the corpus never meets a split as long as the level has room (`check_room`).

A mix is a list of non-negative weights of difficulties 1, 2, ...: [1, 1, 1] uniform over 1-3, [4, 2, 1] easy.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
from functools import lru_cache

import pyarrow as pa
import pyarrow.parquet as pq

from switchpoint.synthetic import (
    _ENUMERATE_LIMIT,
    _enumerate_chains,
    count_problems,
    make_problem,
    max_operand,
    max_problem_chars,
    num_operations,
    render_problem,
)

SHARED_SPLITS = ("eval", "sft_val", "rl")
"""The shared splits, in the order they take rows from the shared sequence (eval first: it never moves)."""
MAX_LEVEL = 8
"""Highest difficulty a mix may weight (difficulty 5 already has 3-digit operands and 138-char rows)."""
_SCHEMA = pa.schema([("prompt", pa.string()), ("response", pa.string()), ("answer", pa.string())])


def check_mix(mix: list, name: str) -> list[float]:
    """The mix as floats; ValueError naming `name` unless it is 1..MAX_LEVEL finite weights >= 0, one > 0."""
    if not isinstance(mix, list) or not mix:
        raise ValueError(f"{name} must be a non-empty list of weights of difficulties 1, 2, ..., got {mix!r}")
    if len(mix) > MAX_LEVEL:
        raise ValueError(f"{name} weights {len(mix)} difficulties; at most {MAX_LEVEL}, got {mix!r}")
    for w in mix:
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
            raise ValueError(f"{name} weights must be finite numbers >= 0, got {w!r} in {mix!r}")
    if not any(w > 0 for w in mix):
        raise ValueError(f"{name} needs at least one weight > 0, got {mix!r}")
    return [float(w) for w in mix]


def top_level(mix: list) -> int:
    """The hardest difficulty the mix draws from."""
    return max(level for level, w in enumerate(mix, 1) if w > 0)


def mix_levels(mix: list, n: int) -> list[int]:
    """The difficulty of each of a sequence's first n rows: at every step the level furthest below its share.

    Deterministic, and a longer sequence extends a shorter one, so every prefix is a nested subset whose level
    counts are within one of n * weight / total (ties go to the easier level).
    """
    weights = check_mix(mix, "mix")
    total = sum(weights)
    counts = [0] * len(weights)
    out = []
    for i in range(n):
        deficits = [w * (i + 1) / total - c for w, c in zip(weights, counts, strict=True)]
        level = max(range(len(weights)), key=lambda j: (deficits[j], -j))
        counts[level] += 1
        out.append(level + 1)
    return out


def level_counts(levels: list[int]) -> dict[int, int]:
    out: dict[int, int] = {}
    for level in levels:
        out[level] = out.get(level, 0) + 1
    return out


def fraction_size(n_sft_train: int, fraction: float) -> int:
    """Rows of the SFT set at this fraction of the largest (data.sft_fraction): its first ones."""
    return round(n_sft_train * fraction)


def enumerable(level: int) -> bool:
    """Whether the level's problems are few enough to enumerate and shuffle (its order then has a back end)."""
    return count_problems(level) <= _ENUMERATE_LIMIT


@lru_cache(maxsize=4)
def _shuffled_chains(level: int, seed: int) -> tuple:
    chains = list(_enumerate_chains(max_operand(level), num_operations(level)))
    # A string seed is hashed with sha512 by random.Random: stable across processes and PYTHONHASHSEED.
    random.Random(f"study:{seed}:{level}").shuffle(chains)
    return tuple(chains)


def front_rows(level: int, seed: int, start: int, count: int) -> list[dict]:
    """Rows start .. start+count-1 of the level's seeded order."""
    if enumerable(level):
        chains = _shuffled_chains(level, seed)
        if start + count > len(chains):
            raise ValueError(
                f"difficulty {level} has {len(chains)} problems; asked for rows up to {start + count}"
            )
        return [render_problem(list(ops_), list(sym)) for ops_, sym in chains[start : start + count]]
    # Too many to enumerate: a stream of distinct draws, whose first rows never depend on how many are asked.
    rng = random.Random(f"study:{seed}:{level}")
    seen: dict[str, dict] = {}
    while len(seen) < start + count:
        problem = make_problem(rng, level)
        seen.setdefault(problem["prompt"], problem)
    return list(seen.values())[start : start + count]


def back_rows(level: int, seed: int, count: int) -> list[dict]:
    """The last `count` problems of the level's seeded order, last first: the pretraining corpus."""
    if not enumerable(level):
        raise ValueError(
            f"difficulty {level} has about {count_problems(level)} problems, too many to enumerate, so its order "
            f"has no back end to keep apart from the splits; use a difficulty up to "
            f"{max(d for d in range(1, MAX_LEVEL) if enumerable(d))}"
        )
    chains = _shuffled_chains(level, seed)
    if count > len(chains):
        raise ValueError(f"difficulty {level} has only {len(chains)} problems; asked for {count}")
    return [render_problem(list(a), list(b)) for a, b in reversed(chains[len(chains) - count :])]


def shared_levels(shared_mix: list, n_sft_val: int, n_rl: int, n_eval: int) -> dict[str, list[int]]:
    """{split: level of each row} of the shared splits: consecutive chunks of one `shared_mix` sequence."""
    sizes = {"eval": n_eval, "sft_val": n_sft_val, "rl": n_rl}
    sequence = mix_levels(shared_mix, sum(sizes.values()))
    out, start = {}, 0
    for name in SHARED_SPLITS:
        out[name] = sequence[start : start + sizes[name]]
        start += sizes[name]
    return out


def front_needs(shared_mix: list, sft_mix: list, n_sft_train: int, n_sft_val: int, n_rl: int, n_eval: int):
    """({level: rows the shared splits take}, {level: rows the SFT set takes after them})."""
    shared = level_counts(
        [lv for seq in shared_levels(shared_mix, n_sft_val, n_rl, n_eval).values() for lv in seq]
    )
    return shared, level_counts(mix_levels(sft_mix, n_sft_train))


class RoomError(ValueError):
    """A level has too few problems; `part` says which taker overflowed it: shared, sft or corpus."""

    def __init__(self, message: str, part: str):
        super().__init__(message)
        self.part = part


def check_room(
    shared_mix: list,
    sft_mix: list,
    n_sft_train: int,
    n_sft_val: int,
    n_rl: int,
    n_eval: int,
    pretrain_level: int = 0,
    pretrain_items: int = 0,
) -> None:
    """RoomError when a level has fewer problems than the splits and the pretraining corpus take from it."""
    shared, sft = front_needs(shared_mix, sft_mix, n_sft_train, n_sft_val, n_rl, n_eval)
    for level in sorted(set(shared) | set(sft) | ({pretrain_level} if pretrain_items else set())):
        space = count_problems(level)
        takes = [
            ("shared", shared.get(level, 0), "the shared splits take"),
            ("sft", sft.get(level, 0), "the SFT set"),
            ("corpus", pretrain_items if level == pretrain_level else 0, "the pretraining corpus"),
        ]
        total = 0
        for part, count, _ in takes:
            total += count
            if total > space:
                told = ", ".join(f"{w} {c}" for _, c, w in takes if c)
                raise RoomError(f"difficulty {level} has {space} distinct problems, but {told}", part)


def longest_row(level: int) -> tuple[int, int]:
    """(prompt chars, response chars) of the longest problem at this level (all '+', largest operands)."""
    n_ops = num_operations(level)
    row = render_problem([max_operand(level)] * (n_ops + 1), ["+"] * n_ops)
    assert len(row["prompt"]) + len(row["response"]) == max_problem_chars(level)
    return len(row["prompt"]), len(row["response"])


def _write_folder(folder: str, tables: dict[str, list[dict]], manifest: dict) -> None:
    """Write the parquet files and manifest.json beside `folder` and rename: no half-written folder is seen."""
    tmp = f"{folder}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        for name, rows in tables.items():
            pq.write_table(pa.Table.from_pylist(rows, schema=_SCHEMA), os.path.join(tmp, f"{name}.parquet"))
        with open(os.path.join(tmp, "manifest.json"), "w") as f:
            f.write(json.dumps(manifest, indent=2) + "\n")
        os.rename(tmp, folder)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not os.path.isfile(os.path.join(folder, "manifest.json")):  # not another process's finished folder
            raise


def _rows_for(levels: list[int], seed: int, offsets: dict[int, int]) -> list[dict]:
    """The rows of a level sequence: each level's next rows of its order after `offsets[level]`, in order."""
    wanted = level_counts(levels)
    pools = {lv: iter(front_rows(lv, seed, offsets.get(lv, 0), n)) for lv, n in wanted.items()}
    return [next(pools[lv]) for lv in levels]


def write_shared_splits(
    folder: str, *, shared_mix: list, n_sft_val: int, n_rl: int, n_eval: int, seed: int
) -> dict[str, str]:
    """The shared splits (eval, sft_val, rl) in `folder` (written once; kept if there); returns split -> path."""
    paths = {name: os.path.join(folder, f"{name}.parquet") for name in SHARED_SPLITS}
    if os.path.isfile(os.path.join(folder, "manifest.json")):
        return paths
    split_levels = shared_levels(shared_mix, n_sft_val, n_rl, n_eval)
    rows = _rows_for([lv for name in SHARED_SPLITS for lv in split_levels[name]], seed, {})
    tables, start = {}, 0
    for name in SHARED_SPLITS:
        tables[name] = rows[start : start + len(split_levels[name])]
        start += len(split_levels[name])
    manifest = {
        "task": "synthetic_arithmetic",
        "layout": "study",
        "shared_mix": shared_mix,
        "seed": seed,
        "counts": {name: len(tables[name]) for name in SHARED_SPLITS},
        "level_counts": {name: level_counts(split_levels[name]) for name in SHARED_SPLITS},
        "columns": ["prompt", "response", "answer"],
    }
    os.makedirs(os.path.dirname(folder) or ".", exist_ok=True)
    _write_folder(folder, tables, manifest)
    return paths


def write_sft_train(
    folder: str,
    *,
    shared_mix: list,
    sft_mix: list,
    n_sft_train: int,
    n_sft_val: int,
    n_rl: int,
    n_eval: int,
    seed: int,
) -> str:
    """The SFT train set (prefix of the `sft_mix` sequence, after the shared rows of each level) in `folder`."""
    path = os.path.join(folder, "sft_train.parquet")
    if os.path.isfile(os.path.join(folder, "manifest.json")):
        return path
    offsets, _ = front_needs(shared_mix, sft_mix, 0, n_sft_val, n_rl, n_eval)
    levels = mix_levels(sft_mix, n_sft_train)
    manifest = {
        "task": "synthetic_arithmetic",
        "layout": "study",
        "sft_mix": sft_mix,
        "n_sft_train": n_sft_train,
        "seed": seed,
        "level_counts": level_counts(levels),
        "starts_after_shared": offsets,
        "columns": ["prompt", "response", "answer"],
    }
    os.makedirs(os.path.dirname(folder) or ".", exist_ok=True)
    _write_folder(folder, {"sft_train": _rows_for(levels, seed, offsets)}, manifest)
    return path


def _mix_tag(mix: list) -> str:
    return "-".join(f"{float(w):g}" for w in mix)


def study_folders(
    data_dir: str,
    *,
    shared_mix: list,
    sft_mix: list,
    n_sft_train: int,
    n_sft_val: int,
    n_rl: int,
    n_eval: int,
    seed: int,
) -> tuple[str, str]:
    """(shared folder, SFT folder inside it): one name per knob setting, so variants never share a stale file."""
    shared = os.path.join(data_dir, f"study_m{_mix_tag(shared_mix)}_v{n_sft_val}_r{n_rl}_e{n_eval}_s{seed}")
    return shared, os.path.join(shared, f"sft_m{_mix_tag(sft_mix)}_n{n_sft_train}")
