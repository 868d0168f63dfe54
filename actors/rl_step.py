"""One RL step (generate -> verify -> advantages -> train) and the held-out evaluation, timed by part.

Used by the Controller; kept apart so the controller file reads as the state machine only.
"""

from __future__ import annotations

import random
import time
from collections import defaultdict

import ray
import torch

from plasticity.flops import dapo_step_flops, grpo_step_flops
from switchpoint.data import format_prompt
from trainers import rl_objective, summarize_eval


class RLStepper:
    def __init__(self, cfg, learner, workers, verifier, tokenizer, hf_config, splits):
        self.cfg, self.learner, self.workers, self.verifier = cfg, learner, workers, verifier
        self.tokenizer, self.hf_config = tokenizer, hf_config
        self.template = cfg.data.prompt_template
        self.rl_rows = splits.rl
        self.eval_rows = splits.eval[: cfg.eval.max_prompts]
        self.rng = random.Random(cfg.run.seed + 1)
        self.order: list[int] = []
        self.advantage_fn, _, self.dynamic_sampling = rl_objective(cfg.rl.algorithm)
        self.timings: dict[str, list[float]] = defaultdict(list)

    # ---- generation across workers ---------------------------------------------------------------------------
    def _encode(self, rows: list[dict]) -> list[list[int]]:
        # Same tokenization as the SFT data (switchpoint.data): template applied, no special tokens added.
        return [
            self.tokenizer.encode(format_prompt(r, self.template), add_special_tokens=False) for r in rows
        ]

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

    def _next_prompts(self, count: int) -> list[dict]:
        rows = []
        while len(rows) < count:
            if not self.order:
                self.order = list(range(len(self.rl_rows)))
                self.rng.shuffle(self.order)
            rows.append(self.rl_rows[self.order.pop()])
        return rows

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

    # ---- one RL step -----------------------------------------------------------------------------------------
    def step(self, i: int) -> dict:
        cfg = self.cfg
        t0 = time.perf_counter()
        t_gen = t_ver = 0.0
        kept_outs, kept_scores, all_scores, statuses = [], [], [], defaultdict(int)
        generated_prompts = gen_tokens = prompt_tokens = 0
        for rnd in range(cfg.rl.max_gen_rounds if self.dynamic_sampling else 1):
            need = cfg.rl.prompts_per_step - len(kept_outs)
            rows = self._next_prompts(need if rnd == 0 else max(need, cfg.rl.prompts_per_step // 2))
            t = time.perf_counter()
            outs = self._generate(
                self._encode(rows),
                cfg.rl.group_size,
                cfg.rollout.temperature,
                (cfg.run.seed * 100_003 + i) * 7 + rnd,
            )
            t_gen += time.perf_counter() - t
            t = time.perf_counter()
            scores, st = self._score(outs, rows)
            t_ver += time.perf_counter() - t
            for k, v in st.items():
                statuses[k] += v
            generated_prompts += len(rows)
            gen_tokens += sum(len(s["token_ids"]) for o in outs for s in o["samples"])
            prompt_tokens += sum(len(o["prompt_token_ids"]) for o in outs)
            all_scores += scores
            for o, s in zip(outs, scores):
                informative = max(s) != min(s)
                if (informative or not self.dynamic_sampling) and len(kept_outs) < cfg.rl.prompts_per_step:
                    kept_outs.append(o)
                    kept_scores.append(s)
            if len(kept_outs) >= cfg.rl.prompts_per_step:
                break

        rewards_all = [x for s in all_scores for x in s]
        row = {
            "reward_mean": sum(rewards_all) / len(rewards_all),
            "groups_kept": len(kept_outs),
            "prompts_generated": generated_prompts,
            "gen_tokens": gen_tokens,
            "verifier_status": dict(statuses),
        }
        t_train = 0.0
        if kept_outs:
            adv = self.advantage_fn(torch.tensor(kept_scores, dtype=torch.float32))
            t = time.perf_counter()
            outs = [
                self._train_on(kept_outs[m :: cfg.rl.minibatches], adv.tolist()[m :: cfg.rl.minibatches])
                for m in range(min(cfg.rl.minibatches, len(kept_outs)))
            ]
            t_train = time.perf_counter() - t
            row.update(
                loss=sum(o["loss"] for o in outs) / len(outs),
                clip_fraction=sum(o.get("clip_fraction", 0.0) for o in outs) / len(outs),
                approx_kl=outs[-1].get("approx_kl"),
                grad_norm=outs[-1].get("grad_norm"),
                logprob_diff_vs_engine=outs[0].get("logprob_diff_vs_engine"),
                updates=len(outs),
                tokens=int(sum(o.get("tokens", 0) for o in outs)),
            )
        else:
            row.update(loss=None, skipped="no informative groups")
        n_seq = max(1, generated_prompts * cfg.rl.group_size)
        mean_len = prompt_tokens / max(1, generated_prompts) + gen_tokens / n_seq
        if cfg.rl.algorithm == "dapo":
            row["step_flops"] = dapo_step_flops(
                self.hf_config, generated_prompts, len(kept_outs), cfg.rl.group_size, mean_len
            )
        elif kept_outs:
            row["step_flops"] = grpo_step_flops(self.hf_config, len(kept_outs), cfg.rl.group_size, mean_len)
        else:
            row["step_flops"] = 0.0
        total = time.perf_counter() - t0
        row["timing"] = {
            "generate": t_gen,
            "verify": t_ver,
            "train": t_train,
            "other": total - t_gen - t_ver - t_train,
        }
        row["gen_tokens_per_s"] = gen_tokens / t_gen if t_gen else None
        for k, v in row["timing"].items():
            self.timings[k].append(v)
        self.timings["gen_tokens_per_s"].append(row["gen_tokens_per_s"] or 0.0)
        return row

    def _train_on(self, groups: list[dict], advantages: list[list[float]]) -> dict:
        """One optimizer update on whole groups: prompt + completion tokens, loss on the completion only."""
        batch = {"input_ids": [], "loss_mask": [], "advantages": [], "old_logprobs": []}
        for o, a in zip(groups, advantages):
            p = o["prompt_token_ids"]
            for s, a_j in zip(o["samples"], a):
                batch["input_ids"].append(p + s["token_ids"])
                batch["loss_mask"].append([0] * len(p) + [1] * len(s["token_ids"]))
                batch["advantages"].append(a_j)
                batch["old_logprobs"].append(s["logprobs"])
        if any(lp is None for lp in batch["old_logprobs"]):
            del batch["old_logprobs"]  # greedy rollouts carry no logprobs: ratio against the current policy
        if self.cfg.rl.algorithm == "dr_grpo":
            global_count = float(len(batch["input_ids"]))
        else:
            global_count = float(sum(sum(m[1:]) for m in batch["loss_mask"]))
        return self.learner.train_step(batch, max(global_count, 1.0))

    def get_state(self) -> dict:
        """The prompt sampler's position (RNG and the rest of the shuffled order), JSON-safe, for resume."""
        version, internal, gauss = self.rng.getstate()
        return {"rng": [version, list(internal), gauss], "order": list(self.order)}

    def set_state(self, state: dict) -> None:
        version, internal, gauss = state["rng"]
        self.rng.setstate((version, tuple(internal), gauss))
        self.order = list(state["order"])

    def record_sync(self, seconds: float) -> None:
        self.timings["weight_sync"].append(seconds)

    def mean_timing(self) -> dict:
        return {k: sum(v) / len(v) for k, v in self.timings.items() if v}

    # ---- held-out accuracy -----------------------------------------------------------------------------------
    def evaluate(self) -> dict:
        cfg = self.cfg
        prompts = self._encode(self.eval_rows)
        t = time.perf_counter()
        # The same seeds at every evaluation, so accuracy changes come from the weights, not the dice.
        outs = self._generate(prompts, cfg.eval.samples, cfg.eval.temperature, seed=cfg.run.seed + 7)
        scores, statuses = self._score(outs, self.eval_rows)
        g_scores = None
        if cfg.eval.greedy:
            greedy = self._generate(prompts, 1, 0.0, seed=None)
            g_scores, _ = self._score(greedy, self.eval_rows)
        summary = summarize_eval(scores, ks=(1, cfg.eval.samples))
        return {
            "accuracy": summary["avg@k"],
            "pass@1": summary["pass@1"],
            f"pass@{cfg.eval.samples}": summary[f"pass@{cfg.eval.samples}"],
            "greedy_accuracy": sum(s[0] for s in g_scores) / len(g_scores) if g_scores else None,
            "eval_prompts": len(prompts),
            "eval_samples": cfg.eval.samples,
            "eval_seconds": time.perf_counter() - t,
            "eval_status": statuses,
        }
