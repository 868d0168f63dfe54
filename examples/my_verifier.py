"""A custom verifier: `verifier.kind: examples.my_verifier:verify` (configs/example_own_data.yaml).

switchpoint calls verify(completion, reference) once per sampled completion, in a child process of a
VerifierWorker actor, with a time limit (verifier.timeout_s). Return a reward: a float (or a bool). A verifier
that hangs, crashes or raises costs that one item (it scores 0 with status timeout, crash or error), not the
run. Model output is untrusted: parse it, never evaluate it.

The module must be importable where the actors run: from the folder you start the run in (Ray puts it on the
actors' path), on PYTHONPATH, or in the job's --working-dir with `ray job submit`.

This one reads the numbers after "Answer:" and compares them with the reference as numbers, so "Answer: 09" and
"Answer: 9.0" both match "9" (the built-in `exact` kind compares the text). No such number scores 0, and so do
several different ones ("Answer: 3 ... Answer: 4"): a hedge must not collect the reward of whichever guess is right.
"""

from __future__ import annotations

import math
import re

ANSWER = re.compile(r"Answer:\s*(-?\d+(?:\.\d+)?)")


def verify(completion: str, reference: str) -> float:
    """1.0 when every "Answer: N" of the completion equals the reference number, else 0.0."""
    try:
        want = float(reference)
        found = {float(n) for n in ANSWER.findall(completion)}
    except ValueError:
        return 0.0
    if len(found) != 1:
        return 0.0
    (got,) = found
    return 1.0 if math.isclose(got, want, rel_tol=0.0, abs_tol=1e-9) else 0.0
