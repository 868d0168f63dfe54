"""Start (or join) Ray, create the run's Controller actor, show progress until it finishes."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time

import ray

from actors.progress import RUN_LOG_MARK, switch_line
from actors.progress import fmt as _fmt
from actors.progress import progress_line as _progress_line
from cluster.placement_strategy import StrategyPlacement
from cluster.resources import check_resources
from switchpoint.checks import needs_engines
from switchpoint.config import Config, to_dict
from switchpoint.prepare import check_inputs, resolve_paths

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The packages every actor imports; shipped to each node with the job (runtime_env py_modules).
CODE_PACKAGES = ("actors", "trainers", "plasticity", "cluster", "switchpoint")


def job_runtime_env() -> dict:
    """The runtime_env of the run's actors: the code travels through Ray (no path of this machine), so a worker
    node without the repository runs them too. A job submitted with --working-dir has the code on every node
    already (Ray puts the working dir on the workers' path); anything else gets the packages as py_modules."""
    import json

    from ray._private.runtime_env.constants import RAY_JOB_CONFIG_JSON_ENV_VAR

    env: dict = {
        "env_vars": {
            "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
            "TOKENIZERS_PARALLELISM": "false",
            # No Hugging Face progress bars in actors (a tiny model built by the Controller, checkpoint saves):
            # forwarded to the job's driver log, each drew a bar between the progress lines.
            "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        }
    }
    job = json.loads(os.environ.get(RAY_JOB_CONFIG_JSON_ENV_VAR, "{}"))
    if not (job.get("runtime_env") or {}).get("working_dir"):
        env["py_modules"] = [os.path.join(REPO_ROOT, p) for p in CODE_PACKAGES]
    return env


def init_ray(cfg: Config | None = None, need_cpus: float | None = None) -> None:
    """Join RAY_ADDRESS when set (a `ray start` head or a `ray job submit` job); else a local Ray on 127.0.0.1."""
    if ray.is_initialized():
        return
    env = job_runtime_env()
    if os.environ.get("RAY_ADDRESS"):
        with _quiet_code_upload():
            ray.init(address=os.environ["RAY_ADDRESS"], runtime_env=env, log_to_driver=True)
        _drop_forwarded_run_log()
        return
    need = 4.0
    if need_cpus is not None:
        need = need_cpus + 1
    elif cfg is not None:
        need = (
            cfg.learner.num_ranks * cfg.learner.cpus_per_rank
            + cfg.rollout.num_workers * cfg.rollout.cpus_per_worker
            + cfg.verifier.num_workers * cfg.verifier.cpus_per_worker
            + 1
        )
    # Ray's CPU count is a scheduling budget: a small machine oversubscribes its cores rather than deadlock.
    forward = os.environ.get("SWITCHPOINT_RAY_LOGS") == "1"
    with _quiet_code_upload():
        ray.init(
            address="local",  # always a new local Ray, never a cluster already running here
            num_cpus=max(os.cpu_count() or 1, int(need + 0.999)),
            _node_ip_address="127.0.0.1",
            include_dashboard=False,
            runtime_env=env,
            log_to_driver=forward,
        )
    if forward:
        _drop_forwarded_run_log()


UPLOAD_NOTICES = (
    "Creating a file package for local module",
    "Pushing file package",
    "Successfully pushed file",
)


class _UploadNoticeFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(UPLOAD_NOTICES)


@contextlib.contextmanager
def _quiet_code_upload():
    """ray.init packs and uploads each py_modules package with three INFO lines apiece (15 lines before the run
    folder's). Those notices are dropped on purpose, at the handlers of Ray's `ray` logger, which print them; a
    failed upload raises, and Ray's other lines (warnings of the upload too) still show."""
    handlers = list(logging.getLogger("ray").handlers)
    quiet = _UploadNoticeFilter()
    for handler in handlers:
        handler.addFilter(quiet)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(quiet)


def _drop_forwarded_run_log() -> None:
    """The Controller logs the run's progress, switch and fault lines into its own log (the dashboard's actor
    log, actors/progress.py); this driver prints them already, so the copies Ray forwards from the actor are
    dropped before they reach the driver log. Every other forwarded line still comes. Ray keeps its forwarding
    handler in a private dispatcher (Ray is pinned); if that changes, the lines come twice rather than not at all."""
    try:
        from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher
    except ImportError:
        return

    def without_run_log(forward):
        def handler(batch):
            lines = [line for line in batch.get("lines", []) if RUN_LOG_MARK not in line]
            if lines:
                forward(dict(batch, lines=lines))

        handler.switchpoint_filter = True
        return handler

    with dispatcher._lock:
        dispatcher.handlers = [
            (name, fn if getattr(fn, "switchpoint_filter", False) else without_run_log(fn))
            if name == "ray_print_logs"
            else (name, fn)
            for name, fn in dispatcher.handlers
        ]


def check_verifier(cfg: Config) -> None:
    """verifier.kind imported here as the verifier actors will import it, so a typo in a custom
    `module:function` stops the run with one line before Ray starts. Ray puts the driver's current directory on
    the actors' path (a job's working dir instead), so it is on the path for this check too."""
    from actors.verifier import load_verify_function, resolve_verifier_spec
    from switchpoint.config import ConfigError

    here = os.getcwd()
    added = here not in sys.path
    if added:
        sys.path.append(here)
    try:
        load_verify_function(resolve_verifier_spec(cfg.verifier.kind))
    except ValueError as e:
        raise ConfigError(f"config key 'verifier.kind': {e}") from None
    finally:
        if added:
            sys.path.remove(here)


def new_run_dir(cfg: Config) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = os.path.join(cfg.run.output_dir, f"{cfg.run.name}-{stamp}")
    n = 1
    while os.path.exists(path):
        n += 1
        path = os.path.join(cfg.run.output_dir, f"{cfg.run.name}-{stamp}-{n}")
    os.makedirs(path)
    return path


def _switch_figures(controller) -> dict | None:
    """Run inside the Controller actor (`__ray_call__`): the switch record and P_sft once both exist."""
    summary = getattr(controller, "summary", None) or {}
    p_sft = (summary.get("accuracy") or {}).get("at_switch")
    if not summary.get("switch") or p_sft is None:
        return None
    return dict(summary["switch"], p_sft=p_sft)


LAUNCH_FILE = "launch.json"


def resume_target(run_dir: str) -> tuple[Config, str | None]:
    """The config and trunk of a run folder to resume; ValueError naming the folder when it cannot be."""
    import json

    from switchpoint.config import load_config

    run_dir = os.path.abspath(run_dir)
    cfg_path = os.path.join(run_dir, "config.yaml")
    if not os.path.isfile(cfg_path):
        raise FileNotFoundError(f"--resume {run_dir}: no config.yaml there; is it a switchpoint run folder?")
    summary = os.path.join(run_dir, "summary.json")
    if os.path.isfile(summary):
        with open(summary) as f:
            done = json.load(f)
        if not done.get("error") and not done.get("stopped_early"):
            raise ValueError(f"--resume {run_dir}: the run finished already (summary.json has no error)")
    launch = {}
    if os.path.isfile(os.path.join(run_dir, LAUNCH_FILE)):
        with open(os.path.join(run_dir, LAUNCH_FILE)) as f:
            launch = json.load(f)
    return load_config(cfg_path), launch.get("from_trunk")


def run_pipeline(
    cfg: Config | None,
    quiet: bool = False,
    run_dir: str | None = None,
    from_trunk: str | None = None,
    resume: str | None = None,
) -> tuple[str, dict]:
    """Run one SFT -> switch -> RL pipeline; returns (run folder, summary). from_trunk: skip SFT and branch RL
    from that trunk's checkpoint (the one switch.policy names, e.g. step:N). resume: a run folder to continue
    from its latest resume state (its own config and trunk; cfg is then None)."""
    import json

    from actors.chaos import parse_injections
    from actors.controller import Controller
    from actors.fault_events import FaultLimitError

    if resume:
        cfg, from_trunk = resume_target(resume)
        run_dir = os.path.abspath(resume)
    if from_trunk:
        from cluster.trunk import check_trunk_matches
        from switchpoint.trunk import load_trunk

        trunk = load_trunk(from_trunk)
        if not resume:
            check_trunk_matches(trunk, cfg)  # on the config as written, before paths are resolved
        trunk.branch_decision(cfg.switch)  # a missing step or a policy that never branches fails here, named
        from_trunk = trunk.dir
    cfg = resolve_paths(cfg)
    import transformers

    # Building the tiny model draws a "Writing model shards" bar in the driver's (the job's) log.
    transformers.utils.logging.disable_progress_bar()
    parse_injections(cfg.faults.inject)  # a malformed faults.inject item, named
    StrategyPlacement.from_config(cfg)  # a malformed rollout.placement or verifier.placement, named
    rl = needs_engines(cfg, from_trunk is not None)
    if rl:
        check_verifier(cfg)  # a custom verifier (module:function) that does not import, named
    joining = bool(os.environ.get("RAY_ADDRESS"))
    if joining:
        # On a running cluster the resource check costs a connection: do it before building data or a model.
        init_ray(cfg)
        check_resources(cfg, rl=rl)
    # Fail on a bad model folder, data row or prompt length here, before a local Ray starts.
    check_inputs(cfg)
    if not joining:
        init_ray(cfg)
        # A fixed cluster too small for the config: fail now, before a run folder exists, not wait forever.
        check_resources(cfg, rl=rl)
    if run_dir is None:
        run_dir = new_run_dir(cfg)
    else:
        os.makedirs(run_dir, exist_ok=True)
    with open(os.path.join(run_dir, LAUNCH_FILE), "w") as f:
        json.dump({"from_trunk": from_trunk}, f)
    name = f"switchpoint-controller-{os.path.basename(run_dir)}"
    placement = StrategyPlacement.from_config(cfg, ray.get_runtime_context().get_node_id())
    controller = (
        ray.remote(Controller)
        .options(name=name, num_cpus=0, max_concurrency=4)
        .remote(to_dict(cfg), run_dir, from_trunk, placement, bool(resume))
    )
    if not quiet:
        print(f"run folder: {run_dir}\ncontroller actor: {name}", flush=True)
    events_shown = 0
    done_ref = controller.run.remote()
    tty = sys.stdout.isatty()
    last_line, last_print = "", 0.0
    switch_shown = False
    try:
        while True:
            ready, _ = ray.wait([done_ref], timeout=1.0)
            if ready:
                break
            if quiet:
                continue
            status = ray.get(controller.status.remote())
            for event in status["events"][events_shown:]:  # faults and resumes: a line of their own
                print(("\n" if tty else "") + event, flush=True)
            events_shown = len(status["events"])
            if not switch_shown and "switch_step" in status["last"]:
                sw = ray.get(controller.__ray_call__.remote(_switch_figures))
                if sw is not None:
                    print(("\n" if tty else "") + switch_line(sw), flush=True)
                    switch_shown = True
            line = _progress_line(status)
            if tty:
                print("\r" + line[:160].ljust(160), end="", flush=True)
            elif line != last_line and time.time() - last_print > 5:
                print(line, flush=True)
                last_line, last_print = line, time.time()
        try:
            summary = ray.get(done_ref)
            if not quiet and not switch_shown and summary.get("switch"):  # a switch between two polls
                acc = summary.get("accuracy") or {}
                print(switch_line(dict(summary["switch"], p_sft=acc.get("at_switch"))), flush=True)
            if not quiet and not tty:
                # The last line shows the run's final figures (those of the summary), however recent the last was.
                line = _progress_line(ray.get(controller.status.remote()))
                if line != last_line:
                    print(line, flush=True)
        except ray.exceptions.RayTaskError as e:
            if isinstance(e.cause, FaultLimitError):
                raise e.cause from None  # a reason for people, not a traceback from inside an actor
            raise
        finally:
            if not quiet:
                for event in ray.get(controller.status.remote())["events"][events_shown:]:
                    print(("\n" if tty else "") + event, flush=True)
    except KeyboardInterrupt:
        ray.get(controller.request_stop.remote())
        print("\nstopping after the current step (Ctrl-C again to abort) ...", flush=True)
        summary = ray.get(done_ref)
    finally:
        if tty and not quiet:
            print()
    linger = float(os.environ.get("SWITCHPOINT_METRICS_LINGER_S") or 0)
    if linger > 0:
        # A dead Controller's series leave the node's metrics endpoint: keep it this long, so the last figures
        # reach the metrics agent and a Prometheus scrape.
        time.sleep(linger)
    ray.kill(controller)
    return run_dir, summary


def print_summary(run_dir: str, s: dict) -> None:
    sw = s.get("switch")
    acc = s.get("accuracy", {})
    print(f"\nrun folder  {run_dir}")
    if sw:
        print(
            f"switch      step {sw['step']} ({sw['regime']}, val loss {sw['val_loss']:.4f}, {sw['reason']}); "
            f"hot swap took {sw['seconds']:.2f}s"
        )
    else:
        print("switch      none (policy never)")
    print(
        f"accuracy    at switch {_fmt(acc.get('at_switch'), '.3f')}  final {_fmt(acc.get('final'), '.3f')} "
        "(held-out avg@k)"
    )
    print(
        f"wall        {s['wall_seconds']:.0f}s  (setup {s['setup_seconds']:.0f}s, SFT {s['sft_seconds']:.0f}s)"
    )
    if s.get("plot"):
        print(f"plot        {s['plot']}")
