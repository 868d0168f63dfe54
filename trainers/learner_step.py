"""One learner rank's work on its rows, without Ray or DeepSpeed: rows -> length-grouped, padded micro-batches ->
forward -> SFT or RL loss -> backward, with the micro-batches' figures summed into one record.

LearnerRank (actors/learner.py) runs it with its DeepSpeed engine's forward and backward; benchmarks/gpu_check.py
runs the same code with a plain model on one GPU. The optimizer step, the learning-rate schedule and gradient
clipping stay with the caller.

Rows are right-padded, so under causal attention no real token sees a padding token: the model gets no attention
mask. Its logits at real positions are the same, and PyTorch's SDPA keeps its flash kernel (given a padding mask,
transformers builds a [B, 1, T, T] mask and SDPA falls back to a slower masked kernel). Padding positions' logits
are never read: every loss and log-prob below is masked to real response tokens.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from trainers.objectives import rl_objective
from trainers.policy_loss import aggregate_token_loss, token_entropy, token_logprobs
from trainers.sft import sft_loss
from trainers.token_nll import next_token_nll

COUNT_KEYS = ("loss", "tokens", "off_policy_tokens", "demo_tokens_trained")
"""Info keys summed over micro-batches; keys ending in _max_dev take the maximum, other numbers a token-weighted
mean."""


def deepspeed_config(cfg, dtype: torch.dtype, on_gpu: bool) -> dict:
    """A rank's DeepSpeed config from the learner config (grad_clip, zero_stage, lr, betas, weight_decay).

    torch's AdamW (torch_adam) avoids DeepSpeed's FusedAdam JIT build (~70 s on CPU); on a GPU it runs fused
    (one kernel over all parameters, not a foreach loop)."""
    adam = {
        "lr": cfg.lr,
        "betas": [float(b) for b in cfg.betas],
        "weight_decay": cfg.weight_decay,
        "torch_adam": True,
    }
    if on_gpu:
        adam["fused"] = True
    return {
        "train_micro_batch_size_per_gpu": 1,  # we feed whole shards; DeepSpeed only needs a consistent value
        "gradient_accumulation_steps": 1,
        "gradient_clipping": cfg.grad_clip,
        "zero_optimization": {"stage": cfg.zero_stage},
        "optimizer": {"type": "AdamW", "params": adam},
        "bf16": {"enabled": dtype == torch.bfloat16},
        "fp16": {"enabled": dtype == torch.float16},
        "steps_per_print": 10**9,
        # Every step() is an update; backward() calls in between accumulate micro-batch gradients.
        "managed_gradient_accumulation": False,
        "wall_clock_breakdown": False,
    }


def pad_rows(seqs: list[list[int]], pad_id: int) -> Tensor:
    """Token rows right-padded with pad_id to the longest: int64 [B, T]."""
    width = max(len(s) for s in seqs)
    return torch.tensor([list(s) + [pad_id] * (width - len(s)) for s in seqs], dtype=torch.long)


def mask_rows(masks: list[list[int]], width: int) -> Tensor:
    """Loss-mask rows right-padded with 0 to width: float32 [B, width]."""
    return torch.tensor([list(m) + [0] * (width - len(m)) for m in masks], dtype=torch.float32)


def length_grouped(lengths: list[int], size: int) -> list[list[int]]:
    """Row indices in micro-batches of at most `size` rows (0: one batch), rows sorted by length first so each
    micro-batch pads to a width near its rows' own: less compute on padding than chunks in arrival order. The
    count of micro-batches depends only on the row count, so every rank runs the same number of forwards
    (ZeRO-3 needs that)."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    size = size or len(order) or 1
    return [order[i : i + size] for i in range(0, len(order), size)]


def _response_start(loss_mask: list[int]) -> int:
    """Index into the [T - 1] log-prob row of a row's first response token."""
    return loss_mask.index(1) - 1


@dataclass
class RankStep:
    """What one rank's step needs besides its rows. forward: int64 ids [B, T] on `device` -> logits [B, T, V]."""

    forward: Callable[[Tensor], Tensor]
    device: torch.device | str
    pad_id: int = 0
    world_size: int = 1
    micro_batch_size: int = 0
    objective: str = "sft"
    rl: dict = field(default_factory=dict)

    @property
    def temperature(self) -> float:
        """Temperature the RL log-probs are taken at: the sampling temperature, for old and new alike (veRL
        divides the logits by it; the engine's log-probs are taken after it, see actors/rollout.py)."""
        return float(self.rl.get("temperature") or 1.0)

    def rl_logprobs(self, ids: Tensor) -> tuple[Tensor, Tensor]:
        """(response-position log-probs [B, T-1] at the RL temperature, the scaled logits)."""
        logits = self.forward(ids)
        if self.temperature != 1.0:  # x / 1.0 == x: skip a pass over [B, T, V]
            logits = logits / self.temperature
        return token_logprobs(logits, ids), logits

    def accumulate(
        self,
        shard: dict,
        global_count: float,
        counts: dict | None = None,
        backward: Callable[[Tensor], None] = Tensor.backward,
    ) -> dict:
        """Forward, loss and backward over the shard's micro-batches; gradients accumulate (no optimizer step).
        counts: the whole batch's other normalisers ("entropy", "demo"; see LearnerRank.train_step).
        Returns the summed counts, token-weighted means and maxima of the micro-batches' info."""
        sums: dict[str, float] = {}
        means: dict[str, float] = {}
        maxima: dict[str, float] = {}
        weight = 0.0
        for rows in length_grouped([len(x) for x in shard["input_ids"]], self.micro_batch_size):
            micro = {k: [v[j] for j in rows] for k, v in shard.items()}
            loss, info = self.micro_loss(micro, global_count, counts or {})
            backward(loss)  # each micro-batch loss is already a share of the global mean: no further scaling
            w = float(info.get("tokens", 1.0))
            weight += w
            for k, v in info.items():
                if k in COUNT_KEYS:
                    sums[k] = sums.get(k, 0.0) + float(v)
                elif k.endswith("_max_dev"):
                    maxima[k] = max(maxima.get(k, 0.0), float(v))
                elif isinstance(v, (int, float)) or hasattr(v, "__float__"):
                    means[k] = means.get(k, 0.0) + float(v) * w
        return {**sums, **{k: v / max(weight, 1e-9) for k, v in means.items()}, **maxima}

    def micro_loss(self, micro: dict, global_count: float, counts: dict | None = None):
        """(loss, info) of one micro-batch, scaled so the ranks' summed gradients give the global mean."""
        ids = pad_rows(micro["input_ids"], self.pad_id)
        cpu_mask = mask_rows(micro["loss_mask"], ids.shape[1])
        mask, ids = cpu_mask.to(self.device), ids.to(self.device)
        if self.objective == "sft":
            n_local = float(cpu_mask[:, 1:].sum())  # counted on the host: no device sync before the forward
            return sft_loss(
                self.forward(ids), ids, mask, token_scale=n_local * self.world_size / global_count
            )
        return self._rl_loss(micro, ids, mask, global_count, counts or {})

    def _rl_loss(self, micro: dict, ids: Tensor, mask: Tensor, global_count: float, counts: dict):
        objective = rl_objective(self.rl["algorithm"])
        resp_mask = mask[:, 1:]
        new, logits = self.rl_logprobs(ids)
        if "old_logprobs" in micro:
            # The behaviour policy's log-probs (recomputed by the learner before the first update, or the
            # engine's), so later mini-batch updates see a real importance ratio and the clip bites.
            old = torch.zeros(new.shape, dtype=new.dtype)
            for b, lps in enumerate(micro["old_logprobs"]):
                if not lps or 1 not in micro["loss_mask"][b]:
                    continue  # a padding row or a filtered completion: no response tokens
                start = _response_start(micro["loss_mask"][b])
                old[b, start : start + len(lps)] = torch.tensor(lps, dtype=old.dtype)
            old = old.to(self.device)
        else:
            old = new.detach()
        adv = torch.tensor(micro["advantages"], dtype=torch.float32, device=self.device)
        # off_policy: per row, how many leading response tokens are not the policy's own (an expert
        # trajectory: all of them; a hybrid: its expert prefix) -> a token mask.
        off_policy = torch.zeros(resp_mask.shape, dtype=torch.bool)
        for b, count in enumerate(micro.get("off_policy") or []):
            if count and 1 in micro["loss_mask"][b]:
                start = _response_start(micro["loss_mask"][b])
                off_policy[b, start : start + int(count)] = True
        # Each rank divides by the global count / world size; the data-parallel gradient average makes it global.
        denominator = global_count / self.world_size
        entropy = None
        if objective.entropy_coef or objective.uses_entropy:
            entropy = token_entropy(logits, resp_mask)
        extra = {}
        if objective.demo_token_mean:
            extra["demo_normalizer"] = max(counts.get("demo", 0.0), 1.0) / self.world_size
        if objective.uses_correct:
            correct = list(micro.get("correct") or [])  # rows padded by the shard have none: not correct
            correct += [False] * (len(micro["input_ids"]) - len(correct))
            extra["correct"] = torch.tensor(correct, dtype=torch.bool, device=self.device)
        loss, info = objective.loss_fn(
            new,
            old,
            adv,
            resp_mask,
            **extra,
            clip_low=self.rl["clip_low"],
            clip_high=self.rl["clip_high"],
            clip_ratio_c=self.rl.get("clip_ratio_c", objective.clip_ratio_c),
            loss_agg=objective.loss_agg,
            normalizer=denominator,
            off_policy=off_policy.to(self.device),
            entropy=entropy,
        )
        if objective.entropy_coef:
            ent_denominator = counts.get("entropy", global_count) / self.world_size
            bonus = aggregate_token_loss(entropy, resp_mask, objective.bonus_agg, ent_denominator)
            loss = loss - objective.entropy_coef * bonus
            info["entropy"] = float((entropy * resp_mask).sum() / resp_mask.sum().clamp(min=1))
        if "old_logprobs" in micro:
            diff = ((new.detach() - old).abs() * resp_mask).sum() / resp_mask.sum().clamp(min=1)
            info["logprob_diff_vs_old"] = float(diff)
        return loss, info

    @torch.no_grad()
    def response_logprobs(self, shard: dict) -> list[list[float]]:
        """Log-probs of every row's response tokens at the RL temperature (no gradient)."""
        out: list[list[float]] = [[] for _ in shard["input_ids"]]
        for rows in length_grouped([len(x) for x in shard["input_ids"]], self.micro_batch_size):
            ids = pad_rows([shard["input_ids"][j] for j in rows], self.pad_id).to(self.device)
            lps = self.rl_logprobs(ids)[0].cpu()
            for b, j in enumerate(rows):
                m = shard["loss_mask"][j]
                n = sum(m)
                start = _response_start(m) if n else 0
                out[j] = lps[b, start : start + n].tolist()
        return out

    @torch.no_grad()
    def eval_nll(self, shard: dict) -> tuple[float, float]:
        """(summed response-token NLL, token count) in rows of micro_batch_size (0: 64), arrival order."""
        total, count = 0.0, 0.0
        size = self.micro_batch_size or 64
        for i in range(0, len(shard["input_ids"]), size):
            ids = pad_rows(shard["input_ids"][i : i + size], self.pad_id)
            mask = mask_rows(shard["loss_mask"][i : i + size], ids.shape[1])[:, 1:].bool()
            ids = ids.to(self.device)
            total += float(next_token_nll(self.forward(ids), ids, mask).sum())
            count += float(mask.sum())
        return total, count
