"""The controller's resume side: write a resume state, go back to one, note a --resume in the run folder.

What a state holds is in actors/run_state.py; these methods fill it from the controller's attributes
(learner, folder, summary, batches, stepper, ...) and put them back.
"""

from __future__ import annotations

import json
import os
import time


class Resumable:
    def _rewind(self, n_rows: int) -> None:
        """metrics.jsonl back to the first n_rows (what the state saw); fault and resume rows after them stay."""
        rows = self.folder.rows
        keep = rows[:n_rows] + [r for r in rows[n_rows:] if r.get("phase") in ("fault", "resume")]
        if keep != rows or n_rows == 0:
            self.folder.replace_rows(keep)

    def _note_resume(self, resume: tuple[str, dict] | None) -> None:
        """--resume: the run's clock goes on from the state (the time it was down is not counted)."""
        where = "the start (no resume state was complete)"
        if resume is not None:
            where = f"{os.path.basename(resume[0])} ({resume[1]['phase']} step {resume[1]['step']})"
            self.state["started"] = time.time() - resume[1]["elapsed"]
        self.state["events"].append(f"resumed from {where}")
        self.folder.log(
            {"phase": "resume", "from": where, "step": resume[1]["step"] if resume else 0, "at": time.time()}
        )

    def _save_state(self, phase: str, step: int) -> None:
        self.folder.flush()  # TensorBoard buffers events for seconds: those up to this state must survive a kill
        partial = self.states.begin(phase, step)
        self.learner.save_state(self.states.learner_path(partial))
        st = {
            "phase": phase,
            "step": step,
            "rows": len(self.folder.rows),
            "elapsed": time.time() - self.state["started"],
            "summary": self.summary,
        }
        if phase == "sft":
            st.update(
                batches=self.batches.get_state(),
                sft_flops=self.sft_flops,
                regimes_seen=self.regimes_seen,
                sft_seconds=time.time() - self.t_sft,
            )
        else:
            st.update(
                i=self.i,
                rl_flops=self.rl_flops,
                last_eval=self.last_eval,
                stepper=self._sampler_state(),
                timings=dict(self.stepper.timings),
            )
        self.states.commit(partial, json.loads(json.dumps(st, default=float)))
        self.last_state = (time.time(), f"{phase} step {step}")
