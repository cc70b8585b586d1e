"""The scale engine's vLLM rollout actor: one engine (tensor parallel through vLLM's own Ray
workers) that samples and scores; its end of the weight sync is `weight_sync.WeightReceiver`.
See `common` for what the actors share."""
from __future__ import annotations

import logging
import os
import time

from sttrl.engines.ray.adapter_sync import AdapterReceiver
from sttrl.engines.ray.common import ActorSettings, on_gpu, placement_info, quiet_known_warnings
from sttrl.engines.ray.weight_sync import WeightReceiver

CPU_KV_CACHE_BYTES = 512 * 2**20  # vLLM's KV cache on CPU; its own default sizes it from all RAM


def split_counts(n: int, parts: int) -> list[int]:
    """n samples over `parts` engines, as even as possible, the first engines taking the extra."""
    return [n // parts + (i < n % parts) for i in range(parts)]


def engine_seed(seed: int, index: int) -> int:
    """Engine 0 uses the seed itself; the others distinct seeds derived from it."""
    return (seed + 1_000_003 * index) % (2**31 - 1)


class RolloutActor(WeightReceiver, AdapterReceiver):
    """One vLLM engine, running in this actor's process (no engine-core subprocess)."""

    def __init__(self, index: int, bundles: list[int], settings: ActorSettings):
        quiet_known_warnings()
        self.index, self.bundles, self.settings = index, bundles, settings
        self.llm = None

    def info(self) -> dict:
        return placement_info("vllm", self.index, self.bundles)

    def setup(self) -> float:
        start = time.perf_counter()
        s = self.settings
        gpu = on_gpu()
        # In-process engine core: Ray's accounting matches reality, weights arrive as tensors.
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
        if not gpu:
            os.environ["VLLM_CPU_OMP_THREADS_BIND"] = "nobind"  # a shared box: don't pin threads
            # vLLM compiles its log-prob helpers lazily even in eager mode: a long first call.
            os.environ["TORCH_COMPILE_DISABLE"] = "1"
            # Ray gives a 1-CPU actor one thread; sampling is faster on the machine's share of
            # cores (benchmarks/bench_generation.py), and the actor ranks are idle meanwhile.
            # vLLM forbids changing this once its engine is up.
            import torch
            torch.set_num_threads(s.train_threads
                                  or max(1, (os.cpu_count() or 1) // s.vllm_num_engines))
        kwargs = dict(model=s.model_path, seed=s.seed, max_model_len=s.max_model_len,
                      max_num_seqs=s.max_sample_rows, trust_remote_code=s.trust_remote_code,
                      tensor_parallel_size=s.vllm_tensor_parallel_size)
        if gpu:
            kwargs.update(dtype="bfloat16", gpu_memory_utilization=0.45 if s.colocate else 0.9,
                          enable_sleep_mode=s.colocate)
        else:
            kwargs.update(dtype="float32", enforce_eager=True,
                          kv_cache_memory_bytes=CPU_KV_CACHE_BYTES)
        if s.lora_rank:  # one adapter at a time, the actor's (adapter_sync.py)
            from sttrl.engines.lora import vllm_max_rank
            kwargs.update(enable_lora=True, max_lora_rank=vllm_max_rank(s.lora_rank),
                          max_loras=1)
        if s.vllm_tensor_parallel_size > 1:  # untested here: needs GPUs
            # vLLM's Ray workers go on this engine's bundles of the captured placement group.
            os.environ["VLLM_RAY_BUNDLE_INDICES"] = ",".join(map(str, self.bundles))
            if s.colocate:
                os.environ["VLLM_RAY_PER_WORKER_GPUS"] = "0.5"
            kwargs["distributed_executor_backend"] = "ray"
        from vllm import LLM

        self.llm = LLM(**kwargs)
        # Each reload call holds a few modules; vLLM warns once per module it left as it was.
        for name in ("layerwise", "inplace"):
            logging.getLogger(f"vllm.model_executor.model_loader.reload.{name}").setLevel(
                logging.ERROR)
        return time.perf_counter() - start

    def generate(self, prompt_ids: list[int], groups: list[tuple], max_tokens: int,
                 stop_ids: list[int]) -> list[list[dict]]:
        """For each group (n, temperature, top_p, seed), n samples of the prompt with the
        untempered log-prob of each token and the mean top-20 log-prob: one request per group,
        all in one vLLM call (each request samples from its own seeded generator)."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        from sttrl.engines.sequences import TOP_K_CONFIDENCE

        params = [SamplingParams(n=n, temperature=temperature, top_p=top_p, max_tokens=max_tokens,
                                 seed=seed, stop_token_ids=stop_ids, logprobs=TOP_K_CONFIDENCE,
                                 detokenize=False)  # the driver decodes, as the local engine does
                  for n, temperature, top_p, seed in groups]
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=prompt_ids)] * len(groups), params,
                                 use_tqdm=False, lora_request=self.lora_request)
        return [self._samples(out) for out in outs]

    @staticmethod
    def _samples(out) -> list[dict]:
        from sttrl.engines.sequences import TOP_K_CONFIDENCE

        samples = []
        for c in out.outputs:
            # c.logprobs[t]: {token id: Logprob} for the top 20 and the sampled token, raw
            # (before temperature and top-p), like the local engine's log_softmax(logits).
            lps, topk = [], []
            for tok, step in zip(c.token_ids, c.logprobs):
                lps.append(step[tok].logprob)
                best = sorted((v.logprob for v in step.values()), reverse=True)
                topk.append(sum(best[:TOP_K_CONFIDENCE]) / min(TOP_K_CONFIDENCE, len(best)))
            samples.append({"token_ids": list(c.token_ids), "logprobs": lps, "topk": topk,
                            "finished": c.finish_reason == "stop"})
        return samples

    def score(self, prompt_ids: list[int], response_ids: list[int]) -> list[float]:
        """log p(response token | prefix) under the weights this engine holds (prompt_logprobs)."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0, detokenize=False)
        out = self.llm.generate([TokensPrompt(prompt_token_ids=prompt_ids + response_ids)],
                                params, use_tqdm=False, lora_request=self.lora_request)[0]
        P = len(prompt_ids)  # out.prompt_logprobs[k]: token k given tokens < k
        return [out.prompt_logprobs[P + i][t].logprob for i, t in enumerate(response_ids)]

    def sleep(self) -> None:
        """Colocated on GPUs: free weights and KV cache while the actor trains (no-op on CPU)."""
        if on_gpu() and self.settings.colocate:
            self.llm.sleep(level=1)

    def wake_up(self) -> None:
        if on_gpu() and self.settings.colocate:
            self.llm.wake_up()

    def shutdown(self) -> None:
        if self.llm is not None:
            self.llm.llm_engine.engine_core.shutdown()
            self.llm = None
        self.remove_adapter_dir()
