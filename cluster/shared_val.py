"""Re-measure the SFT validation loss of every data scene on one shared validation file (`analyze --val FILE`).

Data selection ranks data sets by their minimum validation loss, which only means something when every loss
comes from the same validation set (the paper's Val-199). Runs that validated on their own splits are made
comparable here: each scene's saved SFT checkpoints (Hugging Face folders) are loaded on this machine's CPU and
scored on the file with the learner's measure, the mean next-token NLL over response tokens (eos included),
with the scene's own prompt template and max_len.
"""

from __future__ import annotations

import os

from plasticity.selection import val_set_fingerprint


def scene_checkpoints(scene) -> list[tuple[int, str]]:
    """(step, folder) of every SFT validation checkpoint the scene's runs name, by step (first run wins)."""
    found: dict[int, str] = {}
    for run in scene.runs:
        for row in run.rows:
            if row.get("phase") == "sft" and row.get("val_loss") is not None and row.get("checkpoint"):
                # Relative to the run folder, or absolute (a branch's rows name its trunk's checkpoints).
                found.setdefault(int(row["step"]), os.path.join(run.path, row["checkpoint"]))
    return sorted(found.items())


def _data_settings(scene) -> dict:
    data = next((r.config.get("data") for r in scene.runs if r.config.get("data")), None) or {}
    columns = data.get("columns") or {}
    return {
        "max_len": int(data.get("max_len", 96)),
        "prompt_template": data.get("prompt_template", "{prompt}"),
        "columns": {k: columns.get(k, k) for k in ("prompt", "response")},
    }


def checkpoint_val_loss(model_dir: str, examples: list[dict], batch_size: int = 64) -> float:
    """Mean NLL of the response tokens (loss_mask) of `examples` under the checkpoint, as the learner's
    eval_loss computes it: summed over every token of every row, divided by the token count."""
    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.eval()
    pad = model.config.pad_token_id if model.config.pad_token_id is not None else 0
    total, count = 0.0, 0.0
    with torch.no_grad():
        for i in range(0, len(examples), batch_size):
            chunk = examples[i : i + batch_size]
            width = max(len(e["input_ids"]) for e in chunk)
            ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            attn = torch.zeros((len(chunk), width), dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.float32)
            for j, e in enumerate(chunk):
                n = len(e["input_ids"])
                ids[j, :n] = torch.tensor(e["input_ids"])
                attn[j, :n] = 1
                mask[j, :n] = torch.tensor(e["loss_mask"], dtype=torch.float32)
            logits = model(input_ids=ids, attention_mask=attn).logits[:, :-1].float()
            nll = F.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="none"
            )
            total += float((nll.view(len(chunk), -1) * mask[:, 1:]).sum())
            count += float(mask[:, 1:].sum())
    return total / max(count, 1.0)


def remeasure_scenes(scenes: list, val_file: str) -> dict[str, dict]:
    """Per scene: the validation loss of each of its SFT checkpoints on val_file, and their minimum.

    A checkpoint folder deleted since (checkpoint.keep_last_hf) is skipped and counted; a scene with none left
    is an error naming it."""
    from transformers import AutoTokenizer

    from switchpoint.data import load_rows, tokenize_sft

    if not os.path.isfile(val_file):
        raise FileNotFoundError(f"--val {val_file}: no such file")
    out = {}
    for scene in scenes:
        ckpts = scene_checkpoints(scene)
        kept = [(step, path) for step, path in ckpts if os.path.isfile(os.path.join(path, "config.json"))]
        if not kept:
            raise ValueError(
                f"--val: scene {scene.name!r} has no SFT checkpoint folder left to re-measure "
                f"({len(ckpts)} named in its metrics.jsonl, none on disk)"
            )
        settings = _data_settings(scene)
        rows = load_rows(
            val_file, columns=settings["columns"], required=("prompt", "response"), split="--val"
        )
        tokenizer = AutoTokenizer.from_pretrained(kept[0][1])
        examples = tokenize_sft(
            rows, tokenizer, max_len=settings["max_len"], prompt_template=settings["prompt_template"]
        )
        losses = [checkpoint_val_loss(path, examples) for _, path in kept]
        best = min(range(len(losses)), key=losses.__getitem__)
        out[scene.name] = {
            "steps": [step for step, _ in kept],
            "val_losses": losses,
            "min_val_loss": losses[best],
            "argmin_step": kept[best][0],
            "missing_checkpoints": len(ckpts) - len(kept),
            "fingerprint": val_set_fingerprint(rows),
        }
    return out
