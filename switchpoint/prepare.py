"""Resolve a run's inputs: the model folder (built for the tiny default) and the four data splits."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass

from switchpoint.checks import check_model_folder, check_output_dir, load_tokenizer
from switchpoint.config import Config, ConfigError
from switchpoint.data import chat_tokenizer_or_none, load_rows
from switchpoint.prompt_dataset import PromptSetSpec, build_prompt_set, check_fits_model
from switchpoint.prompt_dataset import cached_folder as prompt_folder
from switchpoint.sft_dataset import SftSetSpec, build_sft_set, cached_folder, install, is_complete

SFT_SPLITS = ("sft_train", "sft_val")
"""Splits tokenized into cached Arrow SFT sets (switchpoint/sft_dataset.py)."""
PROMPT_SPLITS = ("rl", "eval")
"""Splits tokenized into cached Arrow prompt sets (switchpoint/prompt_dataset.py)."""


@dataclass
class Splits:
    rl: list[dict]
    """RL prompts with reference answers."""
    eval: list[dict]
    """Held-out prompts with reference answers."""


def resolve_paths(cfg: Config) -> Config:
    """Make every path absolute against the current directory, so actors on any worker agree."""
    cfg.model.path = os.path.abspath(cfg.model.path)
    cfg.run.output_dir = os.path.abspath(cfg.run.output_dir)
    cfg.data.dir = os.path.abspath(cfg.data.dir)
    cfg.data.cache_dir = os.path.abspath(cfg.data.cache_dir)
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
    """The model folder the actors load: model.path, or (build_tiny) the tiny model built on first use, pretrained
    (model.pretrain) into its own folder when asked."""
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
        if cfg.model.pretrain.steps:
            from switchpoint.pretrain import ensure_pretrained

            path = ensure_pretrained(cfg, path)
    elif not os.path.isdir(path):
        raise ConfigError(f"model folder not found: {path} (config key 'model.path')")
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise ConfigError(
            f"model folder {path} has no config.json: not a Hugging Face model folder "
            "(config key 'model.path')"
        )
    return path


def _study_paths(cfg: Config) -> dict[str, str]:
    """data.layout `study`: the shared splits' folder (one per shared setting) and the SFT set's inside it."""
    from switchpoint import study_data

    d = cfg.data
    shared = {"shared_mix": d.shared_mix, "n_sft_val": d.n_sft_val, "n_rl": d.n_rl, "n_eval": d.n_eval}
    shared["seed"] = cfg.run.seed
    n = study_data.fraction_size(d.n_sft_train, d.sft_fraction)  # a prefix: the same rows as n_sft_train=n
    folder, sft_folder = study_data.study_folders(d.dir, sft_mix=d.sft_mix, n_sft_train=n, **shared)
    try:
        paths = study_data.write_shared_splits(folder, **shared)
        paths["sft_train"] = study_data.write_sft_train(
            sft_folder, sft_mix=d.sft_mix, n_sft_train=n, **shared
        )
    except OSError as e:
        raise ConfigError(
            f"cannot write the synthetic data to {folder} ({e.strerror or e}); config key 'data.dir'"
        ) from None
    return paths


def _synthetic_paths(cfg: Config) -> dict[str, str]:
    from switchpoint.synthetic import write_splits

    d = cfg.data
    if d.layout == "study":
        return _study_paths(cfg)
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


def split_paths(cfg: Config) -> dict[str, str]:
    """The four splits' files: the synthetic ones (written on first use) or data.*_path."""
    if cfg.data.source == "synthetic":
        paths = _synthetic_paths(cfg)
        if cfg.data.sft_val_path:  # one validation set shared by every data scene (the paper's Val-199)
            paths["sft_val"] = cfg.data.sft_val_path
        return paths
    return {
        "sft_train": cfg.data.sft_train_path,
        "sft_val": cfg.data.sft_val_path,
        "rl": cfg.data.rl_path,
        "eval": cfg.data.eval_path,
    }


def load_splits(cfg: Config, paths: dict[str, str] | None = None) -> tuple[Splits, dict[str, str]]:
    """The RL and held-out rows as Python lists (prompt, answer; the response too for objectives that use the
    expert), and every split's path. A run reads them from the Arrow prompt sets instead (`prompt_specs`); this
    list path stays as the reference they are compared with and for small tools."""
    paths = paths or split_paths(cfg)
    columns = {
        "prompt": cfg.data.columns.prompt,
        "response": cfg.data.columns.response,
        "answer": cfg.data.columns.answer,
    }
    need = {"rl": ("prompt", "answer"), "eval": ("prompt", "answer")}
    from trainers.objectives import rl_objective

    if rl_objective(cfg.rl.algorithm).needs_expert:  # LUFFY & co.: RL groups use the expert trajectory
        need["rl"] = ("prompt", "answer", "response")
    rows = {}
    for name in need:
        cols = {k: v for k, v in columns.items() if k in need[name]}
        rows[name] = load_rows(paths[name], columns=cols, required=need[name], split=name)
        if not rows[name]:
            raise ConfigError(f"data split {name!r} at {paths[name]} has no rows")
    return Splits(**rows), paths


def load_val_rows(cfg: Config, paths: dict[str, str]) -> list[dict]:
    """The SFT validation rows (prompt, response) as text: what its fingerprint is taken of. Validation sets
    are small (the paper's Val-199), so reading them as lists is fine."""
    cols = {"prompt": cfg.data.columns.prompt, "response": cfg.data.columns.response}
    return load_rows(paths["sft_val"], columns=cols, required=("prompt", "response"), split="sft_val")


def sft_specs(cfg: Config, model_path: str, paths: dict[str, str]) -> dict[str, SftSetSpec]:
    d = cfg.data
    return {
        name: SftSetSpec(
            path=paths[name],
            split=name,
            prompt_column=d.columns.prompt,
            response_column=d.columns.response,
            tokenizer_dir=model_path,
            max_len=d.max_len,
            prompt_template=d.prompt_template,
            chat_template=d.chat_template,
        )
        for name in SFT_SPLITS
    }


def prompt_specs(cfg: Config, model_path: str, paths: dict[str, str]) -> dict[str, PromptSetSpec]:
    """The RL and held-out prompt sets; the RL one keeps the expert trajectory for objectives that use it."""
    from trainers.objectives import rl_objective

    d = cfg.data
    expert = rl_objective(cfg.rl.algorithm).needs_expert  # LUFFY & co.: RL groups use the expert trajectory
    return {
        name: PromptSetSpec(
            path=paths[name],
            split=name,
            prompt_column=d.columns.prompt,
            answer_column=d.columns.answer,
            response_column=d.columns.response,
            tokenizer_dir=model_path,
            with_response=expert and name == "rl",
            prompt_template=d.prompt_template,
            chat_template=d.chat_template,
        )
        for name in PROMPT_SPLITS
    }


def build_missing_sets(
    cfg: Config, model_path: str, paths: dict[str, str], max_positions: int | None = None
) -> dict[str, tuple[str, str]]:
    """{split: (cache folder, built folder or "")} for the RL and held-out prompt sets and the SFT sets: each
    found in data.cache_dir, or built now into a temporary folder (`install_sets` moves it into the cache). A
    bad row raises one ConfigError line; so does an RL or held-out prompt of max_positions tokens or more."""
    out = {}
    built: list[str] = []
    todo = [
        (name, spec, prompt_folder(spec, cfg.data.cache_dir), build_prompt_set)
        for name, spec in prompt_specs(cfg, model_path, paths).items()
    ]
    todo += [
        (name, spec, cached_folder(spec, cfg.data.cache_dir), build_sft_set)
        for name, spec in sft_specs(cfg, model_path, paths).items()
    ]
    try:
        for name, spec, folder, build in todo:
            if is_complete(folder):
                out[name] = (folder, "")
            else:
                try:
                    tmp, _ = build(spec, cfg.data.num_proc)
                except ValueError as e:
                    raise ConfigError(str(e)) from None
                built.append(tmp)
                out[name] = (folder, tmp)
            if max_positions is not None and name in PROMPT_SPLITS:
                try:
                    check_fits_model(out[name][1] or folder, name, max_positions, model_path)
                except ValueError as e:
                    raise ConfigError(str(e)) from None
    except BaseException:
        for tmp in built:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def install_sets(found: dict[str, tuple[str, str]]) -> dict[str, str]:
    return {name: install(tmp, folder) if tmp else folder for name, (folder, tmp) in found.items()}


def data_sets(cfg: Config, model_path: str, paths: dict[str, str]) -> dict[str, str]:
    """{split: cache folder} of the four tokenized sets (rl, eval, sft_train, sft_val), built where missing."""
    return install_sets(build_missing_sets(cfg, model_path, paths))


def check_inputs(cfg: Config) -> dict[str, str]:
    """Everything about the model and the data that can fail, checked in this process before Ray starts:
    the model folder (files, vLLM architecture, tokenizer with eos, a chat template if data.chat_template), every
    data row, and prompts that would not fit data.max_len (SFT) or the model's positions (RL and held-out
    prompts); last, that run.output_dir takes a file (so a bad model or data row leaves no empty output folder
    behind). The four sets are tokenized here into the cache (data.cache_dir), which is written only once all
    checks passed; returns their folders."""
    path = ensure_model(cfg)
    check_model_folder(cfg, path, check_architecture=not cfg.model.build_tiny)  # we build Llama ourselves
    tokenizer = load_tokenizer(path)
    try:
        chat_tokenizer_or_none(tokenizer, cfg.data.chat_template, f"model folder {path}")
    except ValueError as e:
        raise ConfigError(str(e)) from None
    paths = split_paths(cfg)
    with open(os.path.join(path, "config.json")) as f:
        max_positions = json.load(f).get("max_position_embeddings")
    found = build_missing_sets(cfg, path, paths, max_positions if isinstance(max_positions, int) else None)
    try:
        check_output_dir(cfg.run.output_dir)
    except BaseException:
        for _, tmp in found.values():
            if tmp:
                shutil.rmtree(tmp, ignore_errors=True)
        raise
    return install_sets(found)
