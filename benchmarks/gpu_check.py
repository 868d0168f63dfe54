"""GPU readiness check: the learner's step on one GPU, in one go, within a time budget, figures in one JSON file.

    python benchmarks/gpu_check.py [--budget-s 450] [--out FILE] [--compile] [--deepspeed auto|on|off]
    python benchmarks/gpu_check.py --cpu --tiny        # the dry run the tests make: tiny shapes, seconds

Needs torch and transformers (and pyyaml, which transformers brings); DeepSpeed is used when it imports. Sections:
- env: versions, device, whether DeepSpeed is there and used;
- peak_matmul: the device's bf16 matmul rate, the MFU denominator;
- step:<shape>: the project's step (trainers/learner_step.py, the code LearnerRank runs) beside the same step
  written plainly, on Qwen2-0.5B- and Qwen2.5-1.5B-shaped random-init models: SFT, the DAPO loss, the log-prob
  pass, ragged rows; step time, tokens/s, peak memory; MFU = (6 N + attention) FLOPs per token / peak;
- variants:qwen2.5-1.5b: the project's SFT step without DeepSpeed, under autocast, with torch.compile;
- max_micro:<shape>: the largest micro-batch that fits, for both steps;
- weight_sync: the collective sync's bucket pack/unpack (actors/weight_buckets.py) in bytes/s;
- paper_fit: configs/paper_dapo_qwen7b.yaml's learner rank: states per ZeRO stage + measured activations vs the
  device's memory.

The sections run in a child process, one after another; the parent gives each a time box and the whole run a
budget. A section that fails records its error; one that hangs or crashes the process is killed and the next child
carries on with the rest. Writes benchmarks/results/gpu_check_<date>_<machine>.json unless --out says otherwise.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks.gpu_check_report import TARGET, print_summary, summarize  # noqa: E402

SHAPE_NAMES = ("qwen2.5-1.5b", "qwen2-0.5b")
BOXES = {"env": 60, "peak_matmul": 45, "step": 150, "weight_sync": 45, "paper_fit": 90, "variants": 150,
         "max_micro": 60}  # fmt: skip
"""Seconds each section may take at most (a step or max_micro section: per shape)."""
MIN_START_S = 15
"""A section starts only with at least this much of the budget left."""


def section_names(args) -> list[str]:
    shapes = args.shapes.split(",")
    names = ["env", "peak_matmul", *(f"step:{s}" for s in shapes), "weight_sync", "paper_fit"]
    names += [f"variants:{TARGET['shape']}", *(f"max_micro:{s}" for s in shapes)]
    return [
        n for n in names if not args.sections or n.split(":")[0] in args.sections.split(",") or n == "env"
    ]


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cpu", action="store_true", help="run on the CPU (the dry run)")
    ap.add_argument("--tiny", action="store_true", help="tiny shapes and few steps (seconds on a CPU)")
    ap.add_argument("--budget-s", type=float, default=450.0, help="total time budget, seconds")
    ap.add_argument("--out", default=None, help="JSON output path")
    ap.add_argument("--sections", default="", help="comma list of env,peak_matmul,step,max_micro,weight_sync,"
                    "paper_fit (default: all)")  # fmt: skip
    ap.add_argument("--shapes", default=",".join(SHAPE_NAMES))
    ap.add_argument("--seq", type=int, default=None, help="tokens per row (default 4096; tiny 64)")
    ap.add_argument("--rows", type=int, default=None, help="rows per optimizer step (default 16; tiny 4)")
    ap.add_argument("--micro", type=int, default=None, help="rows per micro-batch (default 4; tiny 2)")
    ap.add_argument(
        "--steps", type=int, default=None, help="timed steps per run, after one untimed (default 2)"
    )
    ap.add_argument("--precision", choices=("bf16", "autocast"), default="bf16",
                    help="bf16 weights, or float32 weights under bf16 autocast (no effect with DeepSpeed)")  # fmt: skip
    ap.add_argument("--compile", action="store_true", help="torch.compile the model (both steps)")
    ap.add_argument("--deepspeed", choices=("auto", "on", "off"), default="auto",
                    help="run the project's step through the learner's DeepSpeed engine (auto: on GPU if it imports)")  # fmt: skip
    ap.add_argument("--zero-stage", type=int, default=1, help="ZeRO stage of that engine (one rank)")
    ap.add_argument("--paper-config", default=os.path.join(ROOT, "configs", "paper_dapo_qwen7b.yaml"))
    ap.add_argument("--print-json", action="store_true", help="print the whole report, not only its summary")
    ap.add_argument(
        "--one-child",
        action="store_true",
        help="all sections in one process (default on --cpu; on a GPU each section gets a fresh one)",
    )
    ap.add_argument(
        "--box", action="append", default=[], help="SECTION=SECONDS: another time box for a section"
    )
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--progress", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--run-sections", default="", help=argparse.SUPPRESS)
    ap.add_argument("--deadline", type=float, default=0.0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    for item in args.box:
        name, _, seconds = item.partition("=")
        BOX_OVERRIDES[name] = float(seconds)
    tiny = args.tiny
    for key, big, small in (("seq", 4096, 64), ("rows", 16, 4), ("micro", 4, 2), ("steps", 2, 2)):
        if getattr(args, key) is None:
            setattr(args, key, small if tiny else big)
    return args


BOX_OVERRIDES: dict[str, float] = {}


def box(name: str) -> float:
    return BOX_OVERRIDES.get(name, BOXES[name.split(":")[0]])


# ---- child: runs sections, reports each as a JSON line -------------------------------------------------------
class Ctx:
    """What a section needs: the settings, the device, its time box, and a way to keep partial results."""

    def __init__(self, args, emit):
        import importlib.metadata
        import importlib.util

        import torch

        self.args, self.emit, self.tiny = args, emit, args.tiny
        self.on_cuda = not args.cpu and torch.cuda.is_available()
        self.device = torch.device("cuda:0" if self.on_cuda else "cpu")
        if not self.on_cuda:
            torch.set_num_threads(1)  # tiny shapes gain nothing from more, and a shared CPU makes them spin
        self.seq, self.rows, self.micro, self.steps, self.warmup = (
            args.seq,
            args.rows,
            args.micro,
            args.steps,
            1,
        )
        self.prompt = 8 if args.tiny else 256
        self.precision, self.compile = args.precision, args.compile
        self.param_dtype = torch.float32
        if self.on_cuda and args.precision == "bf16":
            self.param_dtype = torch.bfloat16
        self.search_cap = 4 if args.tiny else 64
        self.sync_shape, self.paper_config, self.paper_micro = "qwen2.5-1.5b", args.paper_config, 1
        try:
            self.deepspeed_version = importlib.metadata.version("deepspeed")
        except importlib.metadata.PackageNotFoundError:  # carried without its metadata (.gpu_deps), or absent
            self.deepspeed_version = "present" if importlib.util.find_spec("deepspeed") else None
        want = args.deepspeed == "on" or (args.deepspeed == "auto" and self.on_cuda)
        self.use_deepspeed = bool(want and self.deepspeed_version)
        self.section, self.until = None, 0.0

    def shape(self, name: str) -> dict:
        from benchmarks.gpu_check_model import SHAPES, TINY

        return dict(TINY) if self.tiny else dict(SHAPES[name])

    def learner_cfg(self):
        from switchpoint.config import LearnerConfig

        return LearnerConfig(zero_stage=self.args.zero_stage, lr=1e-5, betas=[0.9, 0.95], weight_decay=0.01)

    def device_memory(self) -> int | None:
        import torch

        return torch.cuda.get_device_properties(0).total_memory if self.on_cuda else None

    def left(self) -> float:
        return self.until - time.time()

    def partial(self, rec: dict) -> None:
        self.emit({"partial": self.section, "result": rec})


def run_section(ctx: Ctx, name: str) -> dict:
    from benchmarks import gpu_check_paper, gpu_check_sections

    fault = os.environ.get("GPU_CHECK_FAULT", "")  # SECTION=hang|crash|raise: the tests' injected failures
    if fault.partition("=")[0] == name:
        what = fault.partition("=")[2]
        if what == "hang":
            time.sleep(10**6)
        if what == "crash":
            os._exit(9)
        raise RuntimeError(f"injected fault in {name}")
    kind, _, shape = name.partition(":")
    if kind in ("step", "max_micro", "variants"):
        return getattr(gpu_check_sections, kind)(ctx, shape)
    if kind == "paper_fit":
        return gpu_check_paper.paper_fit(ctx)
    return getattr(gpu_check_sections, kind)(ctx)


def cleanup_device() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _jsonable(rec):
    return json.loads(json.dumps(rec, default=str))


def child(args) -> int:
    def emit(obj: dict) -> None:
        with open(args.progress, "a") as f:
            f.write(json.dumps(obj, default=str) + "\n")

    ctx = Ctx(args, emit)
    for name in args.run_sections.split(","):
        emit({"start": name, "t": time.time()})
        ctx.section, t0 = name, time.time()
        ctx.until = min(t0 + box(name), args.deadline) - 3
        status, fatal = "ok", False
        try:
            result = run_section(ctx, name)
        except Exception as e:  # noqa: BLE001  (recorded; the next section runs)
            status, result = (
                "error",
                {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-3000:]},
            )
            # A CUDA error other than out-of-memory can leave the context unusable: a fresh child takes over.
            fatal = ctx.on_cuda and "CUDA" in str(e) and "out of memory" not in str(e)
        result = _jsonable(result)
        emit({"done": name, "status": status, "seconds": round(time.time() - t0, 2), "result": result})
        cleanup_device()
        if fatal:
            return 3
    return 0


# ---- parent: supervises children, derives MFU, writes the JSON ----------------------------------------------
HEAVY = ("step", "max_micro", "variants", "paper_fit", "weight_sync")
"""Sections that build models: with fresh children, each gets a process of its own (the light ones before it
share it), so it starts from an empty allocator and a CUDA fault stays in it."""


def batch(pending: list[str]) -> list[str]:
    """The pending sections up to and including the first heavy one."""
    for i, name in enumerate(pending):
        if name.split(":")[0] in HEAVY:
            return pending[: i + 1]
    return pending


def supervise(passthrough: list[str], names: list[str], deadline: float, fresh: bool, log) -> dict:
    """Run the sections in child processes (each in its own if `fresh`), killing one that outlives its box."""
    sections: dict[str, dict] = {}
    pending = list(names)
    tmp = tempfile.mkdtemp(prefix="gpu_check_")
    for attempt in range(10 * len(names)):
        if not pending:
            break
        if deadline - time.time() < MIN_START_S:
            for n in pending:
                sections[n] = {"status": "skipped", "error": "total time budget spent"}
            break
        progress, out_log = (
            os.path.join(tmp, f"progress_{attempt}.jsonl"),
            os.path.join(tmp, "child.log"),
        )
        cmd = [sys.executable, os.path.abspath(__file__), "--child", "--progress", progress,
               "--run-sections", ",".join(batch(pending) if fresh else pending), "--deadline", str(deadline),
               *passthrough]  # fmt: skip
        with open(out_log, "w") as lf:
            proc = subprocess.Popen(
                cmd, stdout=lf, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True
            )
        current, started, seen, killed = None, 0.0, 0, None
        while True:
            text = open(progress).read() if os.path.exists(progress) else ""
            lines = text.split("\n")[:-1]  # complete lines only: the child may be writing the last one
            for line in lines[seen:]:
                msg = json.loads(line)
                if "start" in msg:
                    current, started = msg["start"], time.time()
                elif "partial" in msg:
                    sections[msg["partial"]] = {"status": "partial", "result": msg["result"]}
                elif "done" in msg:
                    sections[msg["done"]] = {k: msg[k] for k in ("status", "seconds", "result")}
                    pending.remove(msg["done"])
                    log(f"  {msg['done']}: {msg['status']} in {msg['seconds']} s")
                    current = None
            seen = len(lines)
            if proc.poll() is not None:
                break
            now = time.time()
            grace = min(10.0, box(current) / 2) if current else 0.0
            if current and (now - started > box(current) + grace or now > deadline + grace):
                killed = f"killed after {now - started:.0f} s (time box {box(current)} s)"
                os.killpg(proc.pid, 9)
                proc.wait()
                break
            time.sleep(0.2)
        if current is not None:
            tail = open(out_log, errors="replace").read()[-2000:]
            rec = sections.get(current, {})
            why = killed or f"the child process exited with code {proc.returncode}"
            sections[current] = {"status": "timeout" if killed else "crashed", "error": why, "log_tail": tail,
                                 "result": rec.get("result")}  # fmt: skip
            pending.remove(current)
            log(f"  {current}: {why}")
        elif pending and proc.returncode not in (0, 3):
            tail = open(out_log, errors="replace").read()[-2000:]
            for n in pending:
                sections[n] = {
                    "status": "error",
                    "error": f"child exited {proc.returncode} before it",
                    "log_tail": tail,
                }
            break
    return sections


def deepspeed_used(sections: dict) -> bool:
    """Whether a step section's project run went through a DeepSpeed engine (it falls back when one fails)."""
    return any(
        str((s.get("result") or {}).get("project_impl") or "").startswith("deepspeed")
        for name, s in sections.items()
        if name.startswith("step:")
    )


def machine_name(env: dict) -> str:
    slug = lambda s: re.sub(r"[^a-z0-9]+", "-", str(s).lower()).strip("-")  # noqa: E731
    return f"{slug(env.get('gpu') or 'cpu')}_{slug(socket.gethostname())[:24]}"


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child:
        return child(args)
    passthrough = list(argv if argv is not None else sys.argv[1:])
    t0 = time.time()
    deadline = t0 + args.budget_s
    names = section_names(args)
    print(f"gpu_check: {len(names)} sections, budget {args.budget_s:.0f} s", flush=True)
    fresh = not (args.cpu or args.one_child)
    sections = supervise(passthrough, names, deadline, fresh, lambda s: print(s, flush=True))
    env = (sections.get("env") or {}).get("result") or {}
    report = {"schema": 1, "started": datetime.datetime.fromtimestamp(t0).isoformat(timespec="seconds"),
              "seconds": round(time.time() - t0, 1), "budget_s": args.budget_s, "argv": passthrough,
              "env": env, "deepspeed_used": deepspeed_used(sections), "sections": sections}  # fmt: skip
    report["summary"] = summarize(sections, env)
    out = args.out or os.path.join(ROOT, "benchmarks", "results", f"gpu_check_{datetime.date.today().isoformat()}_"
                                   f"{machine_name(env)}{'_dryrun' if args.tiny else ''}.json")  # fmt: skip
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        json.dump(report, f, indent=1, default=str)
    print_summary(report, out)
    print(json.dumps(report if args.print_json else report["summary"], default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
