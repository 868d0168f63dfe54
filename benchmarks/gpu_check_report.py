"""gpu_check's report: MFU and speed-ups derived from the sections' raw figures, a summary, the printed table.
Pure Python (no torch), so the parent process stays light."""

from __future__ import annotations

TARGET = {"shape": "qwen2.5-1.5b", "run": "project_sft", "mfu": 0.45}
SPEC_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 70e12, "L4": 121e12}
"""Dense bf16 peak by GPU name (vendor data sheets, no sparsity), for a second MFU beside the measured one."""


def summarize(sections: dict, env: dict) -> dict:
    """Adds mfu (model FLOPs / step time / measured peak), mfu_paper_flops and mfu_vs_spec to every timed run in
    place, and returns the summary: runs by shape, speed-ups over the plain step, the target, the largest
    micro-batches, weight-sync rates, the paper config's fit, failed sections."""
    peak = ((sections.get("peak_matmul") or {}).get("result") or {}).get("peak_flops")
    spec = next((v for k, v in SPEC_BF16.items() if k in str(env.get("gpu", ""))), None)
    summary: dict = {"peak_flops_measured": peak, "peak_flops_spec": spec, "runs": {}}
    for name, sec in sections.items():
        if not name.startswith(("step:", "variants:")) or not sec.get("result"):
            continue
        for run, r in sec["result"].get("runs", {}).items():
            if not r.get("step_s"):
                continue  # a run that failed (out of memory, error): recorded as such
            if peak:
                r["mfu"] = r["model_flops"] / r["step_s"] / peak
                r["mfu_paper_flops"] = r["paper_flops"] / r["step_s"] / peak
            if spec:
                r["mfu_vs_spec"] = r["model_flops"] / r["step_s"] / spec
            keys = ("tokens_per_s", "mfu", "step_s", "peak_mem_bytes")
            summary["runs"][f"{name.partition(':')[2]}/{run}"] = {k: r.get(k) for k in keys}
    for key, val in summary["runs"].items():
        other = summary["runs"].get(key.replace("/project_", "/baseline_"))
        if "/project_" in key and other and other.get("step_s"):
            val["speedup_vs_baseline"] = other["step_s"] / val["step_s"]
    hit = summary["runs"].get(f"{TARGET['shape']}/{TARGET['run']}", {})
    summary["target"] = dict(TARGET, measured=hit.get("mfu"), met=None if hit.get("mfu") is None else
                             hit["mfu"] >= TARGET["mfu"])  # fmt: skip
    result = lambda name: (sections.get(name) or {}).get("result") or {}  # noqa: E731
    summary["max_micro"] = {
        n[10:]: {impl: result(n).get(impl, {}).get("largest") for impl in ("project", "baseline")}
        for n in sections
        if n.startswith("max_micro:")
    }
    sync = result("weight_sync")
    summary["weight_sync_bytes_per_s"] = {k: v["bytes_per_s"] for k, v in sync.items() if isinstance(v, dict)}
    keys = ("per_rank_gib", "fits_this_device", "fits_80gib", "with_checkpointing_gib")
    phases = result("paper_fit").get("phases", {})
    summary["paper_fit"] = {ph: {k: v.get(k) for k in keys} for ph, v in phases.items()}
    summary["failed_sections"] = [n for n, s in sections.items() if s.get("status") != "ok"]
    return summary


def print_summary(report: dict, out: str) -> None:
    s = report["summary"]
    gib = lambda b: f"{b / (1 << 30):.1f} GiB" if b else "-"  # noqa: E731
    print(f"device: {report['env'].get('gpu') or report['env'].get('device')}; deepspeed used: "
          f"{report['deepspeed_used']}; peak (measured) {(s['peak_flops_measured'] or 0) / 1e12:.1f} TFLOP/s")  # fmt: skip
    for key, r in s["runs"].items():
        if not r.get("tokens_per_s"):
            continue
        mfu = f"{r['mfu']:.1%}" if r.get("mfu") is not None else "-"
        speed = f"  x{r['speedup_vs_baseline']:.2f} vs plain" if r.get("speedup_vs_baseline") else ""
        print(
            f"  {key:34s} {r['tokens_per_s']:12.0f} tok/s  MFU {mfu:>6s}  peak {gib(r.get('peak_mem_bytes'))}{speed}"
        )
    t = s["target"]
    print(f"target: {t['shape']} {t['run']} MFU >= {t['mfu']:.0%}: measured {t['measured']}, met {t['met']}")
    print(f"failed sections: {s['failed_sections'] or 'none'}; took {report['seconds']} s; JSON: {out}")
