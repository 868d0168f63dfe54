"""Accuracy of a Hugging Face model folder on prompt/answer rows with plain `generate` (no Ray, no vLLM).

For checks that need no engine: the pretrained base model's start (tests, `python -m switchpoint.hf_eval`). Runs
score the same way through vLLM (actors/); here sampling is full-vocabulary at the given temperature (top_k off,
top_p 1), as the rollouts sample.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict

from switchpoint.answers import extract_final_answer, matches_reference
from switchpoint.data import render_prompt


def completions(
    model_dir: str,
    prompts: list[str],
    *,
    samples: int = 1,
    temperature: float = 0.0,
    max_new_tokens: int = 64,
    seed: int = 0,
    prompt_template: str = "{prompt}",
) -> list[list[str]]:
    """`samples` completions per prompt (greedy when temperature is 0), cut at eos."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    encoded = [tokenizer.encode(render_prompt(p, prompt_template), add_special_tokens=False) for p in prompts]
    by_length = defaultdict(list)  # equal lengths batch without padding, so no position shifts by pad tokens
    for index, ids in enumerate(encoded):
        by_length[len(ids)].append(index)
    torch.manual_seed(seed)
    out: list[list[str]] = [[] for _ in prompts]
    sampling = temperature > 0
    with torch.no_grad():
        for length in sorted(by_length):
            indices = by_length[length]
            ids = torch.tensor([encoded[i] for i in indices])
            sample_kwargs = {"temperature": temperature, "top_k": 0, "top_p": 1.0} if sampling else {}
            generated = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=max_new_tokens,
                num_return_sequences=samples if sampling else 1,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
                do_sample=sampling,
                **sample_kwargs,
            )
            texts = tokenizer.batch_decode(generated[:, length:], skip_special_tokens=True)
            per = samples if sampling else 1
            for row, index in enumerate(indices):
                group = texts[row * per : (row + 1) * per]
                out[index] = group if sampling else group * samples
    return out


def accuracy(model_dir: str, rows: list[dict], **kwargs) -> dict:
    """{accuracy: mean exact-match over every sample, solved: prompts with a correct sample, ...} of `rows`."""
    texts = completions(model_dir, [r["prompt"] for r in rows], **kwargs)
    correct = [
        [matches_reference(extract_final_answer(t), r["answer"]) for t in ts] for ts, r in zip(texts, rows)
    ]
    n = sum(len(c) for c in correct)
    return {
        "accuracy": sum(map(sum, correct)) / n,
        "solved": sum(any(c) for c in correct) / len(rows),
        "with_answer": sum(extract_final_answer(t) is not None for ts in texts for t in ts) / n,
        "prompts": len(rows),
        "samples": n,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir")
    parser.add_argument("data", help="a split's parquet or jsonl file (prompt, answer)")
    parser.add_argument("--max-prompts", type=int, default=200)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    args = parser.parse_args(argv)
    from switchpoint.data import load_rows

    columns = {"prompt": "prompt", "answer": "answer"}
    rows = load_rows(args.data, columns=columns, required=("prompt", "answer"), split="eval")[
        : args.max_prompts
    ]
    result = accuracy(
        args.model_dir,
        rows,
        samples=args.samples,
        temperature=args.temperature,
        max_new_tokens=args.max_new_tokens,
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
