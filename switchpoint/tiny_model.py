"""The tiny default model: a character-level tokenizer and a random-init Llama, saved as one HF folder.

Nothing is downloaded. The folder holds config.json, generation_config.json, model.safetensors,
tokenizer.json and tokenizer_config.json, so AutoTokenizer / AutoModelForCausalLM and vLLM load it
exactly like a real checkpoint, and every code path that loads a checkpoint is the one that runs.

The tokenizer maps every character to its own token (digits included, which suits arithmetic) and
decodes by plain concatenation, so decode(encode(text)) == text for any text made of vocabulary
characters. It has no post-processor: encoding never adds <s> or </s>; callers append eos themselves.
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

PAD_TOKEN = "<pad>"
BOS_TOKEN = "<s>"
EOS_TOKEN = "</s>"
UNK_TOKEN = "<unk>"
SPECIAL_TOKENS = (PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, UNK_TOKEN)
"""Special tokens, with ids 0..3 in this order."""

BASE_CHARS = "\n" + "".join(chr(code) for code in range(32, 127))
"""Newline plus every printable ASCII character (space included): covers the synthetic task and templates."""

HEAD_DIM = 64
"""Attention head width; vLLM's CPU attention refuses small head sizes such as 16."""


def build_tokenizer(extra_chars: str = "") -> PreTrainedTokenizerFast:
    """A character-level fast tokenizer over BASE_CHARS plus `extra_chars` (duplicates ignored)."""
    if not isinstance(extra_chars, str):
        raise ValueError(f"extra_chars must be a str, got {type(extra_chars).__name__}")
    chars = list(dict.fromkeys(BASE_CHARS + extra_chars))
    vocab = {token: index for index, token in enumerate([*SPECIAL_TOKENS, *chars])}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK_TOKEN))
    # "[\s\S]" matches any single character, newline included; each becomes its own token.
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()  # join tokens with no separator, so spaces round-trip exactly
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        unk_token=UNK_TOKEN,
        clean_up_tokenization_spaces=False,
    )


def _check_positive_int(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def build_tiny_model(
    out_dir: str | Path,
    *,
    hidden_size: int = 128,
    intermediate_size: int = 512,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 2,
    num_key_value_heads: int = 2,
    max_position_embeddings: int = 128,
    seed: int = 0,
    overwrite: bool = False,
) -> str:
    """Build the tokenizer and a random-init LlamaForCausalLM (seeded) and save both into `out_dir`.

    Returns the folder path. Refuses a folder that already holds files unless overwrite=True.
    """
    sizes = {
        "hidden_size": hidden_size,
        "intermediate_size": intermediate_size,
        "num_hidden_layers": num_hidden_layers,
        "num_attention_heads": num_attention_heads,
        "num_key_value_heads": num_key_value_heads,
        "max_position_embeddings": max_position_embeddings,
    }
    for name, value in sizes.items():
        _check_positive_int(name, value)
    if hidden_size != num_attention_heads * HEAD_DIM:
        raise ValueError(
            f"hidden_size must equal num_attention_heads * {HEAD_DIM} (head_dim is fixed at {HEAD_DIM} "
            f"for vLLM on CPU), got hidden_size={hidden_size}, num_attention_heads={num_attention_heads}"
        )
    if num_attention_heads % num_key_value_heads != 0:
        raise ValueError(
            f"num_attention_heads ({num_attention_heads}) must be a multiple of "
            f"num_key_value_heads ({num_key_value_heads})"
        )
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an int, got {seed!r}")

    # Imported here: torch and the Llama modeling code take seconds to import, and callers that only
    # need the tokenizer should not pay for them.
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"out_dir {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ValueError(f"out_dir {out} is not empty; pass overwrite=True to replace the model in it")
    out.mkdir(parents=True, exist_ok=True)

    tokenizer = build_tokenizer()
    tokenizer.model_max_length = max_position_embeddings
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads,
        head_dim=HEAD_DIM,
        max_position_embeddings=max_position_embeddings,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        dtype="float32",
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model.save_pretrained(out)  # safetensors is the only format transformers 5 writes
    tokenizer.save_pretrained(out)
    return str(out)
