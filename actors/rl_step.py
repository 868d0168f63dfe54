"""One RL step (generate -> verify -> advantages -> train) and the held-out evaluation, timed by part.

Used by the Controller; kept apart so the controller file reads as the state machine only.
"""

from __future__ import annotations

import random
import time
from collections import defaultdict

import numpy as np
import ray
import torch

from actors.rl_members import GroupMembers
from trainers import CORRECT_THRESHOLD, rl_objective, summarize_eval
from trainers.sampling import ShortBatchError, settle_short_batch


class RLStepper(GroupMembers):
    def __init__(self, cfg, learner, workers, verifier, tokenizer, hf_config, prompt_sets):
        """prompt_sets: {"rl", "eval"} PromptSets (switchpoint/prompt_dataset.py), memory-mapped; a step reads
        its rows by index, so no split is held as Python rows."""
        self.cfg, self.learner, self.workers, self.verifier = cfg, learner, workers, verifier
        self.tokenizer, self.hf_config = tokenizer, hf_config
        self.objective = rl_objective(cfg.rl.algorithm)
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
        self.n_eval = min(len(self.eval_set), cfg.eval.max_prompts)
        self.rng = random.Random(cfg.run.seed + 1)
        # The rest of the shuffled pass over rl_index, drawn from its end, and the RNG state it was shuffled from.
        self.order = np.zeros(0, dtype=np.int64)
        self.pass_rng: tuple | None = None
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

    # ---- one RL step -----------------------------------------------------------------------------------------
    def step(self, i: int) -> dict:
        cfg, objective = self.cfg, self.objective
        t0 = time.perf_counter()
        self.learner.set_objective("rl", self.learner_settings())
        t_gen = t_ver = 0.0
        kept_outs, kept_scores, all_scores, statuses = [], [], [], defaultdict(int)
        generated_prompts = gen_tokens = prompt_tokens = 0
        n_sampled = cfg.rl.group_size - objective.off_policy_members - objective.prefix_members
        for rnd in range(cfg.rl.max_gen_rounds if objective.dynamic_sampling else 1):
            need = cfg.rl.prompts_per_step - len(kept_outs)
            rows = self._next_prompts(
                need
                if rnd == 0 and not cfg.rl.gen_batch_size
                else cfg.rl.gen_batch_size or cfg.rl.prompts_per_step
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
        row = {
            "reward_mean": sum(rewards_all) / len(rewards_all),
            "groups_kept": len(kept_outs),
            "prompts_generated": generated_prompts,
            "gen_tokens": gen_tokens,
            "verifier_status": dict(statuses),
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
            batches = [self._batch(kept_outs[m::m_count], adv[m::m_count]) for m in range(m_count)]
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
            sft = self._train(self._batch(burst, [[0.0]] * pps))
            t_train += time.perf_counter() - t
            row.update(interleaved_sft_loss=sft["loss"], interleaved_sft_groups=pps)
            sft_groups += burst
        if objective.interleaved_sft:
            row["sft_buffer"] = len(self.sft_buffer)
        n_seq = max(1, generated_prompts * cfg.rl.group_size)
        mean_len = prompt_tokens / max(1, generated_prompts) + gen_tokens / n_seq
        row["step_flops"] = objective.step_flops(
            self.hf_config,
            generated_prompts,
            len(kept_outs) - sum(bool(o.get("fallback")) for o in kept_outs),
            cfg.rl.group_size,
            mean_len,
            [len(o["prompt_token_ids"]) + len(o["expert_member"]["token_ids"]) for o in sft_groups],
        )
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

    def _batch(self, groups: list[dict], advantages: list[list[float]]) -> dict:
        """One update's rows: prompt + completion tokens, loss on the completion only (none on a completion cut
        at max_tokens with rl.overlong_filter); expert members flagged off-policy. Padded with empty rows to a
        multiple of the ranks, so the group's own padding never applies."""
        batch = {"input_ids": [], "loss_mask": [], "advantages": [], "old_logprobs": [], "off_policy": []}
        for o, a in zip(groups, advantages):
            p = o["prompt_token_ids"]
            members = [(o["expert_member"], 0.0)] if o.get("fallback") else list(zip(o["samples"], a))
            for smp, a_j in members:
                cut = self.cfg.rl.overlong_filter and smp.get("finish_reason") == "length"
                batch["input_ids"].append(p + smp["token_ids"])
                batch["loss_mask"].append([0] * len(p) + [0 if cut else 1] * len(smp["token_ids"]))
                batch["advantages"].append(a_j)
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
            if "old_logprobs" in batch:
                batch["old_logprobs"].append([])
        return batch

    def _train(self, batch: dict) -> dict:
        """One optimizer update over the learner ranks. The loss's global denominator comes from the objective
        (tokens, sequences, or sequences x max_tokens); maxima over tokens (ratio_max_dev) stay maxima."""
        lengths = [sum(m) for m in batch["loss_mask"] if sum(m)]
        count = self.objective.global_count(lengths, self.cfg.rollout.max_tokens)
        demo = None
        if self.objective.demo_token_mean:  # SRFT's SFT term: its own mean over the demonstration tokens
            demo = float(sum(min(off, sum(m)) for off, m in zip(batch["off_policy"], batch["loss_mask"])))
        shards = self.learner.shard(batch)
        res = self.learner._gather(
            [r.train_step.remote(s, count, demo) for r, s in zip(self.learner.ranks, shards)]
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
