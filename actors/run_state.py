"""Resume states of a run: what `switchpoint run --resume` and a rebuilt learner group continue from.

RUN_DIR/resume/NNNNN-PHASE-STEP/ holds the learner's DeepSpeed checkpoint (weights, optimizer moments, the
objective, SFT schedule position, RNG states; each rank writes its part) and state.json (the controller's side:
data order position, validation curve, switch decision, RL step, sampler, FLOPs, how many metrics rows were
written). A state is written under a `.partial-` name and renamed once state.json is on disk, so a kill during
a save leaves nothing that `latest()` would pick; older states beyond `keep_last` are deleted after the rename.

Also here: the SFT batch order as an object with a state, and which SFT Hugging Face checkpoints to keep.
"""

from __future__ import annotations

import json
import os
import random
import shutil

import numpy as np

STATE_FILE = "state.json"
PARTIAL = ".partial-"


class ResumeStates:
    def __init__(self, run_dir: str, keep_last: int = 2):
        self.dir = os.path.join(run_dir, "resume")
        self.keep_last = max(1, keep_last)

    def _complete(self) -> list[str]:
        if not os.path.isdir(self.dir):
            return []
        names = [
            n
            for n in os.listdir(self.dir)
            if not n.startswith(PARTIAL) and os.path.isfile(os.path.join(self.dir, n, STATE_FILE))
        ]
        return sorted(names)  # NNNNN- prefix: save order

    def begin(self, phase: str, step: int) -> str:
        """A fresh partial folder for the next state; the learner writes its checkpoint under it."""
        os.makedirs(self.dir, exist_ok=True)
        done = self._complete()
        seq = int(done[-1].split("-")[0]) + 1 if done else 1
        name = f"{seq:05d}-{phase}-{step:06d}"
        partial = os.path.join(self.dir, PARTIAL + name)
        shutil.rmtree(partial, ignore_errors=True)
        os.makedirs(partial)
        return partial

    def commit(self, partial: str, state: dict) -> str:
        """Write state.json, then rename the folder into place (the moment the state exists), then prune."""
        tmp = os.path.join(partial, STATE_FILE + ".tmp")
        with open(tmp, "w") as f:
            json.dump(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, os.path.join(partial, STATE_FILE))
        final = os.path.join(self.dir, os.path.basename(partial)[len(PARTIAL) :])
        os.rename(partial, final)
        self.prune()
        return final

    def prune(self) -> None:
        """Delete complete states older than the newest keep_last, and partial folders a kill left behind."""
        for name in self._complete()[: -self.keep_last]:
            shutil.rmtree(os.path.join(self.dir, name), ignore_errors=True)
        for name in os.listdir(self.dir):
            if name.startswith(PARTIAL):
                shutil.rmtree(os.path.join(self.dir, name), ignore_errors=True)

    def latest(self) -> tuple[str, dict] | None:
        """(folder, state) of the newest complete state, None when there is none."""
        done = self._complete()
        if not done:
            return None
        path = os.path.join(self.dir, done[-1])
        with open(os.path.join(path, STATE_FILE)) as f:
            return path, json.load(f)

    def learner_path(self, folder: str) -> str:
        return os.path.join(folder, "learner")


class SFTBatches:
    """Epochs of shuffled example indices, cut into global batches; its position can be saved and restored.

    Each epoch is a permutation drawn from one RNG (seeded by run.seed) when the rest of the order runs short of a
    batch. The saved state is the RNG state before the oldest epoch still in use, how many epochs are in use and
    how far into the oldest one the batches are: the order is drawn again from it on restore, so a state's size
    does not grow with the row count (it used to carry the whole remaining order, ~7 MB of JSON at 1M rows)."""

    def __init__(self, n_examples: int, batch_size: int, seed: int):
        self.n, self.batch_size = n_examples, batch_size
        self.rng = random.Random(seed)
        self.epochs: list[tuple[tuple, np.ndarray]] = []  # (RNG state before it was drawn, permutation)
        self.offset = 0  # indices of epochs[0] already handed out

    def _draw_epoch(self) -> None:
        before = self.rng.getstate()
        more = list(range(self.n))
        self.rng.shuffle(more)
        self.epochs.append((before, np.asarray(more, dtype=np.int64)))

    def next_indices(self) -> list[int]:
        if sum(len(e) for _, e in self.epochs) - self.offset < self.batch_size:
            self._draw_epoch()
        parts, need = [], self.batch_size
        while need and self.epochs:
            first = self.epochs[0][1]
            part = first[self.offset : self.offset + need]
            parts.append(part)
            need -= len(part)
            self.offset += len(part)
            if self.offset == len(first):
                self.epochs.pop(0)
                self.offset = 0
        return np.concatenate(parts).tolist() if parts else []

    def get_state(self) -> dict:
        if (
            self.epochs and self.epochs[0][0] is None
        ):  # in an order restored from an old state: kept as it was
            version, internal, gauss = self.rng.getstate()
            rest = np.concatenate([self.epochs[0][1][self.offset :]] + [e for _, e in self.epochs[1:]])
            return {"rng": [version, list(internal), gauss], "order": rest.tolist()}
        version, internal, gauss = self.epochs[0][0] if self.epochs else self.rng.getstate()
        return {"rng": [version, list(internal), gauss], "epochs": len(self.epochs), "offset": self.offset}

    def set_state(self, state: dict) -> None:
        version, internal, gauss = state["rng"]
        self.rng.setstate((version, tuple(internal), gauss))
        self.epochs, self.offset = [], 0
        if "order" in state:  # a state written before the order was drawn again: it holds the order itself
            if state["order"]:
                self.epochs.append((None, np.asarray(state["order"], dtype=np.int64)))
            return
        for _ in range(state["epochs"]):
            self._draw_epoch()
        self.offset = state["offset"]


def hf_checkpoints_to_drop(val_losses: list, delta: float, keep_last: int, keep: set[int]) -> list[int]:
    """SFT checkpoint steps that retention deletes: all but the newest keep_last, the branch points a policy
    can still roll back to (the lowest loss so far and the latest checkpoint inside its Stable band) and `keep`.
    keep_last 0 keeps every checkpoint."""
    if keep_last <= 0 or not val_losses:
        return []
    steps = [int(s) for s, _ in val_losses]
    losses = [float(v) for _, v in val_losses]
    best = min(range(len(losses)), key=losses.__getitem__)
    band = (1 + delta) * losses[best]
    in_band = max(i for i, x in enumerate(losses) if x <= band)
    protected = set(steps[-keep_last:]) | {steps[best], steps[in_band]} | set(keep)
    return [s for s in steps if s not in protected]
