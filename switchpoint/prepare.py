"""Resolve a run's inputs: the model folder (built for the tiny default) and the four data splits."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass

from switchpoint.config import Config, ConfigError
from switchpoint.data import load_rows


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
        return write_splits(folder, **knobs)
    with open(manifest) as f:
        json.load(f)
    return {name: os.path.join(folder, f"{name}.parquet") for name in ("sft_train", "sft_val", "rl", "eval")}


def load_splits(cfg: Config) -> tuple[Splits, dict[str, str]]:
    if cfg.data.source == "synthetic":
        paths = _synthetic_paths(cfg)
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
    rows = {}
    for name, path in paths.items():
        cols = {k: v for k, v in columns.items() if k in need[name]}
        rows[name] = load_rows(path, columns=cols, required=need[name], split=name)
        if not rows[name]:
            raise ConfigError(f"data split {name!r} at {path} has no rows")
    return Splits(**rows), paths
