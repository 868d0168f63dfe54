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

        from trainers.learner_step import deepspeed_config

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
        ds_config = deepspeed_config(self.cfg, dtype, self.on_gpu)
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
    def _forward(self, input_ids):
        # No attention mask: rows are right-padded, so causal attention never lets a real token see padding
        # (trainers/learner_step.py); no KV cache either, a training forward never reads one.
        return self.engine(input_ids=input_ids, use_cache=False).logits

    def _step(self):
        """This rank's step on its rows: micro-batching, loss and backward (Ray- and DeepSpeed-free)."""
        from trainers.learner_step import RankStep

        return RankStep(
            self._forward,
            self.device,
            self.pad_id,
            self.world_size,
            self.cfg.micro_batch_size,
            self.objective,
            self.rl,
        )

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
        out = self._step().accumulate(
            shard,
            global_count,
            counts,
            backward=lambda loss: self.engine.backward(loss, scale_wrt_gas=False),
        )
        self.engine.step()
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

    def compute_logprobs(self, shard: dict) -> list[list[float]]:
        """Log-probs of every row's response tokens under the current weights, at the RL temperature: the
        behaviour policy's, recomputed before the step's first update (rl.old_logprobs: learner)."""
        self.engine.eval()
        return self._step().response_logprobs(shard)

    def eval_loss(self, shard: dict) -> tuple[float, float]:
        """(summed response-token NLL, token count) on this rank's shard of the validation set."""
        self.engine.eval()
        return self._step().eval_nll(shard)

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
