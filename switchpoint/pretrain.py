"""Pretraining of the tiny model (model.pretrain), so pure RL starts from a base that can answer some prompts.

A random-init model never produces the answer format, so RL from it gets reward 0 and "SFT then RL beats pure RL"
would hold by construction. The base model here learns the task's format and easy problems by next-token
prediction (loss on every token: prompt, expert trajectory, eos) on a corpus that no split contains: the last
`corpus_size` problems of one level's seeded order, whose front the study splits take from
(switchpoint/study_data.py; the room is checked with the config). Plain PyTorch on one process, no Ray: it runs
once, before the run starts, and its folder is cached beside the random-init one, keyed by every setting that
shapes its weights, so each study variant (SFT size, mix) starts from the very same base.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import shutil
import time

from switchpoint.config import Config, ConfigError
from switchpoint.data import render_prompt

INFO_FILE = "pretrain.json"
"""What a pretrained folder records: its settings, the corpus's hash, the loss curve's ends and the seconds."""


def corpus_rows(difficulty: int, corpus_size: int, seed: int) -> list[dict]:
    """The pretraining corpus: the last `corpus_size` problems of the level's seeded order (the splits' other end)."""
    from switchpoint.study_data import back_rows

    return back_rows(difficulty, seed, corpus_size)


def settings(cfg: Config) -> dict:
    """Everything that shapes the pretrained weights (the random-init folder's own key aside)."""
    p = cfg.model.pretrain
    return {
        "steps": p.steps,
        "corpus_size": p.corpus_size,
        "difficulty": p.difficulty,
        "batch_size": p.batch_size,
        "lr": p.lr,
        "warmup_steps": p.warmup_steps,
        "seed": cfg.run.seed,
        "prompt_template": cfg.data.prompt_template,
    }


def pretrained_path(cfg: Config, base_path: str) -> str:
    blob = json.dumps(settings(cfg), sort_keys=True)
    return f"{base_path}_pt{cfg.model.pretrain.steps}-{hashlib.sha256(blob.encode()).hexdigest()[:10]}"


def lr_at(step: int, steps: int, lr: float, warmup_steps: int) -> float:
    """Linear warm-up to lr, then cosine decay to 10% of lr at the last step."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, steps - warmup_steps)
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def encode_corpus(rows: list[dict], tokenizer, prompt_template: str) -> list[list[int]]:
    """Token ids of prompt (after the template) + expert response + eos: the text a run's model sees."""
    eos = tokenizer.eos_token_id
    return [
        tokenizer.encode(
            render_prompt(r["prompt"], prompt_template) + r["response"], add_special_tokens=False
        )
        + [eos]
        for r in rows
    ]


def pretrain(
    base_dir: str,
    out_dir: str,
    rows: list[dict],
    *,
    steps: int,
    batch_size: int,
    lr: float,
    warmup_steps: int,
    seed: int,
    prompt_template: str = "{prompt}",
) -> dict:
    """Train the model in `base_dir` on `rows` for `steps` AdamW steps and save it with its tokenizer in `out_dir`.

    Deterministic for the same arguments: seeded batch order and init of the optimizer, one intra-op thread (a
    different thread count sums in another order). Returns the info also written to out_dir/pretrain.json.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainers.sft import sft_loss

    if steps < 1 or batch_size < 1 or not rows:
        raise ValueError(
            f"pretrain needs steps >= 1, batch_size >= 1 and rows (got {steps}, {batch_size}, {len(rows)})"
        )
    start = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    sequences = encode_corpus(rows, tokenizer, prompt_template)
    pad = tokenizer.pad_token_id
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(seed)
        order_rng = random.Random(f"pretrain:{seed}")
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.0)
        model.train()
        order: list[int] = []
        losses = []
        for step in range(steps):
            if len(order) < batch_size:  # epochs of a fresh shuffle each, concatenated
                epoch = list(range(len(sequences)))
                order_rng.shuffle(epoch)
                order += epoch
            batch, order = [sequences[i] for i in order[:batch_size]], order[batch_size:]
            width = max(map(len, batch))
            ids = torch.tensor([s + [pad] * (width - len(s)) for s in batch])
            mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in batch])
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, steps, lr, warmup_steps)
            logits = model(input_ids=ids, attention_mask=mask).logits
            loss, _ = sft_loss(logits, ids, mask)  # mask covers every real token: next-token loss on all text
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            losses.append(float(loss.item()))
    finally:
        torch.set_num_threads(threads)
    model.eval()
    os.makedirs(out_dir, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    corpus_hash = hashlib.sha256(json.dumps([r["prompt"] for r in rows]).encode()).hexdigest()
    tail = losses[-max(1, steps // 10) :]
    info = {
        "base": os.path.basename(base_dir.rstrip("/")),
        "steps": steps,
        "batch_size": batch_size,
        "lr": lr,
        "warmup_steps": warmup_steps,
        "seed": seed,
        "corpus_rows": len(rows),
        "corpus_sha256": corpus_hash,
        "first_loss": losses[0],
        "final_loss": sum(tail) / len(tail),
        "seconds": round(time.perf_counter() - start, 1),
    }
    with open(os.path.join(out_dir, INFO_FILE), "w") as f:
        f.write(json.dumps(info, indent=2) + "\n")
    return info


def ensure_pretrained(cfg: Config, base_path: str) -> str:
    """The pretrained folder for cfg (model.pretrain), trained from the random-init `base_path` on first use."""
    path = pretrained_path(cfg, base_path)
    if os.path.isfile(os.path.join(path, INFO_FILE)):
        return path
    p = cfg.model.pretrain
    rows = corpus_rows(p.difficulty, p.corpus_size, cfg.run.seed)
    print(
        f"pretraining the tiny model: {p.steps} steps on {len(rows)} difficulty-{p.difficulty} problems",
        flush=True,
    )
    tmp = f"{path}.tmp-{os.getpid()}"  # trained beside the target and renamed: no run sees a half-written folder
    try:
        info = pretrain(
            base_path,
            tmp,
            rows,
            steps=p.steps,
            batch_size=p.batch_size,
            lr=p.lr,
            warmup_steps=p.warmup_steps,
            seed=cfg.run.seed,
            prompt_template=cfg.data.prompt_template,
        )
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ConfigError(
            f"cannot write the pretrained model {path} ({e.strerror or e}); config key 'model.path'"
        ) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        os.rename(tmp, path)
    except OSError:  # another run finished it first
        shutil.rmtree(tmp, ignore_errors=True)
    print(
        f"pretrained in {info['seconds']} s: loss {info['first_loss']:.3f} -> {info['final_loss']:.3f}",
        flush=True,
    )
    return path
