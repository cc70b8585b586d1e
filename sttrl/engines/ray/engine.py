"""The scale engine (`--engine ray`): vLLM samples, DeepSpeed ZeRO-3 trains, Ray places both.

Same interface and semantics as `LocalEngine` (sttrl/engines/local.py); the driver cannot tell
them apart. What runs where (sttrl/engines/ray_placement.py has the layout):

- `generate`: the n samples are split across the vLLM engines, each with its own seed
  (deterministic for a given number of engines). vLLM returns each token's untempered log-prob
  and the top-20 log-probs (for DeepConf confidence). It does not return the logsumexp of the raw
  logits that energy voting needs, so with `--voting_function energy` (`need_logsumexp`) the
  engine scores the samples once more on the actor ranks and fills `Sample.logsumexp`; with the
  other voting functions `Sample.logsumexp` stays empty.
- `train`: the actor ranks are data-parallel over responses, dealt longest first so the ranks
  get about the same tokens, in length buckets as in the local engine (`shard`). Each rank runs
  the same number of micro-batches (ZeRO-3 forward and backward are collectives), and the loss
  is divided by the token count of the whole batch, so the update is the local engine's token
  mean. The first step's old log-probs come from its own forward pass; reference log-probs are
  computed only when kl_coef > 0 and the weights have moved from the initial ones.
- `train` with `--advantage_estimator gae` (PPO): the critic ranks (a second ZeRO-3 group on
  their own bundles) score the batch, this process runs GAE on their values and the outcome
  rewards (sttrl/algorithms/gae.py; [B, T] floats, cheap) and whitens the advantages over the
  batch, then the actor ranks take the policy steps on per-token advantages while the critic
  ranks take as many steps of the clipped value loss towards the returns, both at once.
- Weight sync: after every `train`, `restore` and `load_state_dict` that changed the weights,
  rank 0 gathers the ZeRO-3 parameters one at a time (all ranks take part) and buffers whole
  decoder layers (whole vLLM modules) up to SYNC_CHUNK_BYTES, which every vLLM engine then loads
  in place. Two ways to send it (`--weight_sync`):
  - `broadcast` (default): a process group of its own (rank 0: actor rank 0, rank i: vLLM
    engine i - 1), set up once at start-up; rank 0 broadcasts each tensor, the engines know
    every shape and dtype in advance. Backend gloo on CPU; nccl on GPUs (same code, not yet run
    on a GPU here), gloo again where NCCL cannot work (colocated engines, tensor parallel). The
    default because it measured faster on CPU (benchmarks/bench_weight_sync.py: 1.5 s
    against 2.4 s for SmolLM2-135M) and on GPUs it skips host memory.
  - `object_store`: rank 0 `ray.put`s each layer and every engine loads it from Ray's object
    store.
  A dead engine fails the sync with a one-line error naming it; rank 0 keeps gathering so the
  other ranks' collectives complete. After a failed broadcast its group is unusable: the run
  ends, and re-running resumes.
- Reset: every rank restores its in-memory copy of the initial partitioned weights and optimizer
  state, while every engine that holds other weights reloads the initial checkpoint from disk
  (no gather, no transfer; the page cache usually has it).

Every Ray call waits at most `--sync_timeout` seconds; a dead actor, a failed call or a timeout
raises a one-line `EngineError`.
"""
from __future__ import annotations

import dataclasses
import itertools
import os
import shutil
import tempfile
import time
from dataclasses import dataclass

from sttrl.data.prompts import encode_prompt
from sttrl.types import Sample, TrainBatch
from sttrl.engines.ray.common import ActorSettings
from sttrl.engines.ray.rollout import RolloutActor
from sttrl.engines.ray.trainer import CriticActor, ReferenceActor, TrainerActor
from sttrl.engines.ray.placement import create_placement_group, on_bundle, plan_layout
from sttrl.errors import EngineError, UserError

PROMPT_ROOM = 4096  # tokens of prompt vLLM must have room for beyond max_new_tokens


@dataclass(frozen=True)
class RaySnapshot:
    """A snapshot held by the actor ranks (their partitions and optimizer state) under `key`."""

    key: str
    version: int
    pristine: bool


@dataclass
class Actors:
    """Handles of every actor the engine placed."""

    trainers: list
    rollouts: list
    ref: object | None = None
    critics: list | None = None

    def labelled(self) -> list[tuple[str, object]]:
        out = [(f"actor rank {i}", a) for i, a in enumerate(self.trainers)]
        out += [(f"vLLM engine {i}", a) for i, a in enumerate(self.rollouts)]
        if self.ref is not None:
            out.append(("reference actor", self.ref))
        out += [(f"critic rank {i}", a) for i, a in enumerate(self.critics or [])]
        return out


def split_counts(n: int, parts: int) -> list[int]:
    """n samples over `parts` engines, as even as possible, the first engines taking the extra."""
    return [n // parts + (i < n % parts) for i in range(parts)]


def engine_seed(seed: int, index: int) -> int:
    """Engine 0 uses the seed itself; the others distinct seeds derived from it."""
    return (seed + 1_000_003 * index) % (2**31 - 1)


def shard(prompts: list[list[int]], responses: list[list[int]], world: int,
          micro: int) -> list[list[list[int]]]:
    """Row indices per rank per micro-batch. Rows are dealt to the ranks longest first, in turn
    (so every rank gets about the same tokens), and each rank's rows are cut into length buckets
    as the local engine does (at most `micro` rows, none shorter than half the longest: padding
    at most doubles a row's cost). ZeRO-3's forward and backward are collectives, so every rank
    runs the same number of micro-batches: a rank with fewer gets empty ones, which it runs as a
    fully masked dummy row (zero loss, zero gradient)."""
    from sttrl.engines.sequences import PASS_COST_TOKENS, length_buckets

    lengths = [len(p) + len(r) for p, r in zip(prompts, responses)]
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    plan = []
    for rank in range(world):
        rows = order[rank::world]
        plan.append([[rows[j] for j in bucket]
                     for bucket in length_buckets([lengths[i] for i in rows], micro,
                                                  PASS_COST_TOKENS)])
    n_micro = max(1, max(len(p) for p in plan))
    return [p + [[] for _ in range(n_micro - len(p))] for p in plan]


def merge_steps(per_rank: list[list[dict]], n_tokens: float) -> list[dict]:
    """Per step: every rank's stat sums added and divided by the batch's token count (a token
    mean over the whole batch), and the gradient norm (the same on every rank)."""
    history = []
    for step in zip(*per_rank):  # one entry per rank
        keys = list(dict.fromkeys(k for rank in step for k in rank["sums"]))
        merged = {k: sum(rank["sums"].get(k, 0.0) for rank in step) / n_tokens for k in keys}
        merged["grad_norm"] = step[0]["grad_norm"]
        history.append(merged)
    return history


def user_omp_threads() -> int | None:
    """OMP_NUM_THREADS as set for this run (Ray overrides it inside actors), else None."""
    value = os.environ.get("OMP_NUM_THREADS", "")
    return int(value) if value.isdigit() and int(value) > 0 else None


def spawn_actors(cfg, pg, layout, settings: ActorSettings) -> Actors:
    """Create (not set up) every actor on its bundle; cheap: constructors only store arguments."""
    import ray

    trainer, rollout = ray.remote(TrainerActor), ray.remote(RolloutActor)
    world = len(layout.actor)
    trainers = [trainer.options(**on_bundle(pg, layout, b)).remote(rank, world, b, settings)
                for rank, b in enumerate(layout.actor)]
    tp = cfg.vllm_tensor_parallel_size
    rollouts = [rollout.options(**on_bundle(pg, layout, bundles[0], gpu_share=tp == 1))
                .remote(i, bundles, settings) for i, bundles in enumerate(layout.vllm)]
    ref = None
    if layout.ref is not None:
        ref = ray.remote(ReferenceActor).options(**on_bundle(pg, layout, layout.ref)).remote(
            layout.ref, settings)
    critic_settings = dataclasses.replace(settings, lr=cfg.critic_lr)
    critics = [ray.remote(CriticActor).options(**on_bundle(pg, layout, b)).remote(
        rank, len(layout.critic), b, critic_settings) for rank, b in enumerate(layout.critic)]
    return Actors(trainers, rollouts, ref, critics)


class RayEngine:
    """Generate with vLLM, train with DeepSpeed ZeRO-3, all placed by Ray (see module docstring)."""

    def __init__(self, cfg, model_path: str):
        import importlib.util

        missing = [m for m in ("ray", "vllm", "deepspeed") if importlib.util.find_spec(m) is None]
        if missing:
            raise UserError(f"--engine ray needs {', '.join(missing)}: bash scripts/setup.sh --scale "
                            "(CPU) or pip install '.[scale]' (GPU)")
        from transformers import AutoConfig, GenerationConfig

        from sttrl.engines.sequences import stop_token_ids
        from sttrl.engines.models import load_tokenizer

        self.cfg = cfg
        self.timeout = cfg.sync_timeout
        self.tokenizer = load_tokenizer(model_path, cfg.trust_remote_code)
        hf_config = AutoConfig.from_pretrained(model_path, trust_remote_code=cfg.trust_remote_code)
        try:
            generation = GenerationConfig.from_pretrained(model_path)
        except OSError:
            generation = GenerationConfig.from_model_config(hf_config)
        self.stop_ids = stop_token_ids(generation, self.tokenizer)
        self.need_logsumexp = cfg.voting_function == "energy"
        limit = getattr(hf_config, "max_position_embeddings", None)
        self.settings = ActorSettings(
            model_path=model_path, trust_remote_code=cfg.trust_remote_code, lr=cfg.lr,
            weight_decay=cfg.weight_decay, grad_clip=cfg.grad_clip,
            micro_batch_size=cfg.micro_batch_size,
            gradient_checkpointing=cfg.gradient_checkpointing,
            pad_id=self.tokenizer.pad_token_id,
            max_model_len=min(limit or 10**9, cfg.max_new_tokens + PROMPT_ROOM),
            max_num_seqs=max(cfg.n_votes, cfg.n_eval),
            tensor_parallel_size=cfg.vllm_tensor_parallel_size, colocate=cfg.colocate,
            sync_timeout=cfg.sync_timeout, seed=cfg.seed, train_threads=user_omp_threads(),
            vllm_engines=cfg.vllm_num_engines)
        self.pristine = True  # the weights equal the initial ones
        self.untouched = True  # weights and optimizer are the initial snapshot, bit for bit
        self._versions = itertools.count(1)  # each distinct set of weights gets a new number
        self.version = 0  # what the actor holds (0: the initial weights)
        self.engine_version = 0  # what the vLLM engines hold
        self._keys = itertools.count(1)
        self._labels: dict[str, str] = {}
        self._own_ray, self._ray_tmp, self.pg, self.actors = False, None, None, None
        self.closed = False
        try:
            self._start_ray()
            self.layout = plan_layout(cfg)
            self.pg = create_placement_group(self.layout, self.timeout)
            self.actors = spawn_actors(cfg, self.pg, self.layout, self.settings)
            # actor id -> "vLLM engine 0" etc., to name the actor in a Ray error
            self._labels = {a._actor_id.hex(): name for name, a in self.actors.labelled()}
            self._setup()
        except BaseException:
            self.close()
            raise
        self.initial = RaySnapshot("initial", 0, True)

    # ---- start-up and shut-down ---------------------------------------------------------------
    def _start_ray(self) -> None:
        import ray

        if ray.is_initialized():
            return  # someone else's Ray (a test, a notebook): use it, leave it running
        address = self.cfg.ray_address or os.environ.get("RAY_ADDRESS")
        if address:
            ray.init(address=address, log_to_driver=True)
        else:
            # a short temp dir: Ray's unix socket paths must stay under 108 characters
            self._ray_tmp = tempfile.mkdtemp(prefix="ray_", dir="/tmp")
            ray.init(num_cpus=self.cfg.ray_num_cpus or os.cpu_count(), _temp_dir=self._ray_tmp,
                     include_dashboard=False)
        self._own_ray = True

    def _setup(self) -> None:
        a = self.actors
        addr, port = self._get(a.trainers[0].master_address.remote(), "actor start-up")
        calls = [t.setup.remote(addr, port) for t in a.trainers]
        calls += [r.setup.remote() for r in a.rollouts]
        if a.critics:  # the critic ranks' own process group: critic rank 0's rendezvous
            caddr, cport = self._get(a.critics[0].master_address.remote(), "critic start-up")
            while (caddr, cport) == (addr, port):  # two free-port picks can coincide
                caddr, cport = self._get(a.critics[0].master_address.remote(), "critic start-up")
            calls += [c.setup.remote(caddr, cport) for c in a.critics]
        if a.ref is not None:
            calls.append(a.ref.setup.remote())
        self._get(calls, "engine start-up (loading the model into the actor and vLLM)")
        # what each sync holds; the engines need its tied embedding to reload from disk too
        self.plan = self._get(a.trainers[0].sync_plan.remote(), "actor start-up")
        if self.cfg.weight_sync == "broadcast":
            self._open_sync_group()

    def _open_sync_group(self) -> None:
        """--weight_sync broadcast: actor rank 0 (group rank 0) and vLLM engine i (group rank
        i + 1) join one process group, once; the engines learn here what each broadcast holds.
        It lives as long as the actors: `shutdown` kills them, which closes it."""
        rank0, world, plan = self.trainers[0], len(self.rollouts) + 1, self.plan
        addr, port = self._get(rank0.master_address.remote(), "weight-sync group start-up")
        calls = [rank0.join_sync_group.remote(addr, port, 0, world, plan)]
        calls += [r.join_sync_group.remote(addr, port, i + 1, world, plan)
                  for i, r in enumerate(self.rollouts)]
        self._get(calls, f"weight-sync group start-up ({plan['backend']})")

    @property
    def trainers(self) -> list:
        return self.actors.trainers

    @property
    def rollouts(self) -> list:
        return self.actors.rollouts

    def close(self) -> None:
        """Stop the vLLM engines, kill the actors, free the bundles; stop Ray if we started it."""
        if self.closed:
            return
        self.closed = True
        import ray

        if ray.is_initialized():
            if self.actors is not None:
                stops = [r.shutdown.remote() for r in self.actors.rollouts]
                try:
                    ray.wait(stops, num_returns=len(stops), timeout=30)
                except Exception:  # noqa: BLE001 - a dead engine has nothing left to stop
                    pass
                for _, actor in self.actors.labelled():
                    try:
                        ray.kill(actor)
                    except Exception:  # noqa: BLE001
                        pass
            if self.pg is not None:
                from ray.util.placement_group import remove_placement_group
                try:
                    remove_placement_group(self.pg)
                except Exception:  # noqa: BLE001
                    pass
            if self._own_ray:
                ray.shutdown()
        if self._ray_tmp:
            shutil.rmtree(self._ray_tmp, ignore_errors=True)

    # ---- waiting on Ray -----------------------------------------------------------------------
    def _get(self, refs, what: str):
        """ray.get with the sync timeout, failing fast on the first dead actor or error."""
        import ray
        from ray.exceptions import OutOfMemoryError, RayActorError, RayTaskError

        single = not isinstance(refs, list)
        todo = [refs] if single else list(refs)
        deadline = time.monotonic() + self.timeout
        try:
            while todo:
                ready, todo = ray.wait(todo, num_returns=1,
                                       timeout=max(0.0, deadline - time.monotonic()))
                if not ready:
                    raise EngineError(f"{what} did not finish within --sync_timeout "
                                      f"{self.timeout:g} s (a hung or overloaded Ray actor)")
                ray.get(ready)  # raises now if that call failed
            out = ray.get([refs] if single else refs)
        except RayActorError as err:
            who = self._labels.get(str(err.actor_id), "a Ray actor")
            raise EngineError(f"{what} failed: {who} died") from None
        except RayTaskError as err:
            cause = err.cause if err.cause is not None else err
            text = str(cause).strip().splitlines()
            if isinstance(cause, RayActorError):
                who = self._labels.get(str(cause.actor_id), "a Ray actor")
                raise EngineError(f"{what} failed: {who} died") from None
            raise EngineError(f"{what} failed: {type(cause).__name__}: "
                              f"{text[-1] if text else ''}") from None
        except OutOfMemoryError as err:  # Ray's memory monitor killed a worker (a busy machine)
            text = str(err).strip().splitlines()
            raise EngineError(f"{what} failed: {text[0] if text else 'out of memory'}") from None
        return out[0] if single else out

    # ---- generation -----------------------------------------------------------------------------
    def encode(self, prompt: str) -> list[int]:
        return encode_prompt(prompt, self.tokenizer)

    def generate(self, prompt: str, n: int, temperature: float, top_p: float,
                 max_new_tokens: int, seed: int) -> list[Sample]:
        prompt_ids = self.encode(prompt)
        calls = [r.generate.remote(prompt_ids, k, temperature, top_p, max_new_tokens,
                                   engine_seed(seed, i), self.stop_ids)
                 for i, (r, k) in enumerate(zip(self.rollouts, split_counts(n, len(self.rollouts))))
                 if k]
        raw = [s for part in self._get(calls, "sampling on the vLLM engines") for s in part]
        samples = [Sample(text=self.tokenizer.decode(s["token_ids"], skip_special_tokens=True),
                          token_ids=s["token_ids"], logprobs=s["logprobs"],
                          topk_logprob_mean=s["topk"], finished=s["finished"]) for s in raw]
        if self.need_logsumexp:  # energy voting: vLLM has no logsumexp of the raw logits
            scored = self.score_on_actor([prompt_ids] * len(samples),
                                         [s.token_ids for s in samples], with_logsumexp=True)
            for s, (_, lse) in zip(samples, scored):
                s.logsumexp = lse
        return samples

    # ---- scoring --------------------------------------------------------------------------------
    def _micro_batches(self, plan: list[list[int]], prompts, responses, advantages=None,
                       per_token: dict | None = None) -> list[dict]:
        """One rank's micro-batches as plain lists. per_token: {name: [B, T] tensor} (reference
        log-probs, GAE's advantages, the critic's returns and old values), each sliced to the
        micro-batch's rows and length (None in a dummy)."""
        dummy = (prompts[0], responses[0])
        out = []
        for rows in plan:
            mb = {"prompts": [prompts[i] for i in rows], "responses": [responses[i] for i in rows],
                  "advantages": [advantages[i] for i in rows] if advantages else [],
                  "dummy": dummy}
            T = max([1] + [len(responses[i]) for i in rows])
            for name, x in (per_token or {}).items():
                mb[name] = x[rows, :T] if rows else None
            out.append(mb)
        return out

    def score_on_actor(self, prompts: list[list[int]], responses: list[list[int]],
                       with_logsumexp: bool = False) -> list[tuple]:
        """Per response: (log-probs,) or (log-probs, logsumexp) under the actor's weights."""
        plan = shard(prompts, responses, len(self.trainers), self.cfg.micro_batch_size)
        calls = [t.score.remote(self._micro_batches(p, prompts, responses), with_logsumexp)
                 for t, p in zip(self.trainers, plan)]
        rows: list = [None] * len(responses)
        for rank_plan, rank_out in zip(plan, self._get(calls, "scoring on the actor ranks")):
            for idx, got in zip(rank_plan, rank_out):
                for j, i in enumerate(idx):
                    rows[i] = tuple(g[j, :len(responses[i])].tolist() for g in got)
        return rows

    def score_on_engines(self, prompt_ids: list[int], response_ids: list[int]) -> list[list[float]]:
        """Token log-probs of one fixed response under the weights each vLLM engine holds."""
        return self._get([r.score.remote(prompt_ids, response_ids) for r in self.rollouts],
                         "scoring on the vLLM engines")

    def check_weights(self, prompt_ids: list[int], response_ids: list[int]) -> float:
        """Largest |log p| gap, over tokens and engines, between vLLM and the actor: the test
        for silently stale engine weights (fp32 on CPU: ~1e-5; bf16 on GPU is much looser)."""
        actor = self.score_on_actor([prompt_ids], [response_ids])[0][0]
        return max(abs(a - b) for lps in self.score_on_engines(prompt_ids, response_ids)
                   for a, b in zip(actor, lps))

    def critic_values(self, prompts: list[list[int]], responses: list[list[int]]):
        """The critic's V [B, T] of the state before each response token (zero on padding)."""
        import torch

        critics = self.actors.critics
        plan = shard(prompts, responses, len(critics), self.cfg.micro_batch_size)
        calls = [c.values.remote(self._micro_batches(p, prompts, responses))
                 for c, p in zip(critics, plan)]
        out = torch.zeros(len(responses), max(1, max(len(r) for r in responses)))  # [B, T]
        for rank_plan, rank_out in zip(plan, self._get(calls, "values on the critic ranks")):
            for idx, got in zip(rank_plan, rank_out):
                for j, i in enumerate(idx):
                    out[i, :len(responses[i])] = got[j, :len(responses[i])]
        return out

    # ---- training -------------------------------------------------------------------------------
    def train(self, batch: TrainBatch, loss_fn, loss_kwargs: dict, steps: int) -> list[dict]:
        n_tokens = float(max(1, sum(len(r) for r in batch.responses)))
        use_ref = loss_kwargs.get("kl_coef", 0.0) > 0 and not self.pristine
        per_token = {}  # [B, T] tensors the actor ranks get sliced per micro-batch
        if use_ref and self.actors.ref is not None:  # --separate_ref_gpu
            per_token["ref"] = self._get(self.actors.ref.score.remote(batch.prompts,
                                                                      batch.responses),
                                         "scoring on the reference actor")  # [B, T]
        advantages, critic_calls = batch.advantages, []
        self.untouched = False
        if self.actors.critics:  # gae: per-token advantages from the critic replace the batch's
            per_token["advantages"], critic_calls = self._gae(batch, steps, n_tokens)
            advantages = None
        plan = shard(batch.prompts, batch.responses, len(self.trainers),
                     self.cfg.micro_batch_size)
        self._on_rollouts("sleep")
        calls = [t.train.remote(self._micro_batches(p, batch.prompts, batch.responses,
                                                    advantages, per_token),
                                loss_fn, loss_kwargs, steps, n_tokens, use_ref)
                 for t, p in zip(self.trainers, plan)]
        per_rank = self._get(calls + critic_calls, "training on the actor ranks"
                             + (" and the critic ranks" if critic_calls else ""))
        self.pristine = False
        self.version = next(self._versions)
        self._on_rollouts("wake_up")
        self._sync_weights()
        history = merge_steps(per_rank[:len(calls)], n_tokens)
        for merged, critic in zip(history, merge_steps(per_rank[len(calls):], n_tokens)):
            critic["critic_grad_norm"] = critic.pop("grad_norm")
            merged.update(critic)
        return history

    def _gae(self, batch: TrainBatch, steps: int, n_tokens: float):
        """PPO's whitened advantages [B, T], and the critic's training calls, already started
        (so the critic trains while the actor does) on the returns GAE gives."""
        from sttrl.algorithms.gae import gae, token_rewards, whiten
        from sttrl.engines.sequences import pad_batch

        if batch.rewards is None:
            raise UserError("--advantage_estimator gae trains on each response's reward; this "
                            "update has none (gae applies to --adaptation_method ttrl only)")
        cfg, critics = self.cfg, self.actors.critics
        values = self.critic_values(batch.prompts, batch.responses)  # [B, T]
        mask = pad_batch(batch.prompts, batch.responses, 0, "cpu")[3]  # [B, T]
        advantages, returns = gae(token_rewards(batch.rewards, mask), values, mask,
                                  cfg.gamma, cfg.lambd)  # [B, T] each
        plan = shard(batch.prompts, batch.responses, len(critics), cfg.micro_batch_size)
        calls = [c.train.remote(self._micro_batches(p, batch.prompts, batch.responses,
                                                    per_token={"returns": returns,
                                                               "old_values": values}),
                                steps, n_tokens, cfg.value_clip)
                 for c, p in zip(critics, plan)]
        return whiten(advantages, mask), calls

    def set_lr(self, lr: float) -> None:
        self.untouched = False
        calls = [t.set_lr.remote(lr) for t in self.trainers]
        # the critic follows the actor's schedule (dataset mode) from its own peak, critic_lr
        calls += [c.set_lr.remote(lr * self.cfg.critic_lr / self.cfg.lr)
                  for c in self.actors.critics]
        self._get(calls, "setting the learning rate")

    def _on_rollouts(self, method: str) -> None:
        if self.cfg.colocate:  # vLLM sleep mode frees the shared GPUs (a no-op on CPU)
            self._get([getattr(r, method).remote() for r in self.rollouts], f"vLLM {method}")

    # ---- weight sync ----------------------------------------------------------------------------
    def _sync_weights(self) -> None:
        """Make every vLLM engine hold the actor's weights (nothing to do if it already does)."""
        if self.engine_version == self.version:
            return
        if self.cfg.weight_sync == "broadcast":  # every rank gathers, engines receive at once
            calls = [t.broadcast_weights.remote() for t in self.trainers]
            calls += [r.receive_weights.remote() for r in self.rollouts]
        else:
            calls = [t.push_weights.remote(self.rollouts, self.timeout) for t in self.trainers]
        # a dead engine raises here, naming it; other failures come back as strings
        errors = [e for e in self._get(calls, "weight sync to the vLLM engines") if e]
        if errors:
            raise EngineError(f"weight sync to the vLLM engines failed: {errors[0]}")
        self.engine_version = self.version

    # ---- reset and checkpoints ------------------------------------------------------------------
    def snapshot(self) -> RaySnapshot:
        """Actor and critic ranks each keep their partitions and optimizer state under a key."""
        key = f"snapshot-{next(self._keys)}"
        self._get([t.snapshot.remote(key) for t in self.trainers + self.actors.critics],
                  "snapshot")
        return RaySnapshot(key, self.version, self.pristine)

    def restore(self, state: RaySnapshot) -> None:
        if state is self.initial and self.untouched:
            return  # nothing changed since the last reset (a skipped question): nothing to do
        restores = [t.restore.remote(state.key) for t in self.trainers + self.actors.critics]
        # Version 0 is the checkpoint on disk the engines started from (a loaded state gets a
        # new number): they reload it themselves while the ranks restore, instead of a sync.
        reloads = []
        if state.version == 0 and self.engine_version != 0:
            reloads = [r.load_initial_weights.remote(self.plan["tied"]) for r in self.rollouts]
        got = self._get(restores + reloads, "restore")
        if reloads and all(got[len(restores):]):
            self.engine_version = 0
        self.version, self.pristine = state.version, state.pristine
        self.untouched = state is self.initial
        self._sync_weights()

    def reset(self) -> None:
        """Back to the initial weights and (empty) optimizer state: actor, critic and engines."""
        self.restore(self.initial)

    def state_dict(self) -> dict:
        """Full weights (gathered on rank 0) and each rank's optimizer state, for checkpoints."""
        weights = self._get([t.full_weights.remote() for t in self.trainers], "gathering weights")[0]
        optimizer = self._get([t.optimizer_state.remote() for t in self.trainers],
                              "saving the optimizer state")
        state = {"model": weights, "optimizer": optimizer, "world_size": len(self.trainers)}
        if self.actors.critics:  # gae: the critic ranks' partitions and Adam state likewise
            state["critic_optimizer"] = self._get(
                [c.optimizer_state.remote() for c in self.actors.critics], "saving the critic")
        return state

    def load_state_dict(self, state: dict) -> None:
        if state.get("world_size") != len(self.trainers):
            raise UserError(f"this checkpoint was written by {state.get('world_size')} actor ranks "
                            f"(--actor_num_gpus), not {len(self.trainers)}")
        critics = self.actors.critics
        if critics and "critic_optimizer" not in state:
            raise UserError("this checkpoint has no critic (it was written without "
                            "--advantage_estimator gae)")
        # each rank's fp32 partition is in its optimizer state: loading it restores the weights
        self.untouched = False
        calls = [t.load_optimizer_state.remote(s)
                 for t, s in zip(self.trainers, state["optimizer"])]
        calls += [c.load_optimizer_state.remote(s)
                  for c, s in zip(critics, state.get("critic_optimizer", []))]
        self._get(calls, "loading a checkpoint")
        self.pristine = False
        self.version = next(self._versions)
        self._sync_weights()
