"""LearnerGroup (2 DeepSpeed ranks on gloo) and RolloutWorker (vLLM) together: SFT steps, the objective switch on
the same processes, the three weight-sync implementations, and rollback to a saved checkpoint."""

import pytest
import ray
import torch

from actors.collective_sync import CollectiveSync, collective_backend
from actors.learner_group import LearnerGroup
from actors.rollout import RolloutWorker
from actors.weight_buckets import plan_buckets
from actors.weight_sync import DiskSync, ObjectStoreSync
from switchpoint.config import LearnerConfig, RolloutConfig
from switchpoint.data import tokenize_sft
from switchpoint.synthetic import make_problem
from switchpoint.tiny_model import build_tiny_model
from tests.conftest import init_local_ray

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    import random

    from transformers import AutoTokenizer

    tmp = tmp_path_factory.mktemp("learner")
    model = build_tiny_model(
        tmp / "model", hidden_size=128, num_attention_heads=2, num_hidden_layers=1, intermediate_size=256
    )
    tok = AutoTokenizer.from_pretrained(model)
    rng = random.Random(0)
    rows = [make_problem(rng, 1) for _ in range(32)]
    examples = tokenize_sft(rows, tok, max_len=64)
    init_local_ray()
    learner = LearnerGroup(
        model,
        LearnerConfig(num_ranks=2, zero_stage=2, lr=3e-3, warmup_steps=1, micro_batch_size=4),
        "auto",
        0,
    )
    worker = ray.remote(num_cpus=1)(RolloutWorker).remote(model, RolloutConfig(), 128, "auto", 0)
    ray.get(worker.ready.remote())
    yield {
        "model": model,
        "tmp": tmp,
        "tok": tok,
        "rows": rows,
        "examples": examples,
        "learner": learner,
        "worker": worker,
    }
    learner.shutdown()
    ray.shutdown()


def _batch(examples):
    return {"input_ids": [e["input_ids"] for e in examples], "loss_mask": [e["loss_mask"] for e in examples]}


def _greedy_pair(stack, n=6):
    prompts = [r["prompt"] for r in stack["rows"][:n]]
    ids = [stack["tok"].encode(p, add_special_tokens=False) for p in prompts]
    learner = stack["learner"].greedy_generate(ids, 30, stack["tok"].eos_token_id)
    engine = ray.get(stack["worker"].greedy.remote(prompts, 30))
    return learner, engine


def test_sft_then_sync_makes_greedy_outputs_equal(stack):
    learner, ex = stack["learner"], stack["examples"]
    before = learner.eval_loss(_batch(ex))
    pids = learner.pids()
    for _ in range(25):
        out = learner.train_step(_batch(ex[:16]), sum(sum(e["loss_mask"][1:]) for e in ex[:16]))
    assert out["loss"] > 0 and learner.eval_loss(_batch(ex)) < before
    stale_l, stale_e = _greedy_pair(stack)
    assert stale_l != stale_e  # the engine still serves the random init
    info = ObjectStoreSync().sync(learner, [stack["worker"]], 25)
    assert info["seconds"] > 0
    l_out, e_out = _greedy_pair(stack)
    assert l_out == e_out
    assert learner.pids() == pids


def test_objective_switch_on_same_processes_and_disk_sync(stack):
    learner, ex = stack["learner"], stack["examples"]
    pids = learner.pids()
    learner.set_objective(
        "rl",
        {"algorithm": "dapo", "clip_low": 0.2, "clip_high": 0.28, "lr": 1e-3, "max_tokens": 40},
        reset_optimizer=True,
    )
    batch = _batch(ex[:8])
    batch["advantages"] = [1.0, -1.0] * 4
    # Behaviour log-probs recomputed by the ranks (rl.old_logprobs: learner, later mini-batches) equal the
    # update's own forward on the same weights: ratio 1 on every token.
    batch["old_logprobs"] = learner.compute_logprobs(batch)
    assert [len(lp) for lp in batch["old_logprobs"]] == [sum(m) for m in batch["loss_mask"]]
    out = learner.train_step(batch, sum(sum(m[1:]) for m in batch["loss_mask"]))
    assert "clip_fraction" in out and out["grad_norm"] > 0 and out["lr"] == pytest.approx(1e-3)
    assert 0.0 <= out["ratio_max_dev"] < 1e-3
    assert learner.pids() == pids
    DiskSync(str(stack["tmp"])).sync(learner, [stack["worker"]], 26)
    l_out, e_out = _greedy_pair(stack)
    assert l_out == e_out


def test_engine_logprobs_are_the_sampling_policys_after_temperature(stack):
    """vLLM returns each sampled token's log-prob after temperature (logprobs_mode processed_logprobs), so at
    temperature 0.7 the engine's log-probs equal the learner's at 0.7 (rl.old_logprobs: engine, and rollouts
    sampled ahead, are the behaviour policy's) and differ from the raw, temperature-1 ones."""
    learner, worker, tok = stack["learner"], stack["worker"], stack["tok"]
    ObjectStoreSync().sync(learner, [worker], 27)
    prompts = [tok.encode(r["prompt"], add_special_tokens=False) for r in stack["rows"][:4]]
    outs = ray.get(worker.generate.remote(prompts, 3, 0.7, 30, [11, 12, 13, 14], 1.0))
    batch = {"input_ids": [], "loss_mask": []}
    engine = []
    for o in outs:
        for smp in o["samples"]:
            batch["input_ids"].append(o["prompt_token_ids"] + smp["token_ids"])
            batch["loss_mask"].append([0] * len(o["prompt_token_ids"]) + [1] * len(smp["token_ids"]))
            engine.append(smp["logprobs"])
    settings = {"algorithm": "dapo", "clip_low": 0.2, "clip_high": 0.28, "lr": 1e-3, "max_tokens": 30}
    dev = {}
    for t in (0.7, 1.0):
        learner.set_objective("rl", dict(settings, temperature=t, old_logprobs="engine"))
        mine = learner.compute_logprobs(batch)
        dev[t] = max(abs(a - b) for e, m in zip(engine, mine) for a, b in zip(e, m))
    assert sum(len(e) for e in engine) > 50
    assert dev[0.7] < 1e-3
    assert dev[1.0] > 1e-2


def test_rollback_to_checkpoint_restores_weights(stack):
    learner, ex = stack["learner"], stack["examples"]
    path = str(stack["tmp"] / "ckpt")
    learner.save_hf(path)
    saved = ray.get(learner.get_weights_ref())
    learner.set_objective("sft")
    for _ in range(3):
        learner.train_step(_batch(ex[:16]), sum(sum(e["loss_mask"][1:]) for e in ex[:16]))
    moved = ray.get(learner.get_weights_ref())
    assert any(not torch.equal(saved[k], moved[k]) for k in saved)
    learner.load_hf(path)
    back = ray.get(learner.get_weights_ref())
    assert all(torch.equal(saved[k], back[k]) for k in saved)
    # Training continues from the restored weights on both ranks (ZeRO-2 master copies refreshed).
    learner.train_step(_batch(ex[:16]), sum(sum(e["loss_mask"][1:]) for e in ex[:16]))
    after = ray.get(learner.get_weights_ref())
    delta = max(float((after[k] - back[k]).abs().max()) for k in back)
    assert 0 < delta < 0.1


def test_collective_sync_broadcasts_the_weights(stack):
    learner = stack["learner"]
    # The engine back on the random init, so equal greedy outputs below can only come from the broadcast.
    ray.get(stack["worker"].load_weights_from_path.remote(str(stack["model"])))
    stale_l, stale_e = _greedy_pair(stack)
    assert stale_l != stale_e
    sync = CollectiveSync()
    info = sync.sync(learner, [stack["worker"]], 30)
    assert info["backend"] == "gloo" and info["group"] == 1 and "fallback" not in info
    l_out, e_out = _greedy_pair(stack)
    assert l_out == e_out
    # Re-forming after an engine or the learner group is replaced: tests/test_resume_faults.py (injected faults).


def test_collective_backend_and_buckets():
    assert collective_backend("cpu", ["cpu", "cpu"]) == ("gloo", None)
    assert collective_backend("cuda:0", ["cuda", "cuda"]) == ("nccl", None)
    backend, why = collective_backend("cuda:0", ["cuda", "cpu"])
    assert backend is None and "engine(s) [1]" in why
    items = [("a", (4, 4), "float32", 4), ("b", (8,), "float32", 4), ("c", (2,), "bfloat16", 2)]
    buckets = plan_buckets(items, limit=95)
    assert [[n for n, _, _ in b["items"]] for b in buckets] == [["a"], ["b"], ["c"]]  # 64 + 32 bytes > 95
    assert [b["numel"] for b in plan_buckets(items)] == [24, 2]


def test_a_peer_killed_mid_collective_is_a_rank_fault(stack):
    """A live rank whose collective fails because its peer was killed (gloo: connection closed) is a group
    fault: the group raises LearnerRankLost, the RayActorError recovery rebuilds the group for; a genuine error
    with every rank alive still surfaces as itself. A group of its own (half a CPU per rank), not the stack's."""
    import os
    import signal
    import time

    from ray.exceptions import RayActorError, RayTaskError

    from actors.learner_group import LearnerGroup, LearnerRankLost

    group = LearnerGroup(
        stack["model"],
        LearnerConfig(num_ranks=2, zero_stage=2, micro_batch_size=4, cpus_per_rank=0.5),
        "auto",
        0,
    )
    try:
        with pytest.raises(RayTaskError, match="input_ids") as genuine:
            group._gather(
                [r.train_step.remote({}, 1.0) for r in group.ranks]
            )  # a bad shard, every rank alive
        assert not isinstance(genuine.value, RayActorError)
        (shard, _) = group.shard(_batch(stack["examples"][:8]))
        survivor = group.ranks[0].train_step.remote(
            shard, 64.0
        )  # rank 1 idle: rank 0 waits in the all-reduce
        time.sleep(3.0)
        assert not ray.wait([survivor], timeout=0)[0]  # still inside the collective
        os.kill(
            ray.get(group.ranks[1].pid.remote(), timeout=60), signal.SIGKILL
        )  # rank 0 is busy: ask rank 1
        with pytest.raises(LearnerRankLost) as lost:
            group._gather([survivor])  # only the survivor's error can arrive: the race's worse order
        assert isinstance(lost.value, RayActorError) and lost.value.dead_ranks == [1]
        assert isinstance(lost.value.__cause__, RayTaskError)
    finally:
        group.shutdown()
