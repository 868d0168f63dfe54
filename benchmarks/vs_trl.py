"""switchpoint's RL step against TRL's GRPOTrainer (one process, Hugging Face `generate`) on the same work.

Both sides, one run, one machine: the same checkpoint, the same RL prompts, GRPO, P prompts x G samples, at most
T new tokens, one optimizer update per step. switchpoint runs first (its own Ray session, shut down after), then
TRL in a subprocess, so neither competes with the other for the cores. Prints each side's step time split into
generate / verify (reward) / train / weight sync / other, generated tokens per second of whole step, CPU seconds
per step (all of switchpoint's processes; TRL's one process: the figure a loaded machine moves least), and ratios.

Shapes: `tiny` (the tiny default after a short SFT, 40 new tokens) and `small` (hidden 512, 8 layers, 8 heads,
random init, 128 new tokens). TRL comes from the `bench` extra (`pip install -e '.[bench]'`) or, without touching
the project's venv, `pip install --no-deps --target .venv-trl trl==1.16.0 accelerate==1.15.0`: the subprocess puts
.venv-trl first on its path when it exists.

    python benchmarks/vs_trl.py [--shapes tiny,small] [--steps 4] [--sft-steps 200] [--set key=value ...]
        [--also key=value ...]   # switchpoint again with one setting changed, in the same run
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

from benchmarks.cpu_watch import StepCPU  # noqa: E402

PARTS = ("generate", "verify", "train", "weight_sync", "other")
TRL_PATH = os.path.join(ROOT, ".venv-trl")

# Each shape: overrides of configs/tiny.yaml. The step shape itself (GRPO, one update) is added for both.
SHAPES = {
    "tiny": {"new_tokens": 40, "set": []},
    "small": {
        "new_tokens": 128,
        "set": [
            "model.path=artifacts/bench_small/model",
            "model.tiny.hidden_size=512",
            "model.tiny.intermediate_size=2048",
            "model.tiny.num_hidden_layers=8",
            "model.tiny.num_attention_heads=8",
            "model.tiny.max_position_embeddings=256",
            "switch.policy=rl_only",  # random init: RL from the base model, no SFT
        ],
    },
}


def switchpoint_side(shape: str, args) -> dict:
    """Run the real pipeline on the shape; per-step timings from its metrics.jsonl (first step = warm-up)."""
    from cluster.runner import run_pipeline
    from switchpoint.config import load_config
    from switchpoint.prepare import ensure_model, load_splits, resolve_paths

    spec = SHAPES[shape]
    sets = [
        f"switch.policy=step:{args.sft_steps}",
        f"sft.max_steps={args.sft_steps}",
        "rl.algorithm=grpo",
        f"rl.prompts_per_step={args.prompts}",
        f"rl.group_size={args.group}",
        "rl.minibatches=1",
        f"rollout.max_tokens={args.new_tokens or spec['new_tokens']}",
        f"rl.steps={args.steps + 1}",
        f"rl.eval_every={args.steps + 1}",
        "eval.max_prompts=16",
        "eval.samples=1",
        f"run.name=bench-vs-trl-{shape}",
        *spec["set"],
        *args.set,
    ]
    if shape == "tiny" and args.tiny_checkpoint:  # an SFT'd checkpoint already at hand: RL from it, no SFT
        sets += [f"model.path={args.tiny_checkpoint}", "model.build_tiny=false", "switch.policy=rl_only"]
    cfg = resolve_paths(load_config(args.config, sets))
    load0 = os.getloadavg()[0]
    watch = StepCPU(cfg.run.output_dir, cfg.run.name)
    run_dir, _ = run_pipeline(cfg, quiet=True)
    cpu = watch.stop()[1:]
    load1 = os.getloadavg()[0]
    import ray

    ray.shutdown()  # this process's own local Ray: TRL then has the cores to itself
    rows = [json.loads(line) for line in open(os.path.join(run_dir, "metrics.jsonl"))]
    steps = [r for r in rows if r["phase"] == "rl" and "timing" in r][1:]
    if cfg.switch.policy == "rl_only":  # RL from model.path itself
        model = ensure_model(cfg)
    else:
        model = os.path.join(run_dir, "checkpoints", f"step_{args.sft_steps:06d}")
    splits, _ = load_splits(cfg)
    return {
        "steps": [
            {
                **{p: r["timing"][p] for p in PARTS},
                "wall": r["timing"].get("step_wall"),
                "tokens": r["gen_tokens"],
                "cpu": sum(c.values()),
            }
            for r, c in zip(steps, cpu)
        ],
        "model": model,
        "rl_rows": [{"prompt": r["prompt"], "answer": r["answer"]} for r in splits.rl],
        "template": cfg.data.prompt_template,
        "lr": cfg.learner.rl_lr or cfg.learner.lr,
        "max_tokens": cfg.rollout.max_tokens,
        "temperature": cfg.rollout.temperature,
        "seed": cfg.run.seed,
        "run_dir": run_dir,
        "load": (load0, load1),
    }


def trl_side(sp: dict, args) -> dict:
    """TRL's GRPOTrainer in a fresh process on switchpoint's checkpoint and prompts."""
    with tempfile.TemporaryDirectory() as tmp:
        job = os.path.join(tmp, "job.json")
        with open(job, "w") as f:
            json.dump({**sp, "prompts": args.prompts, "group": args.group, "n_steps": args.steps}, f)
        env = dict(os.environ)
        paths = ([TRL_PATH] if os.path.isdir(TRL_PATH) else []) + [ROOT]
        env["PYTHONPATH"] = os.pathsep.join(paths + [env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        if args.trl_threads:
            env["OMP_NUM_THREADS"] = str(args.trl_threads)
        out = os.path.join(tmp, "result.json")
        load0 = os.getloadavg()[0]
        subprocess.run([sys.executable, __file__, "--trl-worker", job, out], env=env, check=True)
        return {**json.load(open(out)), "load": (load0, os.getloadavg()[0])}


def trl_worker(job_path: str, out_path: str) -> None:
    """The TRL side: a plain GRPOTrainer, timed by wrapping its generate / reward / generate-and-score calls."""
    import warnings

    warnings.filterwarnings("ignore")
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from switchpoint.answers import verify_exact
    from switchpoint.data import format_prompt

    job = json.load(open(job_path))
    # The char tokenizer adds no special tokens, so TRL's prompt ids equal switchpoint's (no extra BOS).
    data = Dataset.from_list(
        [{"prompt": format_prompt(r, job["template"]), "answer": r["answer"]} for r in job["rl_rows"]]
    )

    def exact_match(completions, answer, **_):
        return [verify_exact(c, a).score for c, a in zip(completions, answer)]

    n_steps = job["n_steps"] + 1
    args = GRPOConfig(
        output_dir=os.path.join(os.path.dirname(out_path), "trl"),
        per_device_train_batch_size=job["prompts"] * job["group"],
        gradient_accumulation_steps=1,
        num_generations=job["group"],
        num_iterations=1,  # one optimizer update per generation batch, as switchpoint's rl.minibatches=1
        max_completion_length=job["max_tokens"],
        temperature=job["temperature"],
        learning_rate=job["lr"],
        beta=0.0,  # switchpoint's GRPO has no KL term
        epsilon=0.2,
        loss_type="dapo",  # TRL's name for token-mean over the batch: switchpoint's grpo loss_agg
        max_steps=n_steps,
        lr_scheduler_type="constant",
        warmup_steps=0,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        bf16=False,
        seed=job["seed"],
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    model = AutoModelForCausalLM.from_pretrained(job["model"], dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(job["model"])
    trainer = GRPOTrainer(
        model=model, reward_funcs=exact_match, args=args, train_dataset=data, processing_class=tok
    )
    acc = {"generate": 0.0, "verify": 0.0, "gen_and_score": 0.0, "tokens": 0}

    def timed(name, fn, count_tokens=False):
        def call(*a, **k):
            t = time.perf_counter()
            out = fn(*a, **k)
            acc[name] += time.perf_counter() - t
            if count_tokens:
                acc["tokens"] += sum(len(c) for c in out[0])
            return out

        return call

    trainer._generate_single_turn = timed("generate", trainer._generate_single_turn, count_tokens=True)
    trainer._calculate_rewards = timed("verify", trainer._calculate_rewards)
    trainer._generate_and_score_completions = timed("gen_and_score", trainer._generate_and_score_completions)
    steps = []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, *_, **__):
            acc.update(generate=0.0, verify=0.0, gen_and_score=0.0, tokens=0, t0=time.perf_counter())
            acc["cpu0"] = time.process_time()

        def on_step_end(self, *_, **__):
            total = time.perf_counter() - acc["t0"]
            steps.append(
                {
                    "generate": acc["generate"],
                    "verify": acc["verify"],
                    "train": total - acc["gen_and_score"],
                    "weight_sync": 0.0,  # one process: the policy that trains is the one that generates
                    "other": acc["gen_and_score"] - acc["generate"] - acc["verify"],
                    "tokens": acc["tokens"],
                    "cpu": time.process_time() - acc["cpu0"],  # every thread of this one process
                }
            )

    trainer.add_callback(StepTimer())
    trainer.train()
    json.dump({"steps": steps[1:], "threads": torch.get_num_threads()}, open(out_path, "w"))


def summarize(steps: list[dict]) -> dict:
    # switchpoint measures its step's wall (parts overlap with rl.max_staleness: 1); TRL's is the sum of parts.
    total = [s.get("wall") or sum(s[p] for p in PARTS) for s in steps]
    out = {p: statistics.mean(s[p] for s in steps) for p in PARTS}
    out["step"] = statistics.mean(total)
    out["step_median"] = statistics.median(total)
    out["tokens"] = statistics.mean(s["tokens"] for s in steps)
    out["tok_per_s"] = sum(s["tokens"] for s in steps) / sum(total)
    out["cpu"] = statistics.mean(s["cpu"] for s in steps)
    return out


def print_table(results: dict) -> None:
    w = max(13, *(len(side) + 2 for sides in results.values() for side in sides))
    head = f"{'shape':<7}{'side':<{w}}{'step s':>8}{'median':>8}" + "".join(f"{p[:8]:>9}" for p in PARTS)
    print(head + f"{'tokens':>8}{'tok/s':>8}{'CPU s':>7}")
    for shape, sides in results.items():
        for side, s in sides.items():
            print(
                f"{shape:<7}{side:<{w}}{s['step']:>8.2f}{s['step_median']:>8.2f}"
                + "".join(f"{s[p]:>9.3f}" for p in PARTS)
                + f"{s['tokens']:>8.0f}{s['tok_per_s']:>8.0f}{s['cpu']:>7.2f}"
            )
        trl = sides["trl"]
        for side, sp in sides.items():
            if side == "trl":
                continue
            print(
                f"{shape:<7}ratio {side}/TRL step time {sp['step'] / trl['step']:.2f}x "
                f"(median {sp['step_median'] / trl['step_median']:.2f}x), "
                f"tokens/s {sp['tok_per_s'] / trl['tok_per_s']:.2f}x, CPU seconds per step "
                f"{sp['cpu'] / trl['cpu']:.2f}x"
            )


def main() -> int:
    if len(sys.argv) == 4 and sys.argv[1] == "--trl-worker":
        trl_worker(sys.argv[2], sys.argv[3])
        return 0
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/tiny.yaml")
    ap.add_argument("--shapes", default="tiny,small")
    ap.add_argument("--steps", type=int, default=4, help="timed steps per side (after one warm-up step)")
    ap.add_argument("--sft-steps", type=int, default=200)
    ap.add_argument(
        "--tiny-checkpoint", help="tiny shape: RL from this SFT'd checkpoint instead of SFT first"
    )
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=0, help="0: the shape's own (40 tiny, 128 small)")
    ap.add_argument("--set", action="append", default=[], help="extra config overrides, switchpoint side")
    ap.add_argument(
        "--also",
        action="append",
        default=[],
        help="key=value: the switchpoint side once more with this override, from the same checkpoint",
    )
    ap.add_argument("--trl-threads", type=int, default=0, help="TRL's torch threads (0: torch's default)")
    ap.add_argument("--json", help="also write the table's numbers here")
    args = ap.parse_args()
    results = {}
    for shape in args.shapes.split(","):
        if shape not in SHAPES:
            ap.error(f"unknown shape {shape!r}; known: {', '.join(SHAPES)}")
        sp = switchpoint_side(shape, args)
        trl = trl_side(sp, args)
        results[shape] = {"switchpoint": summarize(sp["steps"]), "trl": summarize(trl["steps"])}
        for extra in args.also:  # after TRL, so each switchpoint variant sits beside it on a machine as quiet
            again = argparse.Namespace(**{**vars(args), "set": [*args.set, extra]})
            if shape == "tiny":
                again.tiny_checkpoint = sp["model"]
            results[shape][f"sp {extra.split('.')[-1]}"] = summarize(switchpoint_side(shape, again)["steps"])
        print(
            f"[{shape}] switchpoint run folder {sp['run_dir']}; TRL torch threads {trl['threads']}",
            flush=True,
        )
    print(
        f"\n{args.prompts} prompts x {args.group} samples, GRPO, one update per step, {args.steps} timed steps"
    )
    print_table(results)
    if args.json:
        json.dump(results, open(args.json, "w"), indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
