"""RolloutWorker decodes each completion's text itself (vLLM's per-token detokenizer is off for speed): the text
must be the one vLLM would have given, on a byte-level BPE tokenizer (a user's Qwen2 folder) and on the tiny
default's character tokenizer, for random-init output (arbitrary token sequences, partial UTF-8 included)."""

import pytest
import ray

from actors.rollout import RolloutWorker
from switchpoint.config import RolloutConfig
from switchpoint.tiny_model import build_tiny_model
from tests.conftest import init_local_ray
from tests.test_user_model import build_user_folder

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("rollout_text")
    user = build_user_folder(root / "user")["model"]
    tiny = build_tiny_model(
        root / "tiny", hidden_size=128, num_attention_heads=2, num_hidden_layers=1, intermediate_size=256
    )
    init_local_ray()
    yield {"bpe": str(user), "char": str(tiny)}
    ray.shutdown()


@pytest.mark.parametrize("kind", ["bpe", "char"])
def test_own_decoding_gives_vllms_text(models, kind):
    from transformers import AutoTokenizer

    path = models[kind]
    tok = AutoTokenizer.from_pretrained(path)
    worker = ray.remote(num_cpus=1)(RolloutWorker).remote(path, RolloutConfig(), 128, "auto", 0)
    try:
        prompts = [tok.encode(f"Compute {a} + {a + 3}.", add_special_tokens=False) for a in range(6)]
        seeds = list(range(100, 106))
        ours, vllms = ray.get(
            [
                worker.generate.remote(prompts, 4, 1.0, 40, seeds),
                worker.generate.remote(prompts, 4, 1.0, 40, seeds, 1.0, True),
            ]
        )
    finally:
        ray.kill(worker)
    pairs = [(a, b) for o, v in zip(ours, vllms) for a, b in zip(o["samples"], v["samples"])]
    assert len(pairs) == 24
    for a, b in pairs:
        assert a["token_ids"] == b["token_ids"]  # same seeds, same samples
        assert a["logprobs"] == b["logprobs"] and len(a["logprobs"]) == len(a["token_ids"])
        assert a["text"] == b["text"]
    assert sum(len(a["text"]) for a, _ in pairs) > 200
