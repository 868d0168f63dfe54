"""gpu_check's sections, each run in the child process (benchmarks/gpu_check.py): a function of the run's
settings returning a JSON-able dict. `ctx.partial(record)` keeps what is done so far in case the section is
killed at its time box; `ctx.left()` is the seconds left of the box (sections that loop stop early)."""

from __future__ import annotations

import gc
import os
import platform
import socket
import time

import torch

from benchmarks import gpu_check_model as gm

OOM = (getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError),)


def is_oom(e: BaseException) -> bool:
    return isinstance(e, OOM) or "out of memory" in str(e).lower() or "can't allocate" in str(e).lower()


def cleanup() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def allocated(ctx) -> int:
    return torch.cuda.memory_allocated() if ctx.on_cuda else 0


def env(ctx) -> dict:
    try:
        import transformers

        tf = transformers.__version__
    except Exception as e:  # noqa: BLE001
        tf = f"unavailable: {e}"
    rec = {"python": platform.python_version(), "torch": torch.__version__, "transformers": tf,
           "hostname": socket.gethostname(), "cpu_count": os.cpu_count(), "device": str(ctx.device),
           "deepspeed": ctx.deepspeed_version, "deepspeed_wanted": ctx.use_deepspeed}  # fmt: skip
    if ctx.on_cuda:
        props = torch.cuda.get_device_properties(0)
        rec.update(gpu=props.name, gpu_memory_bytes=props.total_memory, capability=f"{props.major}.{props.minor}",
                   cuda=torch.version.cuda, gpu_count=torch.cuda.device_count(),
                   flash_sdp=torch.backends.cuda.flash_sdp_enabled(),
                   mem_efficient_sdp=torch.backends.cuda.mem_efficient_sdp_enabled())  # fmt: skip
    return rec


def peak_matmul(ctx) -> dict:
    """The device's dense matmul rate, best over a few square sizes (bf16 on GPU, float32 on CPU)."""
    dtype = torch.bfloat16 if ctx.on_cuda else torch.float32
    sizes = [4096, 8192, 16384] if ctx.on_cuda and not ctx.tiny else [256]
    rec, rates = {"dtype": str(dtype).removeprefix("torch."), "tflops_by_size": {}}, {}
    for n in sizes:
        a = torch.randn(n, n, device=ctx.device, dtype=dtype)
        b = torch.randn(n, n, device=ctx.device, dtype=dtype)
        for _ in range(3):
            a @ b
        gm.sync(ctx.device)
        iters, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < (0.1 if ctx.tiny else 1.5):
            for _ in range(10):
                a @ b
            gm.sync(ctx.device)
            iters += 10
        rates[n] = 2.0 * n**3 * iters / (time.perf_counter() - t0)
        rec["tflops_by_size"][str(n)] = round(rates[n] / 1e12, 4)
        del a, b
    rec["peak_flops"] = max(rates.values())
    cleanup()
    return rec


def _run(rec: dict, name: str, timing: dict, shard: dict, hf: dict, n_matmul: int, micro: int, grouped: bool,
         passes: int = 3) -> None:  # fmt: skip
    tokens = sum(len(r) for r in shard["input_ids"])
    flops = gm.step_flops(hf, n_matmul, [len(r) for r in shard["input_ids"]], passes)
    timing.update(tokens=tokens, computed_tokens=gm.padded_tokens(shard, micro, grouped),
                  tokens_per_s=tokens / timing["step_s"], model_flops=flops["model"],
                  paper_flops=flops["paper"])  # fmt: skip
    rec["runs"][name] = timing


def make_runner(ctx, impl: str, shape: dict, dtype, deepspeed: bool, compile_: bool, autocast: bool):
    """(runner, description) for "project" (DeepSpeed engine if asked and it starts) or "baseline"."""
    model = gm.build_model(shape, ctx.device, dtype)
    engine, note = None, ""
    if impl == "project" and deepspeed:
        try:
            engine, version = gm.deepspeed_engine(model, ctx.learner_cfg(), ctx.device)
            note = f"deepspeed {version} engine, LearnerRank's config (ZeRO {ctx.args.zero_stage})"
        except Exception as e:  # noqa: BLE001  (recorded; the step runs without it)
            note = f"deepspeed failed to start ({type(e).__name__}: {e}); "
    if impl == "project" and engine is None:
        note += "torch AdamW, fused on GPU (no DeepSpeed)"
    if compile_:
        if engine is not None:
            engine.compile()
        else:
            model = torch.compile(model)
        note += ", torch.compile"
    if impl == "baseline":
        return gm.BaselineStep(model, ctx.device, ctx.micro, 1e-5, autocast), "plain PyTorch + transformers"
    return gm.ProjectStep(model, ctx.device, ctx.micro, 1e-5, autocast, engine), note


def _timed_runs(
    ctx, rec: dict, prefix: str, runner, shape: dict, which: tuple, hf: dict, n_matmul: int
) -> None:
    """Time the runner's SFT / log-prob / DAPO / ragged SFT steps (those in `which`) into rec["runs"]; a run that
    runs out of memory or fails is recorded as such and the next one runs."""
    rows = gm.make_rows(ctx.rows, ctx.seq, shape["vocab_size"], ctx.prompt, ragged=False)
    ragged = gm.make_rows(ctx.rows, ctx.seq, shape["vocab_size"], ctx.prompt, ragged=True, seed=1)
    grouped, w, s, m = isinstance(runner, gm.ProjectStep), ctx.warmup, ctx.steps, ctx.micro
    box: dict = {}

    def logprobs():
        box["lps"] = runner.logprobs(rows, gm.DAPO)

    def dapo():
        adv = [1.0 - 0.5 * (i % 3) for i in range(ctx.rows)]
        return runner.step(dict(rows, old_logprobs=box["lps"], advantages=adv), "rl", gm.DAPO)

    plan = {
        "sft": (lambda: runner.step(rows, "sft"), rows, 3),
        "logprobs": (logprobs, rows, 1),
        "dapo": (dapo, rows, 3),
        "sft_ragged": (lambda: runner.step(ragged, "sft"), ragged, 3),
    }
    for kind, (fn, shard, passes) in plan.items():
        if kind not in which or (kind == "dapo" and "lps" not in box):
            continue
        try:
            timing = gm.timed(fn, ctx.device, w, s)
        except Exception as e:  # noqa: BLE001
            runner.model.zero_grad(set_to_none=True)
            rec["runs"][f"{prefix}_{kind}"] = {
                "error": "out of memory" if is_oom(e) else f"{type(e).__name__}: {e}"
            }
            cleanup()
            continue
        _run(rec, f"{prefix}_{kind}", timing, shard, hf, n_matmul, m, grouped, passes)
        ctx.partial(rec)


def _header(ctx, shape: dict, dtype) -> dict:
    meta = gm.build_model(shape, "meta", None)
    return {"shape": shape, "seq": ctx.seq, "rows": ctx.rows, "micro_batch": ctx.micro, "precision": ctx.precision,
            "param_dtype": str(dtype).removeprefix("torch."), "compile": ctx.compile,
            "matmul_params": gm.matmul_params(meta), "hf": meta.config.to_dict(), "runs": {}}  # fmt: skip


def step(ctx, name: str) -> dict:
    """The project's step and the plain one on one shape: SFT, the log-prob pass and DAPO on rows of equal
    length, and SFT on ragged rows (padding inside micro-batches)."""
    shape, dtype = ctx.shape(name), ctx.param_dtype
    rec = _header(ctx, shape, dtype)
    hf = rec.pop("hf")
    for impl in ("project", "baseline"):
        if ctx.left() < 10:
            rec["stopped"] = f"time box reached before {impl}"
            break
        runner, rec[f"{impl}_impl"] = make_runner(ctx, impl, shape, dtype, ctx.use_deepspeed, ctx.compile,
                                                  ctx.precision == "autocast")  # fmt: skip
        rec[f"{impl}_static_mem_bytes"] = allocated(ctx)
        _timed_runs(
            ctx, rec, impl, runner, shape, ("sft", "logprobs", "dapo", "sft_ragged"), hf, rec["matmul_params"]
        )
        del runner
        cleanup()
    return rec


def variants(ctx, name: str) -> dict:
    """The project's SFT step under other settings, one at a time: without DeepSpeed, float32 weights under bf16
    autocast, torch.compile (slowest to start: last)."""
    shape = ctx.shape(name)
    rec = _header(ctx, shape, ctx.param_dtype)
    hf = rec.pop("hf")
    settings = [("autocast_fp32_weights", torch.float32, False, True)]
    if ctx.use_deepspeed:  # the step section's project run went through DeepSpeed: this one does not
        settings.insert(0, ("no_deepspeed", ctx.param_dtype, False, False))
    if ctx.on_cuda or ctx.args.compile:  # a CPU dry run skips compiling unless asked
        settings.append(("compile", ctx.param_dtype, True, False))
    for label, dtype, compile_, autocast in settings:
        if ctx.left() < (60 if compile_ and ctx.on_cuda else 10):
            rec["stopped"] = f"time box reached before {label}"
            break
        runner, rec[f"{label}_impl"] = make_runner(ctx, "project", shape, dtype, False, compile_, autocast)
        _timed_runs(ctx, rec, label, runner, shape, ("sft",), hf, rec["matmul_params"])
        del runner
        cleanup()
    return rec


def _probe_micro(ctx, runner, shape: dict, mb: int, objective: str) -> int | str | None:
    """Peak bytes of one forward + backward of `mb` rows ("oom": out of memory; None: not measured off CUDA)."""
    shard = gm.make_rows(mb, ctx.seq, shape["vocab_size"], ctx.prompt, ragged=False, seed=mb)
    runner.micro = mb
    if ctx.on_cuda:
        torch.cuda.reset_peak_memory_stats()
    failed = False
    try:
        if isinstance(runner, gm.ProjectStep):
            runner.rank_step(objective).accumulate(shard, float(sum(sum(m[1:]) for m in shard["loss_mask"])))
        else:
            runner.step(shard, objective)  # the plain loop steps its optimizer too: that is what a user runs
        gm.sync(ctx.device)
    except Exception as e:  # noqa: BLE001
        if not is_oom(e):
            raise
        failed = True
    runner.model.zero_grad(set_to_none=True)
    peak = torch.cuda.max_memory_allocated() if ctx.on_cuda else None
    cleanup()
    return "oom" if failed else peak


def max_micro(ctx, name: str) -> dict:
    """Largest micro-batch (rows of ctx.seq tokens) whose SFT forward + backward fits, doubling then bisecting,
    for the project's step and the plain one (plain torch optimizers, their states allocated first)."""
    shape = ctx.shape(name)
    rec = {"seq": ctx.seq, "cap": ctx.search_cap}
    for impl in ("project", "baseline"):
        model = gm.build_model(shape, ctx.device, ctx.param_dtype)
        cls = gm.ProjectStep if impl == "project" else gm.BaselineStep
        runner = cls(model, ctx.device, 1, 1e-5, ctx.precision == "autocast")
        runner.step(
            gm.make_rows(1, ctx.seq, shape["vocab_size"], ctx.prompt, ragged=False), "sft"
        )  # Adam states
        tried: dict[str, int | str | None] = {}
        ok, bad, mb = 0, None, 1
        while mb <= ctx.search_cap and ctx.left() > 5:
            tried[str(mb)] = _probe_micro(ctx, runner, shape, mb, "sft")
            if tried[str(mb)] == "oom":
                bad = mb
                break
            ok, mb = mb, mb * 2
        while bad is not None and bad - ok > 1 and ctx.left() > 5:
            mid = (ok + bad) // 2
            tried[str(mid)] = _probe_micro(ctx, runner, shape, mid, "sft")
            ok, bad = (mid, bad) if tried[str(mid)] != "oom" else (ok, mid)
        rec[impl] = {"largest": ok, "tokens": ok * ctx.seq, "first_oom": bad, "peak_mem_bytes_by_micro": tried,
                     "complete": bad is None and mb > ctx.search_cap or bad is not None and bad - ok <= 1}  # fmt: skip
        ctx.partial(rec)
        del runner, model
        cleanup()
    return rec


def weight_sync(ctx) -> dict:
    """actors/weight_buckets.py's pack and unpack on the device's tensors, and the two host copies the other
    sync paths make (gloo buckets; the object store's state dict), in bytes/s over the whole model."""
    from actors.weight_buckets import pack_bucket, param_items, plan_buckets, unpack_bucket

    model = gm.build_model(ctx.shape(ctx.sync_shape), ctx.device, ctx.param_dtype)
    params = dict(model.named_parameters())
    buckets = plan_buckets(param_items(model.named_parameters()))
    total = sum(p.numel() * p.element_size() for p in params.values())
    target = {n: torch.empty_like(p) for n, p in params.items()}  # an engine's copy of the weights
    box: dict = {}

    def unpack():
        for b, flat in zip(buckets, box["flats"]):
            for n, view in unpack_bucket(flat, b).items():
                target[n].copy_(view)

    tests = {
        "pack_device": lambda: box.update(flats=[pack_bucket(params, b, ctx.device) for b in buckets]),
        "unpack_copy_device": unpack,
        "pack_host": lambda: [pack_bucket(params, b, "cpu") for b in buckets],
        "state_dict_host": lambda: {n: p.detach().cpu().clone() for n, p in params.items()},
    }
    rec = {"model": "tiny" if ctx.tiny else ctx.sync_shape, "bytes": total, "buckets": len(buckets)}
    for name, fn in tests.items():
        t = gm.timed(fn, ctx.device, 1, 3)
        rec[name] = {"seconds": t["step_s"], "bytes_per_s": total / t["step_s"]}
    ok = all(torch.equal(target[n], p.detach()) for n, p in params.items())
    rec["unpacked_equal"] = ok
    return rec  # the child frees the model and empties the CUDA cache after every section


def _activation_probe(ctx, shape: dict, layers: int, seq: int, objective: str) -> dict:
    """One micro-batch's forward + backward on a `layers`-layer slice: allocator peak above the weights (CUDA)
    and the bytes autograd saved for the backward (any device)."""
    model = gm.build_model(shape, ctx.device, ctx.param_dtype, layers=layers)
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    runner = gm.ProjectStep(model, ctx.device, ctx.paper_micro, 1e-5, ctx.precision == "autocast")
    shard = gm.make_rows(ctx.paper_micro, seq, shape["vocab_size"], ctx.prompt, ragged=False)
    if objective == "rl":
        shard.update(advantages=[1.0] * len(shard["input_ids"]), old_logprobs=runner.logprobs(shard, gm.DAPO))
    skip = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in skip:
            saved[ptr] = t.untyped_storage().nbytes()
        return t

    before = allocated(ctx)
    if ctx.on_cuda:
        torch.cuda.reset_peak_memory_stats()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        runner.rank_step(objective, gm.DAPO).accumulate(
            shard, float(sum(sum(m[1:]) for m in shard["loss_mask"]))
        )
    gm.sync(ctx.device)
    rec = {"params_bytes": params, "saved_bytes": sum(saved.values())}
    if ctx.on_cuda:
        rec["peak_above_weights_bytes"] = torch.cuda.max_memory_allocated() - before
    del runner, model
    cleanup()
    return rec
