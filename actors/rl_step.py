"""One RL step (collect rollouts -> advantages -> train) and the held-out evaluation, timed by part.

Used by the Controller; kept apart so the controller file reads as the state machine only. The rollouts half
(prompts, generation, scoring, dynamic sampling) is actors/rollout_collect.py.
"""

from __future__ import annotations

import time
from collections import defaultdict

import torch

from actors.rollout_collect import RolloutCollector, Rollouts
from trainers import CORRECT_THRESHOLD, rl_objective, summarize_eval


class RLStepper(RolloutCollector):
    def __init__(self, cfg, learner, workers, verifier, tokenizer, hf_config, prompt_sets):
        """prompt_sets: {"rl", "eval"} PromptSets (switchpoint/prompt_dataset.py), read by index."""
        self.cfg, self.learner, self.workers, self.verifier = cfg, learner, workers, verifier
        self.tokenizer, self.hf_config = tokenizer, hf_config
        self.objective = rl_objective(cfg.rl.algorithm)
        self._init_sampler(prompt_sets)
        self.n_eval = min(len(self.eval_set), cfg.eval.max_prompts)
        self.sft_buffer: list[dict] = []  # ReLIFT: expert trajectories of the hardest prompts, for SFT
        self.timings: dict[str, list[float]] = defaultdict(list)

    def learner_settings(self) -> dict:
        """What the learner's RL loss needs; sent with every step (set_objective without a reset is cheap and
        idempotent), so a rebuilt or resumed learner always has them."""
        cfg = self.cfg
        return {
            "algorithm": cfg.rl.algorithm,
            "clip_low": cfg.rl.clip_low,
            "clip_high": cfg.rl.clip_high,
            "clip_ratio_c": cfg.rl.clip_ratio_c,
            "lr": cfg.learner.rl_lr or cfg.learner.lr,
            "max_tokens": cfg.rollout.max_tokens,
            "temperature": cfg.rollout.temperature,
            "old_logprobs": cfg.rl.old_logprobs,
        }

    # ---- one RL step -----------------------------------------------------------------------------------------
    def learn(self, rollouts: Rollouts) -> dict:
        """Advantages and the optimizer update(s) on one step's rollouts; the step's metrics row."""
        cfg, objective = self.cfg, self.objective
        t0 = time.perf_counter()
        self.learner.set_objective("rl", self.learner_settings())
        kept_outs, kept_scores, short = rollouts.groups, rollouts.scores, rollouts.short
        generated_prompts, gen_tokens = rollouts.generated_prompts, rollouts.gen_tokens
        row = {
            "reward_mean": rollouts.reward_mean,
            "groups_kept": len(kept_outs),
            "prompts_generated": generated_prompts,
            "gen_tokens": gen_tokens,
            "verifier_status": dict(rollouts.statuses),
            "old_logprobs": cfg.rl.old_logprobs,
            "short_batch": short,
        }
        if objective.expert_fallback:
            row["expert_sft_groups"] = sum(bool(o.get("fallback")) for o in kept_outs)
        if objective.interleaved_sft:  # ReLIFT: the hardest prompts leave RL for the SFT buffer
            keys = ("prompt_token_ids", "expert_member", "fallback")
            self.sft_buffer += [{k: o[k] for k in keys} for o in kept_outs if o["fallback"]]
            kept_scores = [s for o, s in zip(kept_outs, kept_scores) if not o["fallback"]]
            kept_outs = [o for o in kept_outs if not o["fallback"]]
            row["groups_kept"] = len(kept_outs)
        t_train = 0.0
        if kept_outs:
            adv = objective.advantage_fn(torch.tensor(kept_scores, dtype=torch.float32)).tolist()
            t = time.perf_counter()
            m_count = min(cfg.rl.minibatches, len(kept_outs))
            batches = [
                self._batch(kept_outs[m::m_count], adv[m::m_count], kept_scores[m::m_count])
                for m in range(m_count)
            ]
            if cfg.rl.old_logprobs == "learner":
                # Behaviour log-probs from the learner's weights before the first update. The first mini-batch
                # trains on exactly the weights that sampled it, so its own forward's log-probs (detached) are
                # the behaviour policy's and a separate pass would only repeat them (ratio 1 exactly, as TRL's
                # single-iteration GRPO); the later ones follow an update and are scored now.
                batches[0].pop("old_logprobs", None)
                for b in batches[1:]:
                    b["old_logprobs"] = self.learner.compute_logprobs(b)
            outs = [self._train(b) for b in batches]
            t_train = time.perf_counter() - t
            row.update(
                loss=sum(o["loss"] for o in outs) / len(outs),
                clip_fraction=sum(o.get("clip_fraction", 0.0) for o in outs) / len(outs),
                approx_kl=outs[-1].get("approx_kl"),
                grad_norm=outs[-1].get("grad_norm"),
                # max |ratio - 1| over every token of the first update: ~0 when the learner recomputed the
                # behaviour log-probs (the check that the ratio compares the policy that sampled).
                ratio_max_dev_first_update=outs[0].get("ratio_max_dev"),
                logprob_diff_vs_old=outs[0].get("logprob_diff_vs_old"),
                updates=len(outs),
                tokens=int(sum(o.get("tokens", 0) for o in outs)),
            )
            for key in (
                "entropy",
                "off_policy_tokens",
                "off_policy_prob",
                "sft_weight",
                "demo_tokens_trained",
            ):
                if key in outs[0]:
                    row[key] = outs[0][key]
        else:
            row.update(
                loss=None, skipped="short batch (rl.short_batch: skip)" if short else "no informative groups"
            )
        pps = cfg.rl.prompts_per_step
        # Expert rows trained with the SFT loss this step (UPT's fallback groups, ReLIFT's burst): counted as SFT.
        sft_groups = [o for o in kept_outs if o.get("fallback")]
        if objective.interleaved_sft and len(self.sft_buffer) >= pps:
            t = time.perf_counter()
            burst, self.sft_buffer = self.sft_buffer[:pps], self.sft_buffer[pps:]
            sft = self._train(self._batch(burst, [[0.0]] * pps, [[0.0]] * pps))
            t_train += time.perf_counter() - t
            row.update(interleaved_sft_loss=sft["loss"], interleaved_sft_groups=pps)
            sft_groups += burst
        if objective.interleaved_sft:
            row["sft_buffer"] = len(self.sft_buffer)
        n_seq = max(1, generated_prompts * cfg.rl.group_size)
        mean_len = rollouts.prompt_tokens / max(1, generated_prompts) + gen_tokens / n_seq
        row["step_flops"] = objective.step_flops(
            self.hf_config,
            generated_prompts,
            len(kept_outs) - sum(bool(o.get("fallback")) for o in kept_outs),
            cfg.rl.group_size,
            mean_len,
            [len(o["prompt_token_ids"]) + len(o["expert_member"]["token_ids"]) for o in sft_groups],
        )
        t_gen, t_ver = rollouts.seconds["generate"], rollouts.seconds["verify"]
        row["timing"] = {
            "generate": t_gen,
            "verify": t_ver,
            "train": t_train,
            "other": rollouts.seconds["collect"] - t_gen - t_ver + time.perf_counter() - t0 - t_train,
        }
        row["gen_tokens_per_s"] = gen_tokens / t_gen if t_gen else None
        for k, v in row["timing"].items():
            self.timings[k].append(v)
        self.timings["gen_tokens_per_s"].append(row["gen_tokens_per_s"] or 0.0)
        return row

    def _batch(self, groups: list[dict], advantages: list[list[float]], scores: list[list[float]]) -> dict:
        """One update's rows: prompt + completion tokens, loss on the completion only (none on a completion cut
        at max_tokens with rl.overlong_filter); expert members flagged off-policy; `correct` per row (its score
        reached CORRECT_THRESHOLD). Padded with empty rows to a multiple of the ranks, so the group's own padding
        never applies."""
        batch = {"input_ids": [], "loss_mask": [], "advantages": [], "old_logprobs": [], "off_policy": [],
                 "correct": []}  # fmt: skip
        for o, a, sc in zip(groups, advantages, scores):
            p = o["prompt_token_ids"]
            members = (
                [(o["expert_member"], 0.0, 0.0)] if o.get("fallback") else list(zip(o["samples"], a, sc))
            )
            for smp, a_j, s_j in members:
                cut = self.cfg.rl.overlong_filter and smp.get("finish_reason") == "length"
                batch["input_ids"].append(p + smp["token_ids"])
                batch["loss_mask"].append([0] * len(p) + [0 if cut else 1] * len(smp["token_ids"]))
                batch["advantages"].append(a_j)
                batch["correct"].append(s_j >= CORRECT_THRESHOLD)
                batch["old_logprobs"].append(smp["logprobs"] or [])
                # Leading response tokens that are not the policy's own: all of an expert's, a hybrid's prefix.
                batch["off_policy"].append(
                    len(smp["token_ids"]) if smp.get("expert") else smp.get("prefix_len", 0)
                )
        if self.cfg.rl.old_logprobs == "engine" and any(
            not lp and not off for lp, off in zip(batch["old_logprobs"], batch["off_policy"])
        ):
            del batch["old_logprobs"]  # greedy rollouts carry no logprobs: ratio against the current policy
        world = len(self.learner.ranks)
        while len(batch["input_ids"]) % world:
            batch["input_ids"].append(batch["input_ids"][0][:2])
            batch["loss_mask"].append([0, 0])
            batch["advantages"].append(0.0)
            batch["off_policy"].append(0)
            batch["correct"].append(False)
            if "old_logprobs" in batch:
                batch["old_logprobs"].append([])
        return batch

    def _train(self, batch: dict) -> dict:
        """One optimizer update over the learner ranks. The loss's global denominator comes from the objective
        (tokens, sequences, or sequences x max_tokens); maxima over tokens (ratio_max_dev) stay maxima."""
        lengths = [sum(m) for m in batch["loss_mask"] if sum(m)]
        objective, max_tokens = self.objective, self.cfg.rollout.max_tokens
        count = objective.global_count(lengths, max_tokens)
        counts = {"entropy": objective.global_count(lengths, max_tokens, objective.bonus_agg)}
        if objective.demo_token_mean:  # SRFT's, UPT's SFT term: its own mean over the demonstration tokens
            counts["demo"] = float(
                sum(min(off, sum(m)) for off, m in zip(batch["off_policy"], batch["loss_mask"]))
            )
        shards = self.learner.shard(batch)
        res = self.learner._gather(
            [r.train_step.remote(s, count, counts) for r, s in zip(self.learner.ranks, shards)]
        )
        world = len(res)
        out = {
            "loss": sum(r["loss"] for r in res) / world,
            "tokens": sum(r.get("tokens", 0.0) for r in res),
            "grad_norm": res[0]["grad_norm"],
            "lr": res[0]["lr"],
        }
        weight = out["tokens"] or 1.0
        for key in res[0]:
            if key in out or key == "seconds":
                continue
            if key.endswith("_max_dev"):
                out[key] = max(r.get(key, 0.0) for r in res)
            elif key in ("off_policy_tokens", "demo_tokens_trained"):  # counts
                out[key] = sum(r.get(key, 0.0) for r in res)
            else:
                out[key] = sum(r.get(key, 0.0) * r.get("tokens", 0.0) for r in res) / weight
        return out

    def record_sync(self, seconds: float) -> None:
        self.timings["weight_sync"].append(seconds)

    def mean_timing(self) -> dict:
        return {k: sum(v) / len(v) for k, v in self.timings.items() if v}

    # ---- held-out accuracy -----------------------------------------------------------------------------------
    def evaluate(self) -> dict:
        cfg = self.cfg
        rows = self.eval_set.rows(range(self.n_eval))
        prompts = self._encode(rows)
        t = time.perf_counter()
        # The same seeds at every evaluation, so accuracy changes come from the weights, not the dice.
        outs = self._generate(prompts, cfg.eval.samples, cfg.eval.temperature, seed=cfg.run.seed + 7)
        scores, statuses = self._score(outs, rows)
        g_scores = None
        if cfg.eval.greedy:
            greedy = self._generate(prompts, 1, 0.0, seed=None)
            g_scores, _ = self._score(greedy, rows)
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
