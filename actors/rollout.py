"""RolloutWorker: one vLLM engine in the actor's own process; n samples per prompt with logprobs.

Weights are swapped in place (`reload_weights` through collective_rpc), so the engine is never restarted.
"""

from __future__ import annotations

import logging
import os
import time
import warnings

from switchpoint.config import RolloutConfig


class _RotaryReloadFilter(logging.Filter):
    """Drops vLLM's "RotaryEmbedding: Failed to load weights" on every weight sync. The rotary layer's only
    loadable tensor is its cos/sin cache, computed from the config and absent from every checkpoint (Hugging
    Face keeps inv_freq out of state dicts), so vLLM puts its own cache back: nothing is lost, yet the warning
    came about once a second in RL and read like an error. The same warning for any other layer (a weight
    that really did not arrive) still passes, and the greedy check after a sync compares outputs anyway."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("RotaryEmbedding: Failed to load weights")


def _set_vllm_log_level(level: int) -> None:
    logger = logging.getLogger("vllm")
    logger.setLevel(level)
    for handler in logger.handlers:
        handler.setLevel(level)


def _quiet_benign_reload_warning() -> None:
    logger = logging.getLogger("vllm.model_executor.model_loader.reload.layerwise")
    if not any(isinstance(f, _RotaryReloadFilter) for f in logger.filters):
        logger.addFilter(_RotaryReloadFilter())


def _decode(tokenizer, token_ids) -> str:
    """A completion's text as vLLM's streaming detokenizer gives it: special tokens skipped, and the bytes of a
    character the completion did not finish (byte-level BPE cut at max_tokens) dropped, not shown as U+FFFD."""
    return tokenizer.decode(token_ids, skip_special_tokens=True).rstrip("\ufffd")


class RolloutWorker:
    def __init__(
        self, model_path: str, cfg: RolloutConfig, max_model_len: int, dtype: str = "auto", seed: int = 0
    ):
        # In-process engine: starts in seconds inside a Ray actor and lets collective_rpc reach the model directly.
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(cfg.kv_cache_gib)
        # Engine start-up prints a screenful of advice (CPU allocator and NUMA hints, eager mode, the seed we set,
        # no Triton on CPU), forwarded to the job's driver log between the progress lines. It is quieted on
        # purpose while the engine starts (errors still show; VLLM_LOGGING_LEVEL set by a user wins), and
        # warnings are back on for the run, so a weight sync that fails still says so.
        quiet_start = "VLLM_LOGGING_LEVEL" not in os.environ
        if quiet_start:
            os.environ["VLLM_LOGGING_LEVEL"] = "ERROR"
            # Messages logged while vllm is imported, before its handler exists, inherit this level.
            logging.getLogger("vllm").setLevel(logging.ERROR)
            os.environ.setdefault(
                "TORCH_CPP_LOG_LEVEL", "ERROR"
            )  # the NUMA-binding note from torch's C++ side
            warnings.filterwarnings("ignore", message=r"`torch\.distributed\.reduce_op` is deprecated")
        import torch
        from vllm import LLM

        self.on_gpu = torch.cuda.is_available()
        if not self.on_gpu and cfg.threads:
            # Ray sets OMP_NUM_THREADS to the actor's CPU reservation; vLLM's CPU worker then blocks
            # torch.set_num_threads, so another count is set here, before the engine starts.
            torch.set_num_threads(cfg.threads)
        if dtype == "auto":
            dtype = "bfloat16" if self.on_gpu else "float32"
        self.cfg = cfg
        t0 = time.perf_counter()
        kwargs = dict(
            model=model_path,
            dtype=dtype,
            seed=seed,
            max_model_len=max_model_len,
            enable_prefix_caching=False,
            enforce_eager=True,
            # Sampled-token log-probs after temperature and top-p: the distribution the token was drawn from,
            # so `rl.old_logprobs: engine` (and rollouts sampled ahead, rl.max_staleness) give the behaviour
            # policy's own log-probs (vLLM's default is the raw model's).
            logprobs_mode="processed_logprobs",
            use_tqdm_on_load=False,  # a progress bar per engine start in the driver log
        )
        if self.on_gpu:
            kwargs["gpu_memory_utilization"] = cfg.gpu_memory_utilization
        else:
            # vLLM's CPU runner cannot rewind a seeded request's generator after a partial (chunked) prefill
            # ("CPU Generator does not use offset"), so a call whose prompts overflow a step's token budget (256
            # prompts of 17+ tokens) crashed RL, which seeds every prompt. Whole prompts only: one that does not
            # fit waits for the next step (the budget stays max(4096, max_model_len)).
            kwargs["enable_chunked_prefill"] = False
        self.llm = LLM(**kwargs)
        if quiet_start:
            _set_vllm_log_level(logging.WARNING)
        _quiet_benign_reload_warning()
        self.tokenizer = self.llm.get_tokenizer()
        self.start_seconds = time.perf_counter() - t0

    def ready(self) -> dict:
        import torch

        return {
            "start_seconds": self.start_seconds,
            "eos_token_id": self.tokenizer.eos_token_id,
            "pid": os.getpid(),
            "threads": torch.get_num_threads(),
        }

    def generate(
        self,
        prompts: list,
        n: int,
        temperature: float,
        max_tokens: int,
        seeds: list[int] | None = None,
        top_p: float = 1.0,
        engine_text: bool = False,
    ) -> list[dict]:
        """For each prompt (token ids, or text): prompt token ids and n completions (token ids, text,
        sampled-token logprobs). seeds gives each prompt its own sampling stream.

        The text is decoded once per completion here (special tokens skipped, as vLLM does): vLLM's own
        detokenizer decodes every sampled token as it comes, and the logprob of each too, ~20% of a tiny CPU
        engine's step (benchmarks/engine_settings.py). engine_text=True takes vLLM's text instead (the test
        that both are the same)."""
        from vllm import SamplingParams

        def params(seed):
            return SamplingParams(
                n=n,
                temperature=temperature,
                top_p=top_p,
                max_tokens=max_tokens,
                logprobs=0 if temperature > 0 else None,
                seed=seed,
                detokenize=engine_text,
                flat_logprobs=True,  # one list per completion instead of a dict per token
            )

        # Token ids go in as they are, so RL prompts are tokenized exactly like the SFT data (no extra BOS).
        inputs = [{"prompt_token_ids": list(p)} if not isinstance(p, str) else p for p in prompts]
        sampling = [params(sd) for sd in seeds] if seeds is not None else params(None)
        outs = self.llm.generate(inputs, sampling, use_tqdm=False)
        results = []
        for out in outs:
            samples = []
            for c in out.outputs:
                lps = None
                if c.logprobs is not None:  # the sampled token comes first at each position
                    flat = c.logprobs
                    lps = [float(flat.logprobs[k]) for k in flat.start_indices]
                text = c.text if engine_text else _decode(self.tokenizer, c.token_ids)
                samples.append(
                    {
                        "token_ids": list(c.token_ids),
                        "text": text,
                        "logprobs": lps,
                        "finish_reason": c.finish_reason,
                    }
                )
            results.append({"prompt_token_ids": list(out.prompt_token_ids), "samples": samples})
        return results

    def pid(self) -> int:
        return os.getpid()

    def greedy(self, prompts: list, max_tokens: int) -> list[list[int]]:
        outs = self.generate(prompts, n=1, temperature=0.0, max_tokens=max_tokens)
        return [o["samples"][0]["token_ids"] for o in outs]

    def load_weights(self, state_dict: dict) -> float:
        """Swap in weights given as name -> tensor (HF names); returns seconds taken."""
        t0 = time.perf_counter()
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": iter(state_dict.items())})
        self.llm.reset_prefix_cache()
        return time.perf_counter() - t0

    def load_weights_from_path(self, path: str) -> float:
        """Swap in weights from a saved Hugging Face folder."""
        t0 = time.perf_counter()
        self.llm.collective_rpc("reload_weights", kwargs={"weights_path": path})
        self.llm.reset_prefix_cache()
        return time.perf_counter() - t0
