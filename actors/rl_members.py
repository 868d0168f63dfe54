"""The members of an RL group besides the engine's own samples: the expert trajectory (an off-policy member,
or a fallback for SFT), hybrids (an expert prefix, then the policy's continuation), and DAPO's overlong penalty.

A mixin of RLStepper (actors/rl_step.py): it uses the stepper's cfg, objective, tokenizer, _encode and _generate.
"""

from __future__ import annotations

import random

from trainers.sampling import overlong_penalty


class GroupMembers:
    def _expert_member(self, row: dict) -> dict:
        """The expert trajectory as a group member (off-policy: no engine log-probs)."""
        ids = self.tokenizer.encode(row["response"], add_special_tokens=False) + [self.tokenizer.eos_token_id]
        ids = ids[: self.cfg.rollout.max_tokens]
        return {
            "token_ids": ids,
            "logprobs": None,
            "text": row["response"],
            "finish_reason": "stop",
            "expert": 1,
        }

    def _hybrids(self, rows: list[dict], i: int, rnd: int) -> list[list[dict]]:
        """Per row, the objective's hybrid members: an expert prefix (its share drawn by the objective at this
        point of the RL run), then the policy's own continuation, cut to max_tokens in all."""
        n = self.objective.prefix_members
        if not n:
            return [[] for _ in rows]
        cap, progress = self.cfg.rollout.max_tokens, i / max(1, self.cfg.rl.steps)
        rng = random.Random((self.cfg.run.seed * 100_003 + i) * 7 + rnd)
        experts = [self._expert_member(r)["token_ids"] for r in rows for _ in range(n)]
        cuts = [
            min(len(e) - 1, max(1, round(self.objective.prefix_ratio(progress, rng) * len(e))))
            for e in experts
        ]
        prompts = [p for p in self._encode(rows) for _ in range(n)]
        conts = self._generate(
            [p + e[:k] for p, e, k in zip(prompts, experts, cuts)],
            1,
            self.cfg.rollout.temperature,
            rng.getrandbits(31),
        )
        members = []
        for e, k, c in zip(experts, cuts, conts):
            s = c["samples"][0]
            ids = (e[:k] + s["token_ids"])[:cap]
            lps = None if s["logprobs"] is None else ([0.0] * k + s["logprobs"])[:cap]
            text = self.tokenizer.decode(ids, skip_special_tokens=True)
            members.append({"token_ids": ids, "logprobs": lps, "text": text, "finish_reason": s["finish_reason"],
                            "prefix_len": k})  # fmt: skip
        return [members[j * n : (j + 1) * n] for j in range(len(rows))]

    def _overlong_penalty(self, sample: dict) -> float:
        """DAPO's soft overlong punishment (0 when rl.overlong_buffer_len is 0)."""
        if sample.get("expert"):
            return 0.0
        rl = self.cfg.rl
        return overlong_penalty(
            len(sample["token_ids"]),
            self.cfg.rollout.max_tokens,
            rl.overlong_buffer_len,
            rl.overlong_penalty_factor,
        )
