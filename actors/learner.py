"""LearnerRank: one DeepSpeed data-parallel rank as a Ray actor (actors/learner_group.py puts N in a group).

The objective is an argument of train_step, so the SFT -> RL switch changes the loss on the same processes
and the same weights; nothing is restarted. gloo on CPU, NCCL on GPU; ZeRO stage from the config.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import random
import socket
import time
import warnings

import ray

from switchpoint.config import LearnerConfig


def _pad(seqs: list[list[int]], pad_id: int):
    import torch

    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        attn[i, : len(s)] = 1
    return ids, attn


def _mask(masks: list[list[int]], width: int):
    import torch

    out = torch.zeros((len(masks), width), dtype=torch.float32)
    for i, m in enumerate(masks):
        out[i, : len(m)] = torch.tensor(m, dtype=torch.float32)
    return out


def length_grouped(lengths: list[int], size: int) -> list[list[int]]:
    """Row indices in micro-batches of at most `size` rows (0: one batch), rows sorted by length first so each
    micro-batch pads to a width near its rows' own: less compute on padding than chunks in arrival order. The
    count of micro-batches depends only on the row count, so every rank runs the same number of forwards
    (ZeRO-3 needs that)."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    size = size or len(order) or 1
    return [order[i : i + size] for i in range(0, len(order), size)]


class LearnerRank:
    """One DeepSpeed data-parallel rank."""

    def __init__(
        self, rank: int, world_size: int, model_path: str, cfg: LearnerConfig, dtype: str, seed: int
    ):
        self.rank, self.world_size, self.model_path, self.cfg = rank, world_size, model_path, cfg
        self.dtype_name, self.seed = dtype, seed
        self.objective = "sft"
        self.rl = {}
        self.sft_sets: dict = {}  # cache folder -> opened (memory-mapped) SFT set

    def pid(self) -> int:
        return os.getpid()

    def node_address(self) -> tuple[str, int]:
        with socket.socket() as s:
            s.bind(("127.0.0.1" if not ray.get_gpu_ids() else "", 0))
            port = s.getsockname()[1]
        return ray.util.get_node_ip_address(), port

    def setup(self, master_addr: str, master_port: int) -> dict:
        import torch

        # Name the accelerator, so DeepSpeed does not detect it and warn "Setting accelerator to CPU" per rank.
        os.environ.setdefault(
            "DS_ACCELERATOR", "cuda" if torch.cuda.is_available() and ray.get_gpu_ids() else "cpu"
        )
        import deepspeed
        import transformers
        from transformers import AutoModelForCausalLM

        # save_pretrained draws a "Writing model shards" bar per checkpoint; forwarded to the job's driver log it
        # buried the progress lines. A failed save still raises.
        transformers.utils.logging.disable_progress_bar()
        # DeepSpeed's ZeRO gathers call a torch API that warns of its deprecation once per rank; not ours to change.
        warnings.filterwarnings(
            "ignore", message=r"`torch\.distributed\.all_gather_into_tensor` is deprecated"
        )
        torch.set_num_threads(self.cfg.torch_threads)
        torch.manual_seed(self.seed)
        self.on_gpu = torch.cuda.is_available() and bool(ray.get_gpu_ids())
        os.environ.update(
            RANK=str(self.rank),
            WORLD_SIZE=str(self.world_size),
            LOCAL_RANK="0",
            MASTER_ADDR=master_addr,
            MASTER_PORT=str(master_port),
        )
        # On CPU, DeepSpeed prints "deepspeed_shm_comm_op built successfully" at every start (a cached op being
        # loaded), one line per rank in the job's driver log; a failure still raises.
        with contextlib.redirect_stdout(io.StringIO()):
            deepspeed.init_distributed(
                dist_backend="nccl" if self.on_gpu else "gloo", auto_mpi_discovery=False
            )
        dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}.get(
            self.dtype_name, torch.bfloat16 if self.on_gpu else torch.float32
        )
        model = AutoModelForCausalLM.from_pretrained(self.model_path, dtype=torch.float32)
        self.pad_id = model.config.pad_token_id if model.config.pad_token_id is not None else 0
        ds_config = {
            "train_micro_batch_size_per_gpu": 1,  # we feed whole shards; DeepSpeed only needs a consistent value
            "gradient_accumulation_steps": 1,
            "gradient_clipping": self.cfg.grad_clip,
            "zero_optimization": {"stage": self.cfg.zero_stage},
            # torch_adam avoids DeepSpeed's FusedAdam JIT build (~70 s on CPU).
            "optimizer": {
                "type": "AdamW",
                "params": {
                    "lr": self.cfg.lr,
                    "betas": [float(b) for b in self.cfg.betas],
                    "weight_decay": self.cfg.weight_decay,
                    "torch_adam": True,
                },
            },
            "bf16": {"enabled": dtype == torch.bfloat16},
            "fp16": {"enabled": dtype == torch.float16},
            "steps_per_print": 10**9,
            # Every step() is an update; backward() calls in between accumulate micro-batch gradients.
            "managed_gradient_accumulation": False,
            "wall_clock_breakdown": False,
        }
        self.engine, self.optimizer, _, _ = deepspeed.initialize(
            model=model, model_parameters=model.parameters(), config=ds_config
        )
        self.device = self.engine.device
        self.sft_step = 0
        return {
            "rank": self.rank,
            "device": str(self.device),
            "params": sum(p.numel() for p in model.parameters()),
            "pid": os.getpid(),
        }

    # ---- objective -------------------------------------------------------------------------------------------
    def set_objective(self, objective: str, rl: dict | None = None, reset_optimizer: bool = False) -> None:
        """Switch the loss on this live engine. rl holds algorithm, clip_low, clip_high, lr, max_tokens and
        optionally clip_ratio_c and temperature (the RL step sends them with every step; see actors/rl_step.py).
        reset_optimizer: a new AdamW (moments and step counts cleared), as the paper's RL runs start."""
        self.objective, self.rl = objective, dict(rl or {})
        if reset_optimizer:
            inner = getattr(self.optimizer, "optimizer", self.optimizer)
            inner.state.clear()  # AdamW re-creates its moments lazily on the next step
        if objective == "rl" and self.cfg.rl_betas:
            for group in self.optimizer.param_groups:
                group["betas"] = tuple(float(b) for b in self.cfg.rl_betas)
        if objective == "rl" and self.rl.get("lr"):
            self._set_lr(self.rl["lr"])

    def _sft_lr(self, step: int) -> float:
        """Linear warm-up, then constant or cosine decay to min_lr_ratio * lr."""
        c = self.cfg
        if step < c.warmup_steps:
            return c.lr * (step + 1) / c.warmup_steps
        if c.lr_schedule == "constant":
            return c.lr
        span = max(1, c.decay_steps - c.warmup_steps)
        progress = min(1.0, (step - c.warmup_steps) / span)
        return c.lr * (c.min_lr_ratio + (1 - c.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))

    def _set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    # ---- training --------------------------------------------------------------------------------------------
    def _forward(self, input_ids, attention_mask):
        return self.engine(
            input_ids=input_ids.to(self.device), attention_mask=attention_mask.to(self.device)
        ).logits

    def train_step(self, shard: dict, global_count: float, counts: dict | None = None) -> dict:
        """One optimizer step on this rank's shard. global_count is the normaliser summed over all ranks
        (response tokens for SFT/GRPO/DAPO, sequences for Dr.GRPO), so the loss is an exact global mean;
        counts holds the whole batch's other normalisers: "entropy" (the entropy bonus's, when it is aggregated
        unlike the loss) and "demo" (the demonstration tokens, for an objective's own SFT term: SRFT, UPT).
        The shard is processed in micro-batches whose gradients accumulate before the single step."""
        t0 = time.perf_counter()
        self.engine.train()
        if self.objective == "sft":
            self._set_lr(self._sft_lr(self.sft_step))
            self.sft_step += 1
        sums: dict[str, float] = {}  # loss, tokens and other counts: summed
        means: dict[str, float] = {}  # token-weighted means
        maxima: dict[str, float] = {}  # keys ending in _max_dev: maxima over tokens
        weight = 0.0
        lengths = [len(x) for x in shard["input_ids"]]
        for rows in length_grouped(lengths, self.cfg.micro_batch_size):
            micro = {k: [v[j] for j in rows] for k, v in shard.items()}
            loss, info = self._micro_loss(micro, global_count, counts or {})
            # Each micro-batch loss is already a share of the global mean: no further scaling by DeepSpeed.
            self.engine.backward(loss, scale_wrt_gas=False)
            w = float(info.get("tokens", 1.0))
            weight += w
            for k, v in info.items():
                if k in ("loss", "tokens", "off_policy_tokens", "demo_tokens_trained"):  # counts
                    sums[k] = sums.get(k, 0.0) + float(v)
                elif k.endswith("_max_dev"):
                    maxima[k] = max(maxima.get(k, 0.0), float(v))
                elif isinstance(v, (int, float)) or hasattr(v, "__float__"):
                    means[k] = means.get(k, 0.0) + float(v) * w
        self.engine.step()
        out = {**sums, **{k: v / max(weight, 1e-9) for k, v in means.items()}, **maxima}
        out["grad_norm"] = float(self.engine.get_global_grad_norm() or 0.0)
        out["lr"] = self.optimizer.param_groups[0]["lr"]
        out["seconds"] = time.perf_counter() - t0
        return out

    def _read_rows(self, folder: str, indices: list[int]) -> dict:
        """This rank's rows of a batch from the tokenized SFT set in `folder` (memory-mapped, opened once);
        index -1 is a padding row without loss."""
        from switchpoint.sft_dataset import SftSet

        if folder not in self.sft_sets:
            self.sft_sets[folder] = SftSet(folder)
        shard = self.sft_sets[folder].examples([i for i in indices if i >= 0])
        for _ in range(sum(i < 0 for i in indices)):
            shard["input_ids"].append([self.pad_id, self.pad_id])
            shard["loss_mask"].append([0, 0])
        return shard

    def train_rows(self, folder: str, indices: list[int], global_count: float) -> dict:
        """train_step on this rank's rows of an SFT batch, read here by index; reports how many it read."""
        out = self.train_step(self._read_rows(folder, indices), global_count)
        out["rows_read"] = sum(i >= 0 for i in indices)
        return out

    def eval_rows(self, folder: str, indices: list[int]) -> tuple[float, float]:
        """eval_loss on this rank's rows of the validation set, read here by index."""
        return self.eval_loss(self._read_rows(folder, indices))

    def _temperature(self) -> float:
        """Temperature the RL log-probs are taken at: the sampling temperature, for old and new alike (veRL
        divides the logits by it; the engine's log-probs are taken after it, see actors/rollout.py)."""
        return float(self.rl.get("temperature") or 1.0)

    def _rl_logprobs(self, ids, attn):
        """(response-position log-probs [B, T-1] at the RL temperature, the scaled logits)."""
        from trainers import token_logprobs

        logits = self._forward(ids, attn) / self._temperature()
        return token_logprobs(logits, ids), logits

    def compute_logprobs(self, shard: dict) -> list[list[float]]:
        """Log-probs of every row's response tokens under the current weights, at the RL temperature: the
        behaviour policy's, recomputed before the step's first update (rl.old_logprobs: learner)."""
        import torch

        self.engine.eval()
        out: list[list[float]] = [[] for _ in shard["input_ids"]]
        with torch.no_grad():
            for rows in length_grouped([len(x) for x in shard["input_ids"]], self.cfg.micro_batch_size):
                ids, attn = _pad([shard["input_ids"][j] for j in rows], self.pad_id)
                lps, _ = self._rl_logprobs(ids.to(self.device), attn)
                for b, j in enumerate(rows):
                    m = shard["loss_mask"][j]
                    n = sum(m)
                    start = m.index(1) - 1 if n else 0
                    out[j] = lps[b, start : start + n].float().cpu().tolist()
        return out

    def _micro_loss(self, micro: dict, global_count: float, counts: dict):
        import torch

        from trainers import aggregate_token_loss, rl_objective, sft_loss
        from trainers.policy_loss import token_entropy

        ids, attn = _pad(micro["input_ids"], self.pad_id)
        mask = _mask(micro["loss_mask"], ids.shape[1]).to(self.device)
        ids = ids.to(self.device)
        if self.objective == "sft":
            n_local = float(mask[:, 1:].sum())
            return sft_loss(
                self._forward(ids, attn), ids, mask, token_scale=n_local * self.world_size / global_count
            )
        objective = rl_objective(self.rl["algorithm"])
        resp_mask = mask[:, 1:]
        new, logits = self._rl_logprobs(ids, attn)
        if "old_logprobs" in micro:
            # The behaviour policy's log-probs (recomputed by the learner before the first update, or the
            # engine's), so later mini-batch updates see a real importance ratio and the clip bites.
            old = torch.zeros_like(new)
            for b, lps in enumerate(micro["old_logprobs"]):
                if not lps or 1 not in micro["loss_mask"][b]:
                    continue  # a padding row or a filtered completion: no response tokens
                start = micro["loss_mask"][b].index(1) - 1
                old[b, start : start + len(lps)] = torch.tensor(lps, dtype=old.dtype)
        else:
            old = new.detach()
        adv = torch.tensor(micro["advantages"], dtype=torch.float32, device=self.device)
        # off_policy: per row, how many leading response tokens are not the policy's own (an expert
        # trajectory: all of them; a hybrid: its expert prefix) -> a token mask.
        off_policy = torch.zeros_like(resp_mask, dtype=torch.bool)
        for b, count in enumerate(micro.get("off_policy") or []):
            if count and 1 in micro["loss_mask"][b]:
                start = micro["loss_mask"][b].index(1) - 1
                off_policy[b, start : start + int(count)] = True
        # Each rank divides by the global count / world size; DeepSpeed's gradient average makes it global.
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

    def eval_loss(self, shard: dict) -> tuple[float, float]:
        """(summed response-token NLL, token count) on this rank's shard of the validation set."""
        import torch
        import torch.nn.functional as F

        self.engine.eval()
        total, count = 0.0, 0.0
        size = self.cfg.micro_batch_size or 64
        with torch.no_grad():
            for i in range(0, len(shard["input_ids"]), size):
                ids, attn = _pad(shard["input_ids"][i : i + size], self.pad_id)
                mask = _mask(shard["loss_mask"][i : i + size], ids.shape[1])[:, 1:].to(self.device)
                ids = ids.to(self.device)
                logits = self._forward(ids, attn)[:, :-1].float()
                nll = F.cross_entropy(
                    logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="none"
                )
                total += float((nll.view_as(mask) * mask).sum())
                count += float(mask.sum())
        return total, count

    # ---- weights ---------------------------------------------------------------------------------------------
    def _full_state_dict(self) -> dict:
        import deepspeed

        params = list(self.engine.module.named_parameters())
        # Under ZeRO-3 every rank must take part in the gather; only rank 0 keeps the result.
        gather = self.cfg.zero_stage == 3
        with deepspeed.zero.GatheredParameters([p for _, p in params], modifier_rank=None, enabled=gather):
            return {n: p.detach().cpu().clone() for n, p in params} if self.rank == 0 else {}

    def get_weights(self) -> dict | None:
        """Full weights (name -> CPU tensor) on rank 0, None elsewhere."""
        sd = self._full_state_dict()
        return sd if self.rank == 0 else None

    def save_hf(self, path: str) -> str | None:
        """Save a Hugging Face checkpoint (model + tokenizer) from rank 0. Written under a temporary name and
        renamed, so a kill during the save never leaves a folder that looks complete."""
        import shutil

        sd = self._full_state_dict()
        if self.rank != 0:
            return None
        partial = f"{path}.partial-{os.getpid()}"
        shutil.rmtree(partial, ignore_errors=True)
        os.makedirs(partial)
        self.engine.module.save_pretrained(partial, state_dict=sd, safe_serialization=True)
        for name in os.listdir(self.model_path):
            if name.startswith(
                ("tokenizer", "special_tokens", "generation_config", "vocab", "merges", "chat_template")
            ):
                src = os.path.join(self.model_path, name)
                if os.path.isfile(src):
                    shutil.copy(src, os.path.join(partial, name))
        shutil.rmtree(path, ignore_errors=True)
        os.rename(partial, path)
        return path

    def load_hf(self, path: str) -> None:
        """Load weights from a Hugging Face checkpoint into the live engine (rollback to a branch point)."""
        import deepspeed
        from safetensors.torch import load_file

        files = [f for f in os.listdir(path) if f.endswith(".safetensors")]
        if not files:
            raise FileNotFoundError(f"no .safetensors weights in checkpoint folder {path}")
        sd = {}
        for f in files:
            sd.update(load_file(os.path.join(path, f)))
        params = dict(self.engine.module.named_parameters())
        gather = self.cfg.zero_stage == 3
        with deepspeed.zero.GatheredParameters(list(params.values()), modifier_rank=0, enabled=gather):
            for n, p in params.items():
                if n in sd:
                    p.data.copy_(sd[n].to(p.dtype))
        # Optimizers with fp32 master copies (ZeRO 1-3, bf16/fp16 at stage 0) would write the old weights back on
        # the next step: refresh them from the loaded module weights.
        if hasattr(self.optimizer, "refresh_fp32_params"):
            self.optimizer.refresh_fp32_params()

    def save_state(self, path: str) -> None:
        """A DeepSpeed checkpoint (weights and optimizer moments, each rank its part) to resume training from,
        with what DeepSpeed does not hold: the objective, the SFT schedule position and this rank's RNG states."""
        import torch

        client = {
            "objective": self.objective,
            "rl": self.rl,
            "sft_step": self.sft_step,
            "lr": self.optimizer.param_groups[0]["lr"],
            "torch_rng": torch.get_rng_state(),
            "python_rng": random.getstate(),
        }
        self.engine.save_checkpoint(path, tag="state", client_state=client, save_latest=False)

    def load_state(self, path: str) -> dict:
        """Load save_state(): weights, optimizer moments, objective, schedule position, RNG states."""
        import torch

        _, client = self.engine.load_checkpoint(
            path, tag="state", load_optimizer_states=True, load_lr_scheduler_states=False
        )
        client = client or {}
        if "objective" in client:
            self.objective, self.rl, self.sft_step = client["objective"], client["rl"], client["sft_step"]
            self._set_lr(client["lr"])
            torch.set_rng_state(client["torch_rng"])
            random.setstate(client["python_rng"])
        return {k: client[k] for k in ("objective", "sft_step", "lr") if k in client}

    def greedy_generate(
        self, prompt_ids: list[list[int]], max_new_tokens: int, eos_id: int
    ) -> list[list[int]]:
        """Greedy completions by the learner's own weights, for the weight-sync equality check. Every rank runs
        it (ZeRO-3 forwards need all ranks); the argmax is identical on all of them."""
        import torch

        self.engine.eval()
        out = []
        with torch.no_grad():
            for ids in prompt_ids:
                x = torch.tensor([ids], device=self.device)
                gen = []
                for _ in range(max_new_tokens):
                    nxt = int(self.engine.module(input_ids=x).logits[0, -1].argmax())
                    gen.append(nxt)
                    if nxt == eos_id:
                        break
                    x = torch.cat([x, torch.tensor([[nxt]], device=self.device)], dim=1)
                out.append(gen)
        return out
