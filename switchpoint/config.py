"""Run configuration: YAML parsed once into typed dataclasses, validated with errors that name the key.

Every field has a docstring (TRL style). Actors get the slice they need (cfg.learner, cfg.rollout, ...).
"""

from __future__ import annotations

import dataclasses
import os
import typing
from dataclasses import dataclass, field
from typing import Any

import yaml


class ConfigError(ValueError):
    """A config problem; the message names the key."""


@dataclass
class RunConfig:
    name: str = "run"
    """Run name; the run folder is OUTPUT_DIR/NAME-TIMESTAMP."""
    output_dir: str = "runs"
    """Folder that receives one subfolder per run."""
    seed: int = 0
    """Seed for data order, sampling and (tiny default) model init."""
    report_to: list = field(default_factory=lambda: ["tensorboard"])
    """Experiment trackers that get every metrics row besides metrics.jsonl: `tensorboard` (event files in
    RUN_DIR/tensorboard, the plot as an image), `wandb` (offline, in RUN_DIR/wandb; needs the `wandb` extra).
    [] for none. Ray metrics (dashboard, Prometheus) are exported whenever the run is on Ray."""


@dataclass
class TinyModelConfig:
    hidden_size: int = 128
    """Hidden width of the random-init Llama model."""
    intermediate_size: int = 512
    """MLP width."""
    num_hidden_layers: int = 2
    """Transformer blocks."""
    num_attention_heads: int = 2
    """Heads; head_dim is fixed at 64 (vLLM's CPU backend refuses smaller)."""
    max_position_embeddings: int = 128
    """Longest sequence the model accepts."""


@dataclass
class PretrainConfig:
    steps: int = 0
    """Optimizer steps of next-token pretraining of the built tiny model (switchpoint/pretrain.py), so pure RL has a
    base that can already answer some prompts; 0: off (random init). The result is cached beside the random-init
    folder, one per setting, and rebuilt identically."""
    corpus_size: int = 600
    """Problems in the corpus: the last ones of `difficulty`'s seeded order, whose front the study splits take
    from, so the corpus meets no split (checked against the splits' needs)."""
    difficulty: int = 1
    """Difficulty of the corpus problems (1 or 2: the levels small enough to enumerate and keep apart)."""
    batch_size: int = 32
    """Sequences per step (prompt, expert response, eos; loss on every token)."""
    lr: float = 0.003
    """Peak AdamW learning rate (cosine decay to 10% after warm-up)."""
    warmup_steps: int = 20
    """Linear warm-up steps."""


@dataclass
class ModelConfig:
    path: str = "artifacts/tiny/model"
    """Hugging Face model folder (config.json, weights, tokenizer). Everything loads from here."""
    build_tiny: bool = False
    """Build a random-init tiny Llama and its tokenizer at `path` when the folder does not exist yet."""
    tiny: TinyModelConfig = field(default_factory=TinyModelConfig)
    """Shape of the tiny model (used only with build_tiny)."""
    dtype: str = "auto"
    """Training/inference dtype: float32, bfloat16 or auto (float32 on CPU, bfloat16 on GPU)."""
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    """Pretraining of the tiny model on a corpus disjoint from every split (build_tiny and data.layout `study`)."""


@dataclass
class ColumnsConfig:
    prompt: str = "prompt"
    """Column holding the problem text."""
    response: str = "response"
    """Column holding the expert trajectory (e.g. `trajectory` or `solution` in other data sets)."""
    answer: str = "answer"
    """Column holding the reference final answer the verifier checks against."""


@dataclass
class DataConfig:
    source: str = "synthetic"
    """`synthetic` (the embedded arithmetic task, written to `dir`) or `files` (the *_path fields)."""
    dir: str = "artifacts/tiny/data"
    """Where the synthetic splits are written (parquet)."""
    difficulty: int = 1
    """Synthetic task difficulty (more operations per problem); layout `classic` only (`study` uses the mixes)."""
    layout: str = "classic"
    """Synthetic: how the splits are drawn. `classic`: one seeded sample of `difficulty` problems cut into the four
    splits, so every knob moves every split. `study` (switchpoint/study_data.py): the SFT validation, RL and
    held-out splits are drawn with `shared_mix` and stay byte-identical whatever the SFT knobs; the SFT set is the
    first n_sft_train rows of one `sft_mix` sequence (a smaller set is a subset of a larger one with the same mix;
    two mixes of one size differ only in difficulty); all of them stay disjoint from model.pretrain's corpus."""
    shared_mix: list = field(default_factory=list)
    """layout `study`: weights of difficulties 1, 2, ... in the SFT validation, RL and held-out splits, e.g.
    [1, 1, 1] (required there; empty with `classic`)."""
    sft_mix: list = field(default_factory=list)
    """layout `study`: weights of difficulties 1, 2, ... in the SFT train set, e.g. easy [4, 2, 1], uniform
    [1, 1, 1], hard [1, 2, 4] (the paper's Easy/Uniform/Hard102K shape; empty: shared_mix)."""
    n_sft_train: int = 2000
    """Synthetic: expert trajectories for SFT (the data-size knob; with layout `study`, the largest set's size)."""
    sft_fraction: float = 1.0
    """layout `study`: train on the first round(sft_fraction * n_sft_train) rows of the SFT set, e.g. 0.125, 0.25,
    0.5, 1: nested subsets of the largest set, whose room in every level is what is checked (1 with `classic`)."""
    n_sft_val: int = 200
    """Synthetic: held-out trajectories for the SFT validation loss."""
    n_rl: int = 2000
    """Synthetic: prompts for RL."""
    n_eval: int = 200
    """Synthetic: held-out prompts for accuracy."""
    sft_train_path: str = ""
    """files: SFT trajectories (.jsonl or .parquet)."""
    sft_val_path: str = ""
    """Validation trajectories for the SFT loss (the paper's Val-199 shape): required with `files`; with
    `synthetic`, set it to measure every data scene on one shared validation file instead of each scene's own
    split (data selection ranks only runs measured on the same validation set)."""
    rl_path: str = ""
    """files: RL prompts with reference answers."""
    eval_path: str = ""
    """files: held-out prompts with reference answers."""
    columns: ColumnsConfig = field(default_factory=ColumnsConfig)
    """Column names in the data files."""
    prompt_template: str = "{prompt}"
    """Python format string applied to the prompt before tokenizing, e.g. a chat wrapper."""
    max_len: int = 96
    """Maximum tokens of prompt + response for SFT (longer rows are truncated)."""
    chat_template: bool = False
    """Wrap each prompt (after prompt_template) as a user turn in the tokenizer's chat template
    (`apply_chat_template`, generation prompt added), for SFT, RL and held-out prompts alike; an instruct model's
    eos should be its end-of-turn token. The tokenizer must have a chat template."""
    cache_dir: str = "artifacts/data_cache"
    """Where the tokenized SFT, RL and held-out sets are cached as Arrow files, one folder per data file content,
    tokenizer and settings. Learner ranks read it, so on several nodes it must be shared storage."""
    num_proc: int = 0
    """Processes that tokenize a data set (datasets' map; 0: up to 8, by the machine's cores)."""


@dataclass
class LearnerConfig:
    num_ranks: int = 2
    """DeepSpeed data-parallel ranks (Ray actors in one placement group)."""
    cpus_per_rank: float = 1.0
    """CPUs reserved per rank."""
    gpus_per_rank: float = 0.0
    """GPUs per rank (0 on a CPU machine: DeepSpeed then uses gloo)."""
    zero_stage: int = 1
    """DeepSpeed ZeRO stage 0-3."""
    lr: float = 1e-3
    """Peak learning rate of the SFT phase."""
    rl_lr: float = 0.0
    """Learning rate of the RL phase (0: keep `lr`)."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    warmup_steps: int = 20
    """Linear warm-up steps at the start of SFT."""
    lr_schedule: str = "constant"
    """SFT learning rate after warm-up: constant, or cosine decay to min_lr_ratio * lr over decay_steps."""
    min_lr_ratio: float = 0.1
    """Floor of the cosine schedule, as a fraction of lr."""
    decay_steps: int = 0
    """Length of the cosine decay (0: sft.max_steps)."""
    grad_clip: float = 1.0
    """Gradient-norm clip."""
    betas: list = field(default_factory=lambda: [0.9, 0.999])
    """AdamW (beta1, beta2) of the SFT phase (the paper's SFT: 0.9, 0.95)."""
    rl_betas: list = field(default_factory=list)
    """AdamW (beta1, beta2) of the RL phase (the paper's DAPO: 0.9, 0.999); empty: keep `betas`."""
    reset_optimizer_at_switch: bool = True
    """Start RL with a new AdamW (True: fresh moments, as the paper's RL runs start from the SFT checkpoint's
    weights) or carry SFT's moments over (False). Recorded in the run."""
    micro_batch_size: int = 0
    """Sequences per forward/backward on a rank; gradients accumulate to one step (0: the whole shard at once).
    Rows are grouped by length, so each micro-batch pads little."""
    torch_threads: int = 1
    """Intra-op threads per rank (keep 1 on small CPU machines)."""


@dataclass
class SFTConfig:
    batch_size: int = 32
    """Global sequences per optimizer step (split across ranks)."""
    max_steps: int = 400
    """SFT step budget; the run switches (or stops, policy `never`) here at the latest."""
    eval_every: int = 20
    """Counts SFT steps: validation loss + a Hugging Face checkpoint (a branch point) + a resume state every this
    many SFT optimizer steps (a validation also at step 0 and at sft.max_steps)."""
    stop_after_severe: int = 0
    """Stop SFT once the online regime has been Severe for this many validations in a row (0: never; useful
    for trunks, whose tail past Severe only costs compute)."""
    heldout_every: int = 0
    """Counts validations (not steps): held-out accuracy during SFT at every this-many-th validation, i.e. every
    heldout_every * sft.eval_every SFT steps (counting the one at step 0): the SFT
    weights are synced into the vLLM engines and evaluated as in RL (eval.*), logged on the validation's
    metrics row with its FLOPs, so P can be drawn over SFT + RL compute. 0: off (engines then start only for
    RL). Measures only: it does not change the trunk key."""


@dataclass
class SwitchConfig:
    policy: str = "stable"
    """When to switch to RL: stable | mild | min_loss | step:N | never | rl_only."""
    delta: float = 0.02
    """Stable band: L <= (1 + delta) * L_min."""
    delta2: float = 0.10
    """Severe overfitting: L >= (1 + delta2) * L_min."""
    patience: int = 2
    """Evaluations without a relative gain > delta before `stable`/`min_loss` decide."""


@dataclass
class RolloutConfig:
    num_workers: int = 1
    """vLLM engines (one per Ray actor)."""
    cpus_per_worker: float = 1.0
    """CPUs reserved per worker."""
    gpus_per_worker: float = 0.0
    """GPUs per worker."""
    max_tokens: int = 48
    """Longest completion."""
    temperature: float = 1.0
    """Sampling temperature for RL rollouts."""
    top_p: float = 1.0
    """Nucleus sampling for RL rollouts."""
    kv_cache_gib: int = 1
    """KV cache size per CPU engine in whole GiB (VLLM_CPU_KVCACHE_SPACE; CPU only)."""
    threads: int = 0
    """Intra-op threads of a CPU engine (0: its CPU reservation, `cpus_per_worker`, which Ray passes on as
    OMP_NUM_THREADS). More threads can use the learners' cores while they wait for rollouts, but on a
    machine loaded past its cores OpenMP threads stall each other (2 threads measured 5x slower there; see
    benchmarks/vs_trl.py); CPU only."""
    borrow_learner_cpus: bool = True
    """On a one-node cluster, an on-policy run's CPU engines (rollout.threads 0) start with more threads: their
    own plus the learner ranks' CPUs, shared among the engines, at most each engine's share of the node's
    cores. The learners wait through every engine call then (RL generation, held-out evaluations); not with
    rl.max_staleness 1, where they train while the engines sample. Turn off where other work uses those cores
    at the same time: OpenMP threads that do not get a core stall each other (see actors/placement.py)."""
    gpu_memory_utilization: float = 0.5
    """Fraction of GPU memory vLLM may take (GPU only)."""
    weight_sync: str = "object_store"
    """How new weights reach the engines: object_store (rank 0's state dict through Ray's object store) | disk
    (a Hugging Face folder) | collective (rank 0 broadcasts over a torch.distributed group with the engines:
    NCCL when the learner is on CUDA, gloo on CPU; falls back to object_store, logged, when it cannot form)."""
    check_sync_prompts: int = 8
    """After the switch sync and at the end, compare greedy completions of the learner and of every engine on this
    many held-out prompts and record whether they match (0 skips the check)."""
    placement: str = "default"
    """Where the engines go on a multi-node cluster: default (Ray's scheduler, the driver's node first), spread
    (SPREAD across nodes), colocate (the job driver's node), or resource:NAME (nodes started with the custom
    resource NAME, e.g. `ray start --resources '{"rollout_node": 4}'`; each engine takes 0.001 of it)."""


@dataclass
class RLConfig:
    algorithm: str = "dapo"
    """An RL objective of trainers/ (dapo | grpo | dr_grpo | luffy | srft | upt |
    prefix_rft | relift); it owns the clip defaults, the loss
    aggregation, dynamic sampling, off-policy members and the FLOPs formula."""
    steps: int = 40
    """RL optimizer steps."""
    prompts_per_step: int = 16
    """Prompts trained per step (after dynamic sampling for dapo)."""
    group_size: int = 8
    """Samples per prompt (G)."""
    clip_low: float = 0.0
    """Lower clip: ratio >= 1 - clip_low. 0 means the objective's own (0.2 for all built in). luffy, srft and upt
    do not clip the ratio (as Unify-Post-Training ran them) and ignore the clip keys."""
    clip_high: float = 0.0
    """Upper clip: ratio <= 1 + clip_high. 0 means the objective's own: 0.28 for dapo (clip-higher), 0.2 for
    the others."""
    clip_ratio_c: float = 0.0
    """Dual clip: a negative-advantage token's loss is at most -clip_ratio_c * A (must be > 1). 0 means the
    objective's own (10 for dapo, as the paper's veRL recipe; off for the others)."""
    old_logprobs: str = "learner"
    """Behaviour-policy log-probs for the ratio: `learner` recomputes them with the learner's weights before the
    step's first update, at the sampling temperature (the authors' veRL runs); `engine` takes the log-probs vLLM
    sampled each token with (after temperature and top-p), with no extra learner pass: the only choice when
    rollouts are sampled ahead (rl.max_staleness), where the learner no longer holds the weights that sampled.
    The learner scores at the sampling temperature either way, over the whole vocabulary (no top-p)."""
    max_staleness: int = 0
    """Asynchronous RL: 1 samples step i+1's rollouts with the weights before step i's update while the
    learners train step i (veRL's one-step-off-policy recipe), so every update trains on rollouts exactly one
    update old, with the importance ratio against the engine's own log-probs (needs rl.old_logprobs: engine).
    0: on-policy, generation and training take turns. A resumed run samples its first step anew from the
    restored weights."""
    minibatches: int = 1
    """Optimizer updates per RL step: the kept groups are split into this many mini-batches, all scored by the
    behaviour policy before the first update (rl.old_logprobs), so later updates see ratios != 1 and the clip
    matters."""
    max_gen_rounds: int = 3
    """Dynamic sampling: generation rounds per step to fill the batch with informative groups (veRL's
    max_num_gen_batches)."""
    gen_batch_size: int = 0
    """Dynamic sampling: prompts generated per round (veRL's gen_batch_size; the paper 128); 0: the prompts
    still missing in the first round, then prompts_per_step."""
    short_batch: str = "partial"
    """Dynamic sampling, when the rounds run out with fewer than prompts_per_step informative groups:
    `partial` trains on the groups kept, `skip` makes no update that step, `error` stops the run (veRL's
    DAPO recipe: "Generated too many")."""
    overlong_buffer_len: int = 0
    """DAPO soft overlong punishment: completions longer than max_tokens - this get a reward penalty growing
    linearly to overlong_penalty_factor at max_tokens (0: off, as in the paper's runs)."""
    overlong_penalty_factor: float = 1.0
    """DAPO soft overlong punishment: the penalty at max_tokens."""
    overlong_filter: bool = False
    """DAPO overlong filtering: completions cut off at max_tokens get no loss (off in the paper's runs)."""
    max_prompt_len: int = 0
    """RL prompts longer than this many tokens (template applied) are left out of the RL set (the paper:
    1,024); 0: no limit."""
    eval_every: int = 10
    """Counts RL steps: held-out accuracy (and, by default, a resume state) every this many RL optimizer steps,
    and at the switch and the end. One evaluation is one report of a Tune trial."""


@dataclass
class VerifierConfig:
    kind: str = "exact"
    """exact (synthetic task) | math (math-verify) | module:function."""
    num_workers: int = 2
    """Verifier actors."""
    timeout_s: float = 5.0
    """Time limit per item; a hung item scores 0 with status timeout."""
    cpus_per_worker: float = 0.25
    """CPUs reserved per verifier actor."""
    placement: str = "default"
    """Where the verifier actors go: default, spread, colocate or resource:NAME (as rollout.placement)."""


@dataclass
class EvalConfig:
    samples: int = 4
    """k: samples per held-out prompt; accuracy is avg@k."""
    temperature: float = 1.0
    """Sampling temperature for held-out accuracy."""
    max_prompts: int = 200
    """Held-out prompts used (first N)."""
    greedy: bool = True
    """Also score greedy decoding (one more generation per prompt; sweeps that evaluate often can skip it)."""


@dataclass
class TuneConfig:
    trunk: str = ""
    """Trunk folder (from `switchpoint trunk`) the sweep branches from. Empty: OUTPUT_DIR/trunks/trunk-KEY, where
    KEY hashes the SFT settings; an existing trunk with the same settings is reused, never re-trained."""
    branch_points: list = field(default_factory=lambda: ["stable:last"])
    """Trunk checkpoints to branch RL from. Each item: a step (300); a hindsight regime (adaptive, stable, mild,
    severe) alone = all its checkpoints, or with :first / :middle / :last / :all; or `all`."""
    strict_branch_points: bool = False
    """A branch point naming a regime the trunk has no checkpoint of (a trunk that jumps from Stable to Severe has
    no Mild one): false reports it (a warning line, a row marked absent in the results) and runs the other
    branches; true stops the sweep before any trial."""
    space: dict = field(default_factory=dict)
    """Other config keys to search, as Tune domains: `learner.rl_lr: loguniform(1e-5, 1e-3)`,
    `rl.algorithm: choice([dapo, dr_grpo])`, `rl.minibatches: grid([1, 2])`, or a YAML list (a grid).
    Keys that shape the SFT trunk (model, data, sft, run.seed, SFT learner settings) cannot be searched."""
    num_samples: int = 1
    """Tune's num_samples: repeats of the grid, or draws of the random domains."""
    max_concurrent_trials: int = 1
    """Branches run at the same time (each needs the whole actor stack's CPUs/GPUs)."""
    search_alg: str = "grid"
    """grid (every combination; domains sampled), random (branch points and lists drawn as choices), or any
    Ray Tune searcher by name (optuna, hyperopt, ...; its package must be installed)."""
    scheduler: str = "ceiling"
    """ceiling (stop a branch whose fitted ceiling's upper bound is below the best branch's lower bound, or the
    best accuracy observed), asha (Tune's ASHA on held-out accuracy) or fifo (no early stopping)."""
    min_evals: int = 6
    """Ceiling stopper: held-out evaluations after the branch point before a branch's ceiling is fitted."""
    confirm: int = 2
    """Ceiling stopper: consecutive evaluations the stop condition must hold (one noisy point never stops)."""
    reuse_actors: bool = True
    """Keep the trial process and its learner, vLLM and verifier actors between trials, loading the next
    branch's weights into them (Tune's reuse_actors + reset_config)."""
    checkpoint_every: int = 1
    """Counts held-out evaluations (each rl.eval_every RL steps apart), not steps: save a Tune checkpoint of the
    branch (weights, optimizer, RL step, sampler state) every this many evaluations, so an interrupted trial
    resumes from there."""


@dataclass
class CheckpointConfig:
    keep_last_states: int = 2
    """Resume states (weights, optimizer, LR schedule, data position, RNG, policy, metrics row count) kept on
    disk; older ones are deleted once a newer one is complete (at least 1)."""
    keep_last_hf: int = 0
    """SFT Hugging Face checkpoints kept besides the branch points (0: keep every one). Branch points are always
    kept: the lowest validation loss so far (where stable/min_loss roll back to) and the switch checkpoint."""
    rl_every: int = 0
    """Counts RL steps: an RL resume state every this many RL optimizer steps (0: at every held-out evaluation,
    i.e. every rl.eval_every RL steps)."""


@dataclass
class FaultConfig:
    max_faults: int = 5
    """Actor faults (a verifier, rollout or learner actor that died) the run survives; one more stops the run with
    the reason, keeping everything on disk (resume it with --resume)."""
    actor_max_restarts: int = 3
    """Ray's max_restarts for verifier actors (Ray restarts a dead one in place)."""
    inject: list = field(default_factory=list)
    """Faults to cause on purpose, for tests and drills: items ROLE@PHASE:STEP (role learner, rollout or
    verifier; phase sft or rl), e.g. `learner@sft:15` SIGKILLs learner rank 1's process during SFT step 15;
    in `switchpoint tune` also `sweep@rl:N`: SIGKILL the sweep driver's process group right after a branch wrote
    its resume state at RL step N (N 0: right after the branch opened); each fires once, in the order given."""


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    """Run identity and output folder."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """Base model."""
    data: DataConfig = field(default_factory=DataConfig)
    """Expert trajectories, RL prompts, held-out set."""
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    """DeepSpeed learner group."""
    sft: SFTConfig = field(default_factory=SFTConfig)
    """SFT phase."""
    switch: SwitchConfig = field(default_factory=SwitchConfig)
    """When to switch SFT -> RL."""
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    """vLLM rollout workers."""
    rl: RLConfig = field(default_factory=RLConfig)
    """RL phase."""
    verifier: VerifierConfig = field(default_factory=VerifierConfig)
    """Reward / verifier pool."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """Held-out accuracy."""
    tune: TuneConfig = field(default_factory=TuneConfig)
    """Ray Tune search of branch points and RL settings (`switchpoint tune`); ignored by `switchpoint run`."""
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    """What is saved for --resume and what is kept on disk."""
    faults: FaultConfig = field(default_factory=FaultConfig)
    """How many actor faults a run survives."""


CHOICES = {
    "data.source": ("synthetic", "files"),
    "data.layout": ("classic", "study"),
    "model.dtype": ("auto", "float32", "bfloat16", "float16"),
    "rollout.weight_sync": ("object_store", "disk", "collective"),
    "rl.old_logprobs": ("learner", "engine"),
    "rl.short_batch": ("partial", "skip", "error"),
    "learner.lr_schedule": ("constant", "cosine"),
    "tune.scheduler": ("ceiling", "asha", "fifo"),
}
POSITIVE = (
    "learner.num_ranks",
    "sft.batch_size",
    "sft.eval_every",
    "rl.prompts_per_step",
    "rl.group_size",
    "rl.max_gen_rounds",
    "rl.overlong_penalty_factor",
    "rl.minibatches",
    "rl.eval_every",
    "rollout.num_workers",
    "rollout.max_tokens",
    "verifier.num_workers",
    "verifier.timeout_s",
    "eval.samples",
    "eval.max_prompts",
    "data.max_len",
    "model.pretrain.corpus_size",
    "model.pretrain.difficulty",
    "model.pretrain.batch_size",
    "model.pretrain.lr",
    "learner.lr",
    "rollout.kv_cache_gib",
    "tune.num_samples",
    "tune.max_concurrent_trials",
    "tune.min_evals",
    "tune.confirm",
    "tune.checkpoint_every",
    "checkpoint.keep_last_states",
)


NON_NEGATIVE = (
    "learner.micro_batch_size",
    "learner.warmup_steps",
    "rl.steps",
    "rl.gen_batch_size",
    "rl.overlong_buffer_len",
    "rl.max_prompt_len",
    "rl.clip_ratio_c",
    "sft.max_steps",
    "learner.weight_decay",
    "learner.rl_lr",
    "rollout.temperature",
    "eval.temperature",
    "rollout.check_sync_prompts",
    "rollout.threads",
    "learner.cpus_per_rank",
    "learner.gpus_per_rank",
    "rollout.cpus_per_worker",
    "rollout.gpus_per_worker",
    "learner.decay_steps",
    "sft.stop_after_severe",
    "sft.heldout_every",
    "checkpoint.keep_last_hf",
    "checkpoint.rl_every",
    "data.num_proc",
    "model.pretrain.steps",
    "model.pretrain.warmup_steps",
    "faults.max_faults",
    "faults.actor_max_restarts",
)


def _coerce(key: str, value: Any, typ: Any) -> Any:
    if dataclasses.is_dataclass(typ):
        if not isinstance(value, dict):
            raise ConfigError(f"config key {key!r} must be a mapping, got {value!r}")
        return _build(typ, value, key + ".")
    if typ is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"config key {key!r} must be true/false, got {value!r}")
    if typ is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key {key!r} must be an integer, got {value!r}")
        return value
    if typ is float:
        if isinstance(value, str):
            try:  # YAML 1.1 reads 1e-4 (no dot) as a string
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key {key!r} must be a number, got {value!r}")
        return float(value)
    if typ is list:
        if not isinstance(value, list) or not all(
            isinstance(v, (str, int, float)) and not isinstance(v, bool) for v in value
        ):
            raise ConfigError(f"config key {key!r} must be a list of numbers or strings, got {value!r}")
        return list(value)
    if typ is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise ConfigError(f"config key {key!r} must be a mapping of config keys, got {value!r}")
        return dict(value)
    if typ is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"config key {key!r} must be a string, got {value!r}")
        return str(value)
    raise ConfigError(f"config key {key!r}: unsupported type {typ}")


def _build(cls, raw: dict, prefix: str = ""):
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    for k in raw:
        if k not in known:
            raise ConfigError(
                f"unknown config key {prefix + str(k)!r}; known under {prefix or 'top level'}: "
                f"{', '.join(sorted(known))}"
            )
    kwargs = {k: _coerce(prefix + k, v, hints[k]) for k, v in raw.items()}
    return cls(**kwargs)


def _validate(cfg: Config) -> Config:
    for key, allowed in CHOICES.items():
        value = get_key(cfg, key)
        if value not in allowed:
            raise ConfigError(f"config key {key!r} is {value!r}; choose one of {', '.join(allowed)}")
    for key in POSITIVE:
        if get_key(cfg, key) <= 0:
            raise ConfigError(f"config key {key!r} must be > 0, got {get_key(cfg, key)}")
    if cfg.learner.zero_stage not in (0, 1, 2, 3):
        raise ConfigError(f"config key 'learner.zero_stage' must be 0-3, got {cfg.learner.zero_stage}")
    if cfg.sft.batch_size % cfg.learner.num_ranks:
        raise ConfigError(
            f"config key 'sft.batch_size' ({cfg.sft.batch_size}) must divide evenly over "
            f"learner.num_ranks ({cfg.learner.num_ranks})"
        )
    from trainers.objectives import RL_OBJECTIVES

    if cfg.rl.algorithm not in RL_OBJECTIVES:
        raise ConfigError(
            f"config key 'rl.algorithm' is {cfg.rl.algorithm!r}; choose one of {', '.join(RL_OBJECTIVES)}"
        )
    objective = RL_OBJECTIVES[cfg.rl.algorithm]
    for key in ("clip_low", "clip_high", "clip_ratio_c"):  # 0: the objective's own
        if getattr(cfg.rl, key) == 0:
            setattr(cfg.rl, key, getattr(objective, key))
    if not 0 < cfg.rl.clip_low < 1:
        raise ConfigError(f"config key 'rl.clip_low' must be in (0, 1), got {cfg.rl.clip_low}")
    if cfg.rl.clip_high < 0:
        raise ConfigError(
            f"config key 'rl.clip_high' must be >= 0 (0: the objective's own), got {cfg.rl.clip_high}"
        )
    if cfg.rl.clip_ratio_c and cfg.rl.clip_ratio_c <= 1:
        raise ConfigError(f"config key 'rl.clip_ratio_c' must be > 1 (dual clip), got {cfg.rl.clip_ratio_c}")
    if objective.off_policy_members + objective.prefix_members >= cfg.rl.group_size:
        raise ConfigError(
            f"config key 'rl.group_size' ({cfg.rl.group_size}) must exceed the {cfg.rl.algorithm} objective's "
            f"{objective.off_policy_members + objective.prefix_members} expert or hybrid member(s) per group"
        )
    for key in ("betas", "rl_betas"):
        betas = getattr(cfg.learner, key)
        if (key == "betas" or betas) and (len(betas) != 2 or not all(0 <= float(b) < 1 for b in betas)):
            raise ConfigError(f"config key 'learner.{key}' must be two numbers in [0, 1), got {betas}")
    for key in NON_NEGATIVE:
        if get_key(cfg, key) < 0:
            raise ConfigError(f"config key {key!r} must be >= 0, got {get_key(cfg, key)}")
    if cfg.learner.decay_steps == 0:
        cfg.learner.decay_steps = cfg.sft.max_steps
    if not 0 <= cfg.learner.min_lr_ratio <= 1:
        raise ConfigError(
            f"config key 'learner.min_lr_ratio' must be in [0, 1], got {cfg.learner.min_lr_ratio}"
        )
    if not 0 < cfg.rollout.top_p <= 1:
        raise ConfigError(f"config key 'rollout.top_p' must be in (0, 1], got {cfg.rollout.top_p}")
    if cfg.data.source == "files":
        for key in ("sft_train_path", "sft_val_path", "rl_path", "eval_path"):
            if not getattr(cfg.data, key):
                raise ConfigError(f"config key 'data.{key}' is required when data.source is 'files'")
    try:
        cfg.data.prompt_template.format(prompt="x")
    except (KeyError, IndexError, ValueError) as e:
        raise ConfigError(f"config key 'data.prompt_template' must use only {{prompt}}: {e}") from None
    from plasticity.regimes import make_policy
    from switchpoint.checks import check_config

    check_config(cfg)  # rules across keys (in switchpoint/checks.py, so this file stays the dataclasses)

    try:
        make_policy(cfg.switch.policy, cfg.switch.delta, cfg.switch.delta2, cfg.switch.patience)
    except ValueError as e:
        raise ConfigError(f"config key 'switch.policy': {e}") from None
    return cfg


def flatten(raw: dict, prefix: str = "") -> dict:
    """Nested mapping -> {dotted key: value} (a.b.c); the inverse of parse_overrides."""
    out: dict = {}
    for k, v in raw.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def get_dotted(raw: dict, dotted: str) -> Any:
    """raw["a"]["b"] for "a.b" in a plain config dict; None where a part is missing."""
    node: Any = raw
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def set_dotted(raw: dict, dotted: str, value: Any) -> None:
    """raw["a"]["b"] = value for "a.b" in a plain config dict. An integer key given a whole float (a numeric
    Tune domain over rl.minibatches, say) gets the int."""
    *parents, last = dotted.split(".")
    node = raw
    for p in parents:
        node = node[p]
    old = node[last]
    if isinstance(old, int) and not isinstance(old, bool) and isinstance(value, float) and value.is_integer():
        value = int(value)
    node[last] = value


def get_key(cfg: Any, dotted: str) -> Any:
    obj = cfg
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def parse_overrides(pairs: list[str]) -> dict:
    """`a.b=value` strings -> nested dict; values are parsed as YAML scalars (1, 0.5, true, text)."""
    out: dict = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"--set expects key=value, got {pair!r}")
        key, value = pair.split("=", 1)
        node = out
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = yaml.safe_load(value) if value != "" else ""
    return out


def _merge(base: dict, extra: dict) -> dict:
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            _merge(base[k], v)
        else:
            base[k] = v
    return base


build_section = _build  # a config-like section of another file (the study's), with the same checks and errors
merge = _merge


def from_dict(raw: dict) -> Config:
    return _validate(_build(Config, raw or {}))


def load_config(path: str | os.PathLike, overrides: list[str] | None = None) -> Config:
    """Read a YAML config, apply `--set` overrides, validate. Relative data/model paths stay relative to CWD."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}")
    with open(path) as f:
        try:
            raw = yaml.safe_load(f) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    raw.pop("study", None)  # a study file (configs/study.yaml) is a run config plus the study's own section
    return from_dict(_merge(raw, parse_overrides(overrides or [])))


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def dump_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


__all__ = [
    "Config",
    "ConfigError",
    "load_config",
    "from_dict",
    "to_dict",
    "dump_yaml",
    "parse_overrides",
    "get_key",
    "flatten",
    "get_dotted",
    "set_dotted",
]
