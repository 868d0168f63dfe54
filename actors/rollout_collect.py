"""The first half of an RL step: draw prompts, generate groups on the engines, score them, keep the informative
ones (DAPO's dynamic sampling). Touches the engines and the verifier pool, never the learner, so it can run one
step ahead while the learners train (rl.max_staleness, actors/rollouts_ahead.py).

A base of RLStepper (actors/rl_step.py), which trains on what `collect` returns.
"""

from __future__ import annotations

import random
import time
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import ray

from actors.rl_members import GroupMembers
from trainers import CORRECT_THRESHOLD
from trainers.sampling import ShortBatchError, settle_short_batch


@dataclass
class Rollouts:
    """What one RL step trains on and how it was gathered (RLStepper.collect -> RLStepper.learn)."""

    step: int
    """The RL step these rollouts are for."""
    groups: list[dict]
    """Kept groups: prompt_token_ids, samples (token_ids, text, logprobs, finish_reason; expert/hybrid members
    flagged), expert_member and fallback where the objective uses them."""
    scores: list[list[float]]
    """Reward of every member of every kept group (overlong penalty included)."""
    reward_mean: float
    """Mean reward over every generated group, kept or not."""
    statuses: dict[str, int]
    """Verifier statuses over every scored completion."""
    generated_prompts: int
    """Prompts sent to the engines over all rounds."""
    gen_tokens: int
    """Completion tokens the engines generated."""
    prompt_tokens: int
    """Prompt tokens of the generated prompts."""
    short: bool
    """Dynamic sampling ran out of rounds before prompts_per_step informative groups."""
    seconds: dict[str, float] = field(default_factory=dict)
    """generate, verify: time spent in each; collect: the whole collection."""


class RolloutCollector(GroupMembers):
    def _init_sampler(self, prompt_sets: dict) -> None:
        """prompt_sets: {"rl", "eval"} PromptSets (switchpoint/prompt_dataset.py), memory-mapped; a step reads
        its rows by index, so no split is held as Python rows."""
        cfg = self.cfg
        self.rl_set, self.eval_set = prompt_sets["rl"], prompt_sets["eval"]
        # Positions in rl_set the sampler draws from. The paper's max prompt length: longer prompts are left out
        # (veRL's filter_overlong_prompts).
        lengths = self.rl_set.column("prompt_len")
        self.rl_index = np.arange(len(lengths), dtype=np.int64)
        if cfg.rl.max_prompt_len:
            self.rl_index = np.flatnonzero(lengths <= cfg.rl.max_prompt_len)
            if not self.rl_index.size:
                raise ValueError(f"every RL prompt is longer than rl.max_prompt_len={cfg.rl.max_prompt_len}")
        if self.objective.needs_expert and not self.rl_set.meta["spec"]["with_response"]:
            raise ValueError(
                f"rl.algorithm {cfg.rl.algorithm} puts the expert trajectory in every group: the RL set at "
                f"{self.rl_set.folder} was built without the expert response (data.columns.response)"
            )
        self.rng = random.Random(cfg.run.seed + 1)
        # The rest of the shuffled pass over rl_index, drawn from its end, and the RNG state it was shuffled from.
        self.order = np.zeros(0, dtype=np.int64)
        self.pass_rng: tuple | None = None

    # ---- generation across workers ---------------------------------------------------------------------------
    @staticmethod
    def _encode(rows: list[dict]) -> list[list[int]]:
        # Tokenized when the set was built (prompt_template, chat template, no special tokens), as the SFT data.
        return [r["prompt_ids"] for r in rows]

    def _generate(self, prompts: list[list[int]], n: int, temperature: float, seed: int | None) -> list[dict]:
        """Spread prompts round-robin over the engines; each prompt gets its own sampling seed."""
        k = len(self.workers)
        seeds = (
            None
            if seed is None
            else [random.Random(seed * 1_000_003 + j).getrandbits(31) for j in range(len(prompts))]
        )
        refs = [
            w.generate.remote(
                prompts[j::k],
                n,
                temperature,
                self.cfg.rollout.max_tokens,
                None if seeds is None else seeds[j::k],
                self.cfg.rollout.top_p,
            )
            for j, w in enumerate(self.workers)
            if prompts[j::k]
        ]
        outs = ray.get(refs)
        merged: list = [None] * len(prompts)
        for j, out in enumerate(outs):
            for m, o in enumerate(out):
                merged[j + m * k] = o
        return merged

    def _next_positions(self, count: int) -> list[int]:
        """Positions in rl_set of the next `count` prompts: passes over rl_index in an order shuffled by the
        sampler's RNG, taken from the end."""
        picked = []
        while len(picked) < count:
            if not self.order.size:
                self.pass_rng = self.rng.getstate()
                self.order = self._shuffled_pass()
            take = min(count - len(picked), self.order.size)
            picked += self.order[::-1][:take].tolist()
            self.order = self.order[: self.order.size - take]
        return self.rl_index[picked].tolist()

    def _shuffled_pass(self) -> np.ndarray:
        order = list(range(len(self.rl_index)))
        self.rng.shuffle(order)
        return np.asarray(order, dtype=np.int64)

    def _next_prompts(self, count: int) -> list[dict]:
        """The next `count` RL rows ({"prompt_ids", "answer", "response"}), read from the set by index."""
        return self.rl_set.rows(self._next_positions(count))

    def _score(self, outs: list[dict], rows: list[dict]) -> tuple[list[list[float]], dict]:
        texts, refs = [], []
        for o, r in zip(outs, rows):
            for s in o["samples"]:
                texts.append(s["text"])
                refs.append(r["answer"])
        results = self.verifier.score(texts, refs)
        g = len(outs[0]["samples"]) if outs else 0
        scores = [[results[i * g + j].score for j in range(g)] for i in range(len(outs))]
        statuses: dict[str, int] = defaultdict(int)
        for res in results:
            statuses[res.status] += 1
        return scores, dict(statuses)

    # ---- the step's rollouts ---------------------------------------------------------------------------------
    def collect(self, i: int) -> Rollouts:
        """Rollouts for RL step i with the engines' current weights: generation rounds until prompts_per_step
        informative groups (dynamic sampling) or one round, each group scored and completed with the objective's
        expert and hybrid members."""
        cfg, objective = self.cfg, self.objective
        t0 = time.perf_counter()
        t_gen = t_ver = 0.0
        kept_outs, kept_scores, all_scores, statuses = [], [], [], defaultdict(int)
        generated_prompts = gen_tokens = prompt_tokens = 0
        n_sampled = cfg.rl.group_size - objective.off_policy_members - objective.prefix_members
        for rnd in range(cfg.rl.max_gen_rounds if objective.dynamic_sampling else 1):
            # rl.gen_batch_size is dynamic sampling's over-sampling: an objective that trains every group it
            # generates (GRPO) generates exactly prompts_per_step.
            gen_batch = cfg.rl.gen_batch_size if objective.dynamic_sampling else 0
            need = cfg.rl.prompts_per_step - len(kept_outs)
            rows = self._next_prompts(
                need if rnd == 0 and not gen_batch else gen_batch or cfg.rl.prompts_per_step
            )
            t = time.perf_counter()
            outs = self._generate(
                self._encode(rows), n_sampled, cfg.rollout.temperature, (cfg.run.seed * 100_003 + i) * 7 + rnd
            )
            t_gen += time.perf_counter() - t
            gen_tokens += sum(len(s["token_ids"]) for o in outs for s in o["samples"])
            for o, r, h in zip(outs, rows, self._hybrids(rows, i, rnd)):
                o["samples"] += [self._expert_member(r) for _ in range(objective.off_policy_members)] + h
                if objective.expert_fallback or objective.interleaved_sft:
                    o["expert_member"] = self._expert_member(r)
            t = time.perf_counter()
            scores, st = self._score(outs, rows)
            scores = [
                [x + self._overlong_penalty(smp) for x, smp in zip(sc, o["samples"])]
                for sc, o in zip(scores, outs)
            ]
            t_ver += time.perf_counter() - t
            for k, v in st.items():
                statuses[k] += v
            generated_prompts += len(rows)
            prompt_tokens += sum(len(o["prompt_token_ids"]) for o in outs)
            all_scores += scores
            for o, sc in zip(outs, scores):
                # UPT, ReLIFT: no completion correct -> the group trains on its expert trajectory instead.
                expert_sft = objective.expert_fallback or objective.interleaved_sft
                o["fallback"] = expert_sft and max(sc) < CORRECT_THRESHOLD
                informative = max(sc) != min(sc)
                if (informative or not objective.dynamic_sampling) and len(
                    kept_outs
                ) < cfg.rl.prompts_per_step:
                    kept_outs.append(o)
                    kept_scores.append(sc)
            if len(kept_outs) >= cfg.rl.prompts_per_step:
                break
        short = objective.dynamic_sampling and len(kept_outs) < cfg.rl.prompts_per_step
        if objective.dynamic_sampling:
            try:
                kept = settle_short_batch(
                    list(range(len(kept_outs))),
                    cfg.rl.prompts_per_step,
                    cfg.rl.short_batch,
                    cfg.rl.max_gen_rounds,
                )
            except ShortBatchError as e:
                raise ShortBatchError(f"RL step {i}: {e}") from None
            kept_outs, kept_scores = [kept_outs[k] for k in kept], [kept_scores[k] for k in kept]
        rewards_all = [x for s in all_scores for x in s]
        return Rollouts(
            step=i,
            groups=kept_outs,
            scores=kept_scores,
            reward_mean=sum(rewards_all) / len(rewards_all),
            statuses=dict(statuses),
            generated_prompts=generated_prompts,
            gen_tokens=gen_tokens,
            prompt_tokens=prompt_tokens,
            short=short,
            seconds={"generate": t_gen, "verify": t_ver, "collect": time.perf_counter() - t0},
        )

    # ---- the sampler's position, for resume ------------------------------------------------------------------
    def get_state(self) -> dict:
        """The sampler's position for resume (JSON-safe): the RNG state its pass was shuffled from and how many
        prompts it drew (shuffled again on restore: the state does not grow with the RL set)."""
        rng, taken = self.rng.getstate(), None
        if self.order.size:
            if self.pass_rng is None:  # a pass restored from a state that holds the order: kept as it was
                version, internal, gauss = rng
                return {"rng": [version, list(internal), gauss], "order": self.order.tolist(),
                        "sft_buffer": self.sft_buffer}  # fmt: skip
            rng, taken = self.pass_rng, len(self.rl_index) - self.order.size
        version, internal, gauss = rng
        return {"rng": [version, list(internal), gauss], "pass_taken": taken, "sft_buffer": self.sft_buffer}

    def set_state(self, state: dict) -> None:
        version, internal, gauss = state["rng"]
        self.rng.setstate((version, tuple(internal), gauss))
        self.sft_buffer = list(state.get("sft_buffer", []))
        self.pass_rng, self.order = None, np.zeros(0, dtype=np.int64)
        if "order" in state:  # written before passes were shuffled again on restore
            self.order = np.asarray(state["order"], dtype=np.int64)
        elif state["pass_taken"] is not None:
            self.pass_rng = self.rng.getstate()
            order = self._shuffled_pass()
            self.order = order[: order.size - state["pass_taken"]]
