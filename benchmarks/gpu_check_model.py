"""gpu_check's models, rows, FLOPs and timed steps: the project's step (trainers/learner_step.py, as LearnerRank
runs it) and the same step written plainly, the way a user would with transformers and torch.optim.

Needs only torch and transformers; DeepSpeed is used when it imports and was asked for (`deepspeed_engine`).
"""

from __future__ import annotations

import os
import random
import socket
import statistics
import time

import torch

from plasticity.flops import attention_flops_per_token, forward_flops_per_token
from trainers.learner_step import RankStep

# The real shapes (the models' config.json); the 0.5B and 1.5B tie the LM head to the embedding.
SHAPES = {
    "qwen2-0.5b": dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                       num_attention_heads=14, num_key_value_heads=2, tie_word_embeddings=True),
    "qwen2.5-1.5b": dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                         num_attention_heads=12, num_key_value_heads=2, tie_word_embeddings=True),
    "qwen2.5-7b": dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                       num_attention_heads=28, num_key_value_heads=4, tie_word_embeddings=False),
}  # fmt: skip
TINY = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, tie_word_embeddings=True)  # fmt: skip
DAPO = {"algorithm": "dapo", "clip_low": 0.2, "clip_high": 0.28, "clip_ratio_c": 10.0, "temperature": 0.7}
"""The paper config's RL loss settings (configs/paper_dapo_qwen7b.yaml)."""


def hf_config(shape: dict, layers: int | None = None, attn: str = "sdpa"):
    from transformers import Qwen2Config

    kw = dict(shape, max_position_embeddings=32768, use_cache=False)
    if layers is not None:
        kw["num_hidden_layers"] = layers
    cfg = Qwen2Config(**kw)
    cfg._attn_implementation = attn
    return cfg


def build_model(shape: dict, device, dtype, layers: int | None = None, attn: str = "sdpa"):
    """A random-init Qwen2 of this shape, built on `device` ("meta": shapes only, no memory)."""
    from transformers import Qwen2ForCausalLM

    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen2ForCausalLM(hf_config(shape, layers, attn))
    return model if str(device) == "meta" else model.to(dtype)


def matmul_params(model) -> int:
    """Parameters that take part in a matmul per token: all but an untied input embedding (a lookup)."""
    n = sum(p.numel() for p in model.parameters())
    if not model.config.tie_word_embeddings:
        n -= model.get_input_embeddings().weight.numel()
    return n


def step_flops(hf: dict, n_matmul: int, lengths: list[int], passes: int = 3) -> dict:
    """FLOPs of `passes` (3: forward + backward, 1: forward) over rows of these lengths: `model` is
    2 * N * tokens + the attention's (plasticity/flops.py) per pass, `paper` the Appendix E count (which also
    counts the embedding as a matmul, 2 * V * H)."""
    model = sum(passes * n * (2.0 * n_matmul + attention_flops_per_token(hf, n)) for n in lengths)
    paper = sum(passes * n * forward_flops_per_token(hf, n) for n in lengths)
    return {"model": model, "paper": paper}


def make_rows(count: int, seq: int, vocab: int, prompt: int, ragged: bool, seed: int = 0) -> dict:
    """SFT-style rows: a prompt (no loss) then a response (loss) up to `seq` tokens; ragged: lengths uniform
    in [seq / 2, seq] (padding inside micro-batches), else all `seq`."""
    rng = random.Random(seed)
    shard = {"input_ids": [], "loss_mask": []}
    for _ in range(count):
        n = rng.randint(seq // 2, seq) if ragged else seq
        p = min(prompt, n - 2)
        shard["input_ids"].append([rng.randrange(1, vocab) for _ in range(n)])
        shard["loss_mask"].append([0] * p + [1] * (n - p))
    return shard


def sync(device) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def deepspeed_engine(model, cfg, device):
    """(engine, DeepSpeed's version): the learner's DeepSpeed engine (trainers.learner_step.deepspeed_config) on
    one rank."""
    import deepspeed

    from trainers.learner_step import deepspeed_config

    if not torch.distributed.is_initialized():
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(free_port()))
        on_gpu = str(device).startswith("cuda")
        deepspeed.init_distributed(dist_backend="nccl" if on_gpu else "gloo", auto_mpi_discovery=False)
    ds_cfg = deepspeed_config(cfg, next(model.parameters()).dtype, str(device).startswith("cuda"))
    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=ds_cfg)
    return engine, deepspeed.__version__


class ProjectStep:
    """One optimizer step as LearnerRank.train_step runs it: RankStep.accumulate over length-grouped
    micro-batches, then the DeepSpeed engine's step (or, without DeepSpeed, clip + torch AdamW, fused on GPU)."""

    def __init__(self, model, device, micro: int, lr: float, autocast: bool, engine=None):
        self.model, self.device, self.micro, self.engine, self.autocast = (
            model,
            device,
            micro,
            engine,
            autocast,
        )
        if engine is None:
            fused = str(device).startswith("cuda")
            self.opt = torch.optim.AdamW(
                model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.01, fused=fused
            )

    def forward(self, ids):
        if self.engine is not None:
            return self.engine(input_ids=ids, use_cache=False).logits  # LearnerRank._forward
        with torch.autocast(str(self.device).split(":")[0], dtype=torch.bfloat16, enabled=self.autocast):
            return self.model(input_ids=ids, use_cache=False).logits

    def rank_step(self, objective: str, rl: dict | None = None) -> RankStep:
        return RankStep(self.forward, self.device, 0, 1, self.micro, objective, dict(rl or {}))

    def step(self, shard: dict, objective: str, rl: dict | None = None) -> dict:
        global_count = float(sum(sum(m[1:]) for m in shard["loss_mask"]))
        if self.engine is not None:
            self.engine.train()
            backward = lambda loss: self.engine.backward(loss, scale_wrt_gas=False)  # noqa: E731
            out = self.rank_step(objective, rl).accumulate(shard, global_count, backward=backward)
            self.engine.step()
            return out
        self.model.train()
        out = self.rank_step(objective, rl).accumulate(shard, global_count)
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return out

    def logprobs(self, shard: dict, rl: dict) -> list[list[float]]:
        (self.engine or self.model).eval()
        return self.rank_step("rl", rl).response_logprobs(shard)


class BaselineStep:
    """The same step written the simplest way: micro-batches in arrival order, padded with an attention mask,
    transformers' own `labels=` loss (it upcasts all logits to float32), a hand-written DAPO loss, and a default
    torch AdamW with grad clipping."""

    def __init__(self, model, device, micro: int, lr: float, autocast: bool):
        self.model, self.device, self.micro, self.autocast = model, device, micro, autocast
        self.opt = torch.optim.AdamW(model.parameters(), lr=lr)

    def _batches(self, shard: dict):
        for i in range(0, len(shard["input_ids"]), self.micro):
            rows = shard["input_ids"][i : i + self.micro]
            masks = shard["loss_mask"][i : i + self.micro]
            width = max(len(r) for r in rows)
            ids = torch.tensor([r + [0] * (width - len(r)) for r in rows], device=self.device)
            attn = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], device=self.device)
            loss_mask = torch.tensor([m + [0] * (width - len(m)) for m in masks], device=self.device)
            yield i, ids, attn, loss_mask

    def _amp(self):
        return torch.autocast(str(self.device).split(":")[0], dtype=torch.bfloat16, enabled=self.autocast)

    def step(self, shard: dict, objective: str, rl: dict | None = None) -> dict:
        self.model.train()
        total = float(sum(sum(m[1:]) for m in shard["loss_mask"]))
        loss_sum = 0.0
        for i, ids, attn, loss_mask in self._batches(shard):
            with self._amp():
                if objective == "sft":
                    labels = ids.masked_fill(loss_mask == 0, -100)
                    n = float((loss_mask[:, 1:] > 0).sum())
                    loss = self.model(input_ids=ids, attention_mask=attn, labels=labels).loss * (n / total)
                else:
                    loss = self._dapo_loss(shard, i, ids, attn, loss_mask, rl, total)
            loss.backward()
            loss_sum += float(loss.detach())
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        self.opt.zero_grad()
        return {"loss": loss_sum}

    def _logp(self, ids, attn, temperature: float):
        logits = self.model(input_ids=ids, attention_mask=attn).logits[:, :-1].float() / temperature
        return torch.log_softmax(logits, dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1)

    def _dapo_loss(self, shard, i, ids, attn, loss_mask, rl, total):
        mask = loss_mask[:, 1:].float()
        old = torch.zeros(mask.shape, device=self.device)
        for b, lps in enumerate(shard["old_logprobs"][i : i + self.micro]):
            start = shard["loss_mask"][i + b].index(1) - 1
            old[b, start : start + len(lps)] = torch.tensor(lps, device=self.device)
        adv = torch.tensor(shard["advantages"][i : i + self.micro], device=self.device)[:, None]
        ratio = torch.exp(self._logp(ids, attn, rl["temperature"]) - old)
        pg = torch.maximum(-adv * ratio, -adv * ratio.clamp(1 - rl["clip_low"], 1 + rl["clip_high"]))
        pg = torch.where(adv < 0, torch.minimum(pg, -adv * rl["clip_ratio_c"]), pg)
        return (pg * mask).sum() / total

    @torch.no_grad()
    def logprobs(self, shard: dict, rl: dict) -> list[list[float]]:
        self.model.eval()
        out = []
        for i, ids, attn, _ in self._batches(shard):
            with self._amp():
                lps = self._logp(ids, attn, rl["temperature"]).cpu()
            for b, m in enumerate(shard["loss_mask"][i : i + self.micro]):
                start = m.index(1) - 1
                out.append(lps[b, start : start + sum(m)].tolist())
        return out


def timed(fn, device, warmup: int, steps: int) -> dict:
    """fn() `warmup` times, then `steps` times timed (device synchronised around each); peak memory of the
    timed steps (CUDA)."""
    on_cuda = str(device).startswith("cuda")
    for _ in range(warmup):
        fn()
    sync(device)
    if on_cuda:
        torch.cuda.reset_peak_memory_stats()
    times, out = [], None
    for _ in range(steps):
        t0 = time.perf_counter()
        out = fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    rec = {"step_s": statistics.median(times), "step_s_all": [round(t, 4) for t in times]}
    if on_cuda:
        rec["peak_mem_bytes"] = torch.cuda.max_memory_allocated()
    if isinstance(out, dict) and "loss" in out:
        rec["loss"] = float(out["loss"])
    return rec


def padded_tokens(shard: dict, micro: int, grouped: bool) -> int:
    """Tokens the model computes (padding included) with micro-batches by length (project) or arrival order."""
    from trainers.learner_step import length_grouped

    lengths = [len(r) for r in shard["input_ids"]]
    groups = length_grouped(lengths, micro) if grouped else [
        list(range(i, min(i + micro, len(lengths)))) for i in range(0, len(lengths), micro)
    ]  # fmt: skip
    return sum(len(g) * max(lengths[j] for j in g) for g in groups)
