"""Resolve a run's inputs: the model folder (built for the tiny default) and the four data splits."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass

from switchpoint.checks import check_model_folder, check_output_dir, load_tokenizer
from switchpoint.config import Config, ConfigError
from switchpoint.data import format_prompt, load_rows, row_label


@dataclass
class Splits:
    sft_train: list[dict]
    """SFT trajectories: prompt, response, answer."""
    sft_val: list[dict]
    """Validation trajectories for the SFT loss curve."""
    rl: list[dict]
    """RL prompts with reference answers."""
    eval: list[dict]
    """Held-out prompts with reference answers."""


def resolve_paths(cfg: Config) -> Config:
    """Make every path absolute against the current directory, so actors on any worker agree."""
    cfg.model.path = os.path.abspath(cfg.model.path)
    cfg.run.output_dir = os.path.abspath(cfg.run.output_dir)
    cfg.data.dir = os.path.abspath(cfg.data.dir)
    for key in ("sft_train_path", "sft_val_path", "rl_path", "eval_path"):
        if getattr(cfg.data, key):
            setattr(cfg.data, key, os.path.abspath(getattr(cfg.data, key)))
    return cfg


def tiny_model_path(cfg: Config) -> str:
    """The tiny default's folder: one per shape and seed under model.path, so a changed knob never reuses
    a model built for other settings."""
    t = cfg.model.tiny
    stamp = (
        f"h{t.hidden_size}_i{t.intermediate_size}_l{t.num_hidden_layers}_a{t.num_attention_heads}"
        f"_p{t.max_position_embeddings}_s{cfg.run.seed}"
    )
    return os.path.join(cfg.model.path, stamp)


def ensure_model(cfg: Config) -> str:
    """The model folder the actors load: model.path, or (build_tiny) the tiny model built on first use."""
    path = cfg.model.path
    if cfg.model.build_tiny:
        path = tiny_model_path(cfg)
        if not os.path.isdir(path):
            from switchpoint.tiny_model import build_tiny_model

            t = cfg.model.tiny
            # Build beside the target and rename: concurrent runs never see a half-written folder.
            tmp = f"{path}.tmp-{os.getpid()}"
            try:
                build_tiny_model(
                    tmp,
                    hidden_size=t.hidden_size,
                    intermediate_size=t.intermediate_size,
                    num_hidden_layers=t.num_hidden_layers,
                    num_attention_heads=t.num_attention_heads,
                    num_key_value_heads=t.num_attention_heads,
                    max_position_embeddings=t.max_position_embeddings,
                    seed=cfg.run.seed,
                    overwrite=True,
                )
            except OSError as e:
                shutil.rmtree(tmp, ignore_errors=True)
                raise ConfigError(
                    f"cannot build the tiny model in {cfg.model.path} ({e.strerror or e}); config key 'model.path'"
                ) from None
            try:
                os.rename(tmp, path)
            except OSError:  # another run built it first
                shutil.rmtree(tmp, ignore_errors=True)
    elif not os.path.isdir(path):
        raise ConfigError(f"model folder not found: {path} (config key 'model.path')")
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise ConfigError(
            f"model folder {path} has no config.json: not a Hugging Face model folder "
            "(config key 'model.path')"
        )
    return path


def _synthetic_paths(cfg: Config) -> dict[str, str]:
    from switchpoint.synthetic import write_splits

    d = cfg.data
    knobs = {
        "difficulty": d.difficulty,
        "n_sft_train": d.n_sft_train,
        "n_sft_val": d.n_sft_val,
        "n_rl": d.n_rl,
        "n_eval": d.n_eval,
        "seed": cfg.run.seed,
    }
    # One folder per knob setting, so changing a knob never reuses stale files.
    folder = os.path.join(
        d.dir, "d{difficulty}_n{n_sft_train}_v{n_sft_val}_r{n_rl}_e{n_eval}_s{seed}".format(**knobs)
    )
    manifest = os.path.join(folder, "manifest.json")
    if not os.path.isfile(manifest):
        try:
            return write_splits(folder, **knobs)
        except OSError as e:
            raise ConfigError(
                f"cannot write the synthetic data to {folder} ({e.strerror or e}); config key 'data.dir'"
            ) from None
    try:
        with open(manifest) as f:
            json.load(f)
    except (OSError, ValueError) as e:
        raise ConfigError(
            f"synthetic data manifest {manifest} is unreadable ({e}); delete {folder}"
        ) from None
    return {name: os.path.join(folder, f"{name}.parquet") for name in ("sft_train", "sft_val", "rl", "eval")}


def load_splits(cfg: Config) -> tuple[Splits, dict[str, str]]:
    if cfg.data.source == "synthetic":
        paths = _synthetic_paths(cfg)
        if cfg.data.sft_val_path:  # one validation set shared by every data scene (the paper's Val-199)
            paths["sft_val"] = cfg.data.sft_val_path
    else:
        paths = {
            "sft_train": cfg.data.sft_train_path,
            "sft_val": cfg.data.sft_val_path,
            "rl": cfg.data.rl_path,
            "eval": cfg.data.eval_path,
        }
    columns = {
        "prompt": cfg.data.columns.prompt,
        "response": cfg.data.columns.response,
        "answer": cfg.data.columns.answer,
    }
    need = {
        "sft_train": ("prompt", "response"),
        "sft_val": ("prompt", "response"),
        "rl": ("prompt", "answer"),
        "eval": ("prompt", "answer"),
    }
    from trainers.objectives import rl_objective

    if rl_objective(cfg.rl.algorithm).needs_expert:  # LUFFY & co.: RL groups use the expert trajectory
        need["rl"] = ("prompt", "answer", "response")
    rows = {}
    for name, path in paths.items():
        cols = {k: v for k, v in columns.items() if k in need[name]}
        rows[name] = load_rows(path, columns=cols, required=need[name], split=name)
        if not rows[name]:
            raise ConfigError(f"data split {name!r} at {path} has no rows")
    return Splits(**rows), paths


def check_inputs(cfg: Config) -> None:
    """Everything about the model and the data that can fail, checked in this process before Ray starts:
    the model folder (files, vLLM architecture, tokenizer with eos), every data row, and prompts that would not
    fit data.max_len (SFT) or the model's positions (RL and held-out prompts); last, that run.output_dir takes
    a file (so a bad model or data row leaves no empty output folder behind)."""
    path = ensure_model(cfg)
    check_model_folder(cfg, path, check_architecture=not cfg.model.build_tiny)  # we build Llama ourselves
    tokenizer = load_tokenizer(path)
    splits, paths = load_splits(cfg)
    with open(os.path.join(path, "config.json")) as f:
        max_positions = json.load(f).get("max_position_embeddings")
    limits = {"sft_train": cfg.data.max_len, "sft_val": cfg.data.max_len}
    if isinstance(max_positions, int):
        limits.update(rl=max_positions, eval=max_positions)
    for name, limit in limits.items():
        rows = getattr(splits, name)
        prompts = [format_prompt(row, cfg.data.prompt_template) for row in rows]
        lengths = [len(ids) for ids in tokenizer(prompts, add_special_tokens=False)["input_ids"]]
        index = next((i for i, n in enumerate(lengths) if n >= limit), None)
        if index is None:
            continue
        where = f"{name} file {paths[name]}: {row_label(paths[name], index)}"
        if name.startswith("sft"):
            raise ConfigError(
                f"{where}: the prompt alone is {lengths[index]} tokens and config key 'data.max_len' is {limit}, "
                "so no response token would be trained on; raise data.max_len or shorten the prompt"
            )
        raise ConfigError(
            f"{where}: the prompt is {lengths[index]} tokens, the model takes {limit} "
            f"(max_position_embeddings of {path}), so vLLM cannot generate for it; shorten or drop the row"
        )
    check_output_dir(cfg.run.output_dir)
