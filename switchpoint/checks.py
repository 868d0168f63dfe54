"""Checks of a run's inputs beyond one key's type and range: settings that contradict each other, the model
folder (files, architecture, tokenizer), the output folder. Each raises one ConfigError line naming the key,
file or path; all run before Ray starts, so a bad input never costs a started cluster or a finished phase.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import logging
import math
import os
from typing import Any

from switchpoint.config import Config, ConfigError

MAX_VERIFIER_TIMEOUT_S = 600.0
"""A verifier item that needs more than this is hung; the pool would wait this long per such item."""

WEIGHT_PATTERNS = (
    "*.safetensors",
    "pytorch_model*.bin",
    "*.safetensors.index.json",
    "pytorch_model.bin.index.json",
)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model")
TRACKERS = ("tensorboard", "wandb")
"""Values of run.report_to (actors/metrics_export.py writes each)."""


def _non_finite(obj: Any, prefix: str = "") -> str | None:
    """The first float key holding nan or inf: such values pass every `<= 0` range check silently."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            found = _non_finite(value, f"{prefix}{f.name}.")
            if found:
                return found
        elif isinstance(value, float) and not math.isfinite(value):
            return f"{prefix}{f.name}"
    return None


def check_config(cfg: Config) -> None:
    """Rules that involve several keys, or values no range table can express."""
    bad = _non_finite(cfg)
    if bad:
        raise ConfigError(f"config key {bad!r} must be a finite number, got {_get(cfg, bad)}")
    if cfg.data.max_len < 2:
        raise ConfigError(
            f"config key 'data.max_len' must be >= 2 (a prompt token and eos), got {cfg.data.max_len}"
        )
    if cfg.rl.max_staleness not in (0, 1):
        raise ConfigError(
            f"config key 'rl.max_staleness' must be 0 (on-policy) or 1 (rollouts sampled one update ahead), "
            f"got {cfg.rl.max_staleness}"
        )
    if cfg.rl.max_staleness and cfg.rl.old_logprobs != "engine":
        raise ConfigError(
            "config key 'rl.old_logprobs' must be 'engine' with rl.max_staleness: 1: rollouts sampled ahead come "
            "from weights the learner has already updated, so only the engine's log-probs are the behaviour "
            f"policy's (got {cfg.rl.old_logprobs!r})"
        )
    sft_runs = cfg.switch.policy != "rl_only" and cfg.sft.max_steps > 0
    if sft_runs and cfg.sft.eval_every > cfg.sft.max_steps:
        raise ConfigError(
            f"config key 'sft.eval_every' ({cfg.sft.eval_every}) is larger than 'sft.max_steps' "
            f"({cfg.sft.max_steps}): SFT would validate only at its last step, so no regime can be judged; "
            "lower sft.eval_every or raise sft.max_steps"
        )
    if cfg.verifier.timeout_s > MAX_VERIFIER_TIMEOUT_S:
        raise ConfigError(
            f"config key 'verifier.timeout_s' is {cfg.verifier.timeout_s:g} s; at most {MAX_VERIFIER_TIMEOUT_S:g} s "
            "(a hung item would stall every RL step that long)"
        )
    if cfg.rl.group_size < 2:
        # Every algorithm here compares a sample with its group: with G=1 all advantages are 0, RL learns nothing.
        raise ConfigError(
            f"config key 'rl.group_size' must be >= 2 for rl.algorithm {cfg.rl.algorithm} (advantages are "
            f"relative to the group; a group of {cfg.rl.group_size} gives all zeros), got {cfg.rl.group_size}"
        )
    if not 0 <= cfg.switch.delta < cfg.switch.delta2:
        raise ConfigError(
            f"config keys 'switch.delta' ({cfg.switch.delta:g}) and 'switch.delta2' ({cfg.switch.delta2:g}) "
            "must satisfy 0 <= delta < delta2 (the Stable band lies inside the Severe threshold)"
        )
    if not 0 < cfg.rollout.gpu_memory_utilization <= 1:
        raise ConfigError(
            f"config key 'rollout.gpu_memory_utilization' must be in (0, 1], got {cfg.rollout.gpu_memory_utilization}"
        )
    if cfg.model.build_tiny:
        _check_lengths(cfg, cfg.model.tiny.max_position_embeddings, "model.tiny.max_position_embeddings")
    _check_study(cfg)
    _check_pretrain(cfg)
    _check_trackers(cfg.run.report_to)


def _check_study(cfg: Config) -> None:
    """data.layout `study`: mixes, sizes, room in every level (with the pretraining corpus) and, for the tiny
    model's character tokenizer, that the hardest row fits data.max_len, its response rollout.max_tokens and both
    the model's positions (a cut row would train on a half trajectory; a cut completion scores 0)."""
    from switchpoint import study_data

    d = cfg.data
    if d.layout == "classic":
        for key in ("shared_mix", "sft_mix"):
            if getattr(d, key):
                raise ConfigError(
                    f"config key 'data.{key}' is used only with data.layout: study (got layout classic)"
                )
        if d.sft_fraction != 1.0:
            raise ConfigError(
                "config key 'data.sft_fraction' is used only with data.layout: study (got layout classic)"
            )
        return
    if d.source != "synthetic":
        raise ConfigError(
            "config key 'data.layout' is 'study', which draws the synthetic task: needs data.source: synthetic"
        )
    for key in ("shared_mix", "sft_mix"):
        if key == "sft_mix" and not d.sft_mix:
            d.sft_mix = list(d.shared_mix)  # empty: the SFT set has the shared splits' mix
        try:
            study_data.check_mix(getattr(d, key), f"config key 'data.{key}'")
        except ValueError as e:
            raise ConfigError(str(e)) from None
    for key in ("n_sft_train", "n_sft_val", "n_rl", "n_eval"):
        if getattr(d, key) < 1:
            raise ConfigError(
                f"config key 'data.{key}' must be > 0 with data.layout: study, got {getattr(d, key)}"
            )
    if not 0 < d.sft_fraction <= 1 or study_data.fraction_size(d.n_sft_train, d.sft_fraction) < 1:
        raise ConfigError(
            f"config key 'data.sft_fraction' must be in (0, 1] and leave at least one of data.n_sft_train's "
            f"{d.n_sft_train} rows, got {d.sft_fraction:g}"
        )
    p = cfg.model.pretrain
    try:
        study_data.check_room(
            d.shared_mix, d.sft_mix, d.n_sft_train, d.n_sft_val, d.n_rl, d.n_eval,
            p.difficulty if p.steps else 0, p.corpus_size if p.steps else 0,
        )  # fmt: skip
    except study_data.RoomError as e:
        keys = {
            "shared": "config keys 'data.n_sft_val', 'data.n_rl', 'data.n_eval' (with data.shared_mix)",
            "sft": "config key 'data.n_sft_train' (with data.sft_mix)",
            "corpus": "config key 'model.pretrain.corpus_size'",
        }[e.part]
        raise ConfigError(f"{keys}: {e}; lower it or move weight to a larger difficulty") from None
    if not cfg.model.build_tiny:
        return  # another tokenizer: lengths in tokens are checked on the tokenized sets
    level = max(study_data.top_level(d.shared_mix), study_data.top_level(d.sft_mix))
    prompt, response = study_data.longest_row(level)
    prompt += len(d.prompt_template.format(prompt=""))
    where = f"the longest difficulty-{level} row of data.shared_mix / data.sft_mix"
    if prompt + response + 1 > d.max_len:
        raise ConfigError(
            f"config key 'data.max_len' ({d.max_len}) is shorter than {where} ({prompt + response + 1} tokens with "
            "eos): SFT would train on cut trajectories; raise data.max_len"
        )
    if response + 1 > cfg.rollout.max_tokens:
        raise ConfigError(
            f"config key 'rollout.max_tokens' ({cfg.rollout.max_tokens}) is shorter than the response of {where} "
            f"({response + 1} tokens with eos): such completions would be cut before their answer; raise it"
        )
    positions = cfg.model.tiny.max_position_embeddings
    if prompt + cfg.rollout.max_tokens > positions:
        raise ConfigError(
            f"config key 'model.tiny.max_position_embeddings' ({positions}) cannot hold the {prompt}-token prompt of "
            f"{where} plus rollout.max_tokens ({cfg.rollout.max_tokens}); raise it or lower rollout.max_tokens"
        )


def _check_pretrain(cfg: Config) -> None:
    p = cfg.model.pretrain
    if p.steps == 0:
        return
    if not cfg.model.build_tiny:
        raise ConfigError(
            "config key 'model.pretrain.steps' pretrains the built tiny model: needs model.build_tiny: true"
        )
    if cfg.data.layout != "study":
        raise ConfigError(
            "config key 'model.pretrain.steps' needs data.layout: study, whose splits leave the corpus's problems "
            "out (the classic layout may draw any problem)"
        )
    from switchpoint import study_data

    if not study_data.enumerable(p.difficulty):
        raise ConfigError(
            f"config key 'model.pretrain.difficulty' is {p.difficulty}: too many problems to enumerate and keep "
            "apart from the splits; use 1 or 2"
        )
    prompt, response = study_data.longest_row(p.difficulty)
    length = prompt + len(cfg.data.prompt_template.format(prompt="")) + response + 1
    if length > cfg.model.tiny.max_position_embeddings:
        raise ConfigError(
            f"config key 'model.pretrain.difficulty' ({p.difficulty}) has rows of {length} tokens, more than "
            f"model.tiny.max_position_embeddings ({cfg.model.tiny.max_position_embeddings})"
        )


def _check_trackers(report_to: list) -> None:
    """Checked here, not where the Controller opens the trackers: that is after Ray and the actors started."""
    unknown = [t for t in report_to if t not in TRACKERS]
    if unknown:
        raise ConfigError(
            f"config key 'run.report_to' names {', '.join(map(repr, unknown))}; each entry one of "
            f"{', '.join(TRACKERS)} ([] for none)"
        )
    if "wandb" in report_to:
        import importlib.util

        if importlib.util.find_spec("wandb") is None:
            raise ConfigError(
                "config key 'run.report_to' names wandb, but the wandb package is not installed here "
                "(pip install 'switchpoint[wandb]', or leave wandb out of run.report_to)"
            )


def _get(cfg: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


def _check_lengths(cfg: Config, max_positions: int, where: str) -> None:
    if cfg.data.max_len > max_positions:
        raise ConfigError(
            f"config key 'data.max_len' ({cfg.data.max_len}) is larger than the model's max_position_embeddings "
            f"({max_positions}, {where}); lower data.max_len"
        )
    if cfg.rollout.max_tokens >= max_positions:
        raise ConfigError(
            f"config key 'rollout.max_tokens' ({cfg.rollout.max_tokens}) leaves no room for a prompt in the model's "
            f"{max_positions} positions ({where}); lower rollout.max_tokens"
        )


def _supported_architectures() -> set[str] | None:
    """Architectures vLLM can serve for generation, read from its registry (no engine starts). None when vLLM
    is not installed here: the engines then report the problem themselves."""
    # vLLM warns about its platform (e.g. "Triton ... Disabling Triton.") while importing, before its own logging
    # is set up, so Python prints it on stderr: noise above a one-line error. Quiet its loggers for the import.
    vllm_logger = logging.getLogger("vllm")
    level = vllm_logger.level
    vllm_logger.setLevel(logging.ERROR)
    try:
        from vllm.model_executor.models import registry
    except ImportError:
        return None
    finally:
        vllm_logger.setLevel(level)
    # Pooling-only archs (BertModel, ...) are registered too but cannot generate; prefer the generation tables.
    tables = ("_TEXT_GENERATION_MODELS", "_MULTIMODAL_MODELS", "_TRANSFORMERS_BACKEND_MODELS")
    archs = set().union(*(getattr(registry, t, {}) for t in tables))
    return archs or set(registry.ModelRegistry.get_supported_archs())


def check_model_folder(cfg: Config, path: str, check_architecture: bool = True) -> None:
    """A Hugging Face folder the learner and vLLM can both load: config.json with a supported architecture,
    weights, a tokenizer with an eos token, and room for data.max_len and rollout.max_tokens."""
    where = f"model folder {path} (config key 'model.path')"
    config_path = os.path.join(path, "config.json")
    try:
        with open(config_path, encoding="utf-8") as f:
            hf = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{config_path} cannot be read as JSON ({e}); {where}") from None
    if not isinstance(hf, dict):
        raise ConfigError(f"{config_path} must hold a JSON object; {where}")
    archs = hf.get("architectures")
    if not archs or not isinstance(archs, list):
        raise ConfigError(
            f"{config_path} has no 'architectures' list: vLLM cannot tell which model to build; {where}"
        )
    if check_architecture:
        supported = _supported_architectures()
        if supported is not None and not any(a in supported for a in archs):
            raise ConfigError(
                f"{config_path}: architecture {', '.join(map(str, archs))} is not one vLLM can generate with "
                f"(vllm.model_executor.models.ModelRegistry); {where}"
            )
    if not any(glob.glob(os.path.join(path, p)) for p in WEIGHT_PATTERNS):
        raise ConfigError(f"{where} has no weights (*.safetensors or pytorch_model*.bin)")
    if not any(os.path.isfile(os.path.join(path, name)) for name in TOKENIZER_FILES):
        raise ConfigError(f"{where} has no tokenizer files (one of {', '.join(TOKENIZER_FILES)})")
    max_positions = hf.get("max_position_embeddings")
    if isinstance(max_positions, int) and not isinstance(max_positions, bool):
        _check_lengths(cfg, max_positions, f"max_position_embeddings in {config_path}")


def load_tokenizer(path: str):
    """The model folder's tokenizer; one line naming the folder when it cannot load or has no eos token
    (SFT targets end with eos and RL completions stop at it)."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except Exception as e:  # transformers raises OSError, ValueError, KeyError, ... for a broken folder
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(
            f"tokenizer in model folder {path} cannot load ({first}); config key 'model.path'"
        ) from None
    if tokenizer.eos_token_id is None:
        raise ConfigError(
            f"tokenizer in model folder {path} has no eos token (set eos_token in its tokenizer_config.json); "
            "config key 'model.path'"
        )
    return tokenizer


def check_output_dir(path: str) -> None:
    """run.output_dir must take a new folder and a file: checked by writing one, so a read-only mount or a full
    disk stops the run now and not at its first checkpoint."""
    probe = os.path.join(path, f".switchpoint-write-check-{os.getpid()}")
    try:
        os.makedirs(path, exist_ok=True)
        with open(probe, "w") as f:
            f.write("ok\n")
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise ConfigError(
            f"output folder {path} is not writable ({e.strerror or e}); config key 'run.output_dir'"
        ) from None
    finally:
        try:
            os.remove(probe)
        except OSError:
            pass


def needs_engines(cfg: Config, from_trunk: bool = False) -> bool:
    """Whether a run starts vLLM engines and verifiers: for RL (any policy but `never`, or a branch from a
    trunk), and for held-out accuracy during SFT (sft.heldout_every), also in a pure-SFT run such as a trunk."""
    return cfg.switch.policy != "never" or from_trunk or cfg.sft.heldout_every > 0
