"""The scale engine (`--engine ray`): vLLM samples, DeepSpeed ZeRO-3 trains, Ray places both.

`RayEngine` is the driver's side: it starts the actors and orchestrates them, and implements the
whole `Engine` protocol (sttrl/engines/base.py) with the local engine's semantics; the modes
cannot tell the two apart. The other files of this package hold one distributed role each
(see its __init__.py).

What runs where:

- `generate`: the n samples are split across the vLLM engines, each with its own seed
  (deterministic for a given number of engines). `generate_groups` splits every group so, and
  each engine samples its share of all groups in one vLLM call, one request per group with its
  own SamplingParams (seed included), so a group's samples are those of `generate` alone.
  vLLM returns each token's untempered log-prob and the top-20 log-probs (for DeepConf
  confidence), but not the logsumexp of the raw logits that energy voting needs: when the
  settings say `need_logsumexp` (`--voting_function energy`) the actor ranks score the samples
  once more to fill `Sample.logsumexp`; otherwise it stays empty.
- `max_context`: vLLM's model length, the model's positions or --max_new_tokens plus 4096
  tokens of prompt, whichever is less; `run.py` refuses a longer prompt with its question id.
- `train`: the actor ranks are data-parallel over responses (`zero.shard`); the loss is divided
  by the token count of the whole batch, so the update is the local engine's token mean. The
  first step's old log-probs come from its own forward pass; reference log-probs are computed
  only when kl_coef > 0 and the weights have moved from the initial ones. With
  `--advantage_estimator gae` the critic ranks train at the same time (critic.py).
- After every change of weights the vLLM engines are brought up to date (weight_sync.py).
- Reset: every rank restores its in-memory copy of the initial partitioned weights and optimizer
  state, while every engine that holds other weights reloads the initial checkpoint from disk.
- LoRA (`--lora_rank`): the ranks train an adapter on the frozen base; vLLM keeps the base and
  serves the adapter, a new LoRA id per weight version; reset drops it (adapter_sync.py).
- Snapshots (this engine's own, outside the contract: reset restores the initial one): the
  ranks hold the initial one and at most one other (each is a full copy of the optimiser
  state): a new `snapshot()` releases the previous one.
- SLOT's hidden-state hooks are refused (`UserError`): vLLM samples, and its hidden states are
  not exposed.

Every Ray call waits at most `--sync_timeout` seconds; a dead actor, a failed call or a timeout
raises a one-line `EngineError`.
"""
from __future__ import annotations

import itertools
import os
import shutil
import tempfile

from sttrl.data.prompts import encode_prompt
from sttrl.engines.ray.adapter_sync import AdapterSync
from sttrl.engines.ray.anchor import RayContinuousOps
from sttrl.engines.ray.common import ActorSettings, RaySnapshot, wait
from sttrl.engines.ray.measured import train_measured
from sttrl.engines.ray.critic import gae_targets
from sttrl.engines.ray.scoring import ActorScoring
from sttrl.engines.ray.placement import create_placement_group, plan_layout, spawn_actors
from sttrl.engines.ray.rollout import engine_seed, split_counts
from sttrl.engines.ray.weight_sync import WeightSync
from sttrl.engines.ray.zero import merge_steps, micro_batches, shard
from sttrl.errors import UserError
from sttrl.settings import EngineSettings
from sttrl.types import Sample, SampleGroup, TrainBatch, TrustRegion

NO_HIDDEN_STATES = ("--adaptation_method slot needs --engine local: the scale engine samples with "
                    "vLLM, which does not expose the hidden states entering the LM head")


class RayEngine(ActorScoring, RayContinuousOps):
    """Generate with vLLM, train with DeepSpeed ZeRO-3, all placed by Ray (see module docstring)."""

    def __init__(self, settings: EngineSettings, model_path: str):
        import importlib.util

        missing = [m for m in ("ray", "vllm", "deepspeed") if importlib.util.find_spec(m) is None]
        if missing:
            raise UserError(f"--engine ray needs {', '.join(missing)}: bash scripts/setup.sh --scale "
                            "(CPU) or pip install '.[scale]' (GPU)")
        from transformers import AutoConfig, GenerationConfig

        from sttrl.engines.models import load_tokenizer
        from sttrl.engines.sequences import stop_token_ids

        self.timeout = settings.sync_timeout
        self.tokenizer = load_tokenizer(model_path, settings.trust_remote_code)
        hf_config = AutoConfig.from_pretrained(model_path, trust_remote_code=settings.trust_remote_code)
        try:
            generation = GenerationConfig.from_pretrained(model_path)
        except OSError:  # no generation_config.json: the model config's token ids
            generation = GenerationConfig.from_model_config(hf_config)
        self.stop_ids = stop_token_ids(generation, self.tokenizer)
        # the engine's settings with what every actor derives from the model
        self.settings = ActorSettings.derive(settings, model_path, self.tokenizer.pad_token_id,
                                             getattr(hf_config, "max_position_embeddings", None))
        self.max_context = self.settings.max_model_len
        self.untouched = True  # weights and optimizer are the initial snapshot, bit for bit
        self.initial = RaySnapshot("initial", 0)
        self.held: RaySnapshot | None = None  # the one snapshot besides the initial one
        self._keys = itertools.count(1)
        self._labels: dict[str, str] = {}
        self._own_ray, self._ray_tmp, self.pg, self.actors, self.closed = False, None, None, None, False
        try:
            self._start_ray()
            self.layout = plan_layout(settings)
            self.pg = create_placement_group(self.layout, self.timeout)
            self.actors = spawn_actors(self.pg, self.layout, self.settings)
            # actor id -> "vLLM engine 0" etc., to name the actor in a Ray error
            self._labels = {a._actor_id.hex(): name for name, a in self.actors.labelled()}
            sync = AdapterSync if settings.lora_rank else WeightSync  # LoRA: vLLM serves it
            self.weights = sync(settings.weight_sync, self.trainers, self.rollouts, self._get)
            self._setup()
        except BaseException:
            self.close()
            raise

    # ---- start-up and shut-down ---------------------------------------------------------------
    def _start_ray(self) -> None:
        import ray

        if ray.is_initialized():
            return  # someone else's Ray (a test, a notebook): use it, leave it running
        address = self.settings.ray_address or os.environ.get("RAY_ADDRESS")
        if address:
            ray.init(address=address, log_to_driver=True)
        else:
            # a short temp dir: Ray's unix socket paths must stay under 108 characters
            self._ray_tmp = tempfile.mkdtemp(prefix="ray_", dir="/tmp")
            ray.init(num_cpus=self.settings.ray_num_cpus or os.cpu_count(),
                     _temp_dir=self._ray_tmp, include_dashboard=False)
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
        self.weights.open()

    @property
    def trainers(self) -> list:
        return self.actors.trainers

    @property
    def rollouts(self) -> list:
        return self.actors.rollouts

    @property
    def ranks(self) -> list:
        """Every ZeRO-3 rank that holds trained state: the actor's, then the critic's."""
        return self.actors.trainers + self.actors.critics

    @property
    def policy_version(self) -> int:
        """The actor's weights version (weight_sync): one version, one set of weights."""
        return self.weights.actor

    @property
    def pristine(self) -> bool:
        """The actor holds the initial weights (version 0): the policy is the reference."""
        return self.weights.actor == 0

    def sampling_memory(self, rows: int, prompt_tokens: int, max_new_tokens: int) -> None:
        """None: vLLM sizes its own KV cache and queues what does not fit."""
        return None

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

    def _get(self, refs, what: str):
        """ray.get with the sync timeout, failing fast on the first dead actor or error."""
        return wait(refs, what, self.timeout, self._labels)

    # ---- generation -----------------------------------------------------------------------------
    def encode(self, prompt: str) -> list[int]:
        return encode_prompt(prompt, self.tokenizer)

    def generate(self, prompt: str, n: int, temperature: float, top_p: float,
                 max_new_tokens: int, seed: int) -> list[Sample]:
        return self.generate_groups(prompt, [SampleGroup(n, temperature, top_p, seed)],
                                    max_new_tokens)[0]

    def generate_groups(self, prompt: str, groups: list[SampleGroup],
                        max_new_tokens: int) -> list[list[Sample]]:
        prompt_ids = self.encode(prompt)
        R = len(self.rollouts)
        shares = [split_counts(g.n, R) for g in groups]  # shares[group][engine]
        # engine i samples (group index, count, temperature, top_p, seed) for each of its shares
        asks = [[(k, shares[k][i], g.temperature, g.top_p, engine_seed(g.seed, i))
                 for k, g in enumerate(groups) if shares[k][i]] for i in range(R)]
        calls = [r.generate.remote(prompt_ids, [a[1:] for a in ask], max_new_tokens,
                                   self.stop_ids) for r, ask in zip(self.rollouts, asks) if ask]
        got = self._get(calls, "sampling on the vLLM engines")
        out = [[] for _ in groups]  # each group's samples, engine 0's share first
        for (k, *_), part in zip([a for ask in asks for a in ask], [p for ps in got for p in ps]):
            out[k] += [Sample(self.tokenizer.decode(s["token_ids"], skip_special_tokens=True),
                              s["token_ids"], s["logprobs"], topk_logprob_mean=s["topk"],
                              finished=s["finished"]) for s in part]
        samples = [s for group in out for s in group]
        if self.settings.need_logsumexp and samples:  # energy voting: vLLM has no logsumexp
            scored = self.score_on_actor([prompt_ids] * len(samples),
                                         [s.token_ids for s in samples], with_logsumexp=True)
            for s, (_, lse) in zip(samples, scored):
                s.logsumexp = lse
        return out

    # ---- training -------------------------------------------------------------------------------
    def train(self, batch: TrainBatch, loss_fn, loss_kwargs: dict, steps: int,
              mini_batches: list[list[int]] | None = None, lrs: list[float] | None = None,
              stop=None, trust: TrustRegion | None = None) -> list[dict]:
        """As LocalEngine.train: `steps` optimiser steps on the batch, or with `mini_batches`
        one step per mini-batch per epoch, against the log-probs of the policy that sampled (at
        batch.temperature); `lrs` per step; `stop(stats)` ends the update after the step it
        accepts; `trust`: measured steps (ray/measured.py). One weight sync at the end."""
        if trust is not None:
            return train_measured(self, batch, loss_fn, loss_kwargs, steps, lrs, stop, trust,
                                  mini_batches)
        groups = mini_batches if mini_batches is not None else [list(range(len(batch.responses)))]
        schedule = [rows for _ in range(steps) for rows in groups]
        if lrs is not None and len(lrs) != len(schedule):
            raise ValueError(f"{len(lrs)} learning rates for {len(schedule)} optimiser steps")
        use_ref = loss_kwargs.get("kl_coef", 0.0) > 0 and not self.pristine
        per_token = {}  # [B, T] tensors, sliced per step's rows and per micro-batch
        if use_ref and self.actors.ref is not None:  # --separate_ref_gpu
            per_token["ref"] = self._get(self.actors.ref.score.remote(
                batch.prompts, batch.responses, batch.temperature), "scoring on the reference actor")
        if self.actors.critics:  # gae: per-token advantages from the critic replace the batch's
            per_token["advantages"], per_token["returns"], per_token["old_values"] = gae_targets(
                batch, self.critic_values, self.settings.gamma, self.settings.lambd)
        stepwise = len(groups) > 1 or (steps > 1 and (lrs is not None or stop is not None))
        if stepwise or self.settings.lora_dropout:  # old log-probs before any step, no dropout
            per_token["old"] = self.logprobs_on_actor(batch.prompts, batch.responses,
                                                      batch.temperature)
        self.untouched = False
        self._on_rollouts("sleep")
        history = []
        for i, rows in enumerate(schedule if stepwise else groups):
            if lrs is not None:
                self.set_lr(lrs[i])
            history += self._train_rows(batch, rows, per_token, loss_fn, loss_kwargs,
                                        1 if stepwise else steps, use_ref)
            if stop is not None and stop(history[-1]):
                break
        self.weights.changed()
        self._on_rollouts("wake_up")
        self.weights.sync(self.timeout)
        return history

    def _train_rows(self, batch: TrainBatch, rows: list[int], per_token: dict, loss_fn,
                    loss_kwargs: dict, steps: int, use_ref: bool) -> list[dict]:
        """`steps` optimiser steps on the batch's `rows`: the actor ranks, and with a critic its
        ranks towards the returns at the same time; per step, the merged stats."""
        prompts = [batch.prompts[i] for i in rows]
        responses = [batch.responses[i] for i in rows]
        sub = {k: v[rows] for k, v in per_token.items()}
        n_tokens = float(max(1, sum(len(r) for r in responses)))
        advantages = None if "advantages" in sub else [batch.advantages[i] for i in rows]
        for_actor = {k: sub[k] for k in ("ref", "advantages", "old") if k in sub}
        plan = shard(prompts, responses, len(self.trainers), self.settings.micro_batch_size)
        calls = [t.train.remote(micro_batches(p, prompts, responses, advantages, for_actor),
                                loss_fn, loss_kwargs, steps, n_tokens, use_ref, batch.temperature)
                 for t, p in zip(self.trainers, plan)]
        critics = self.actors.critics
        if critics:
            targets = {"returns": sub["returns"], "old_values": sub["old_values"]}
            cplan = shard(prompts, responses, len(critics), self.settings.micro_batch_size)
            calls += [c.train.remote(micro_batches(p, prompts, responses, per_token=targets),
                                     steps, n_tokens, self.settings.value_clip)
                      for c, p in zip(critics, cplan)]
        per_rank = self._get(calls, f"training on the {'actor and critic' if critics else 'actor'} ranks")
        history = merge_steps(per_rank[:len(self.trainers)], n_tokens)
        for merged, critic in zip(history, merge_steps(per_rank[len(self.trainers):], n_tokens)):
            critic["critic_grad_norm"] = critic.pop("grad_norm")
            merged.update(critic)
        return history

    def set_lr(self, lr: float) -> None:
        self.untouched = False
        calls = [t.set_lr.remote(lr) for t in self.trainers]
        # the critic follows the actor's schedule (dataset mode) from its own peak, critic_lr
        calls += [c.set_lr.remote(lr * self.settings.critic_lr / self.settings.lr)
                  for c in self.actors.critics]
        self._get(calls, "setting the learning rate")

    def _on_rollouts(self, method: str) -> None:
        if self.settings.colocate:  # vLLM sleep mode frees the shared GPUs (a no-op on CPU)
            self._get([getattr(r, method).remote() for r in self.rollouts], f"vLLM {method}")

    # ---- reset, snapshots and checkpoints -------------------------------------------------------
    def snapshot(self) -> RaySnapshot:
        """Actor and critic ranks each keep their partitions and optimizer state under a key.
        Only the newest snapshot is kept besides the initial one: this releases the previous."""
        key = f"snapshot-{next(self._keys)}"
        previous = self.held.key if self.held is not None else None
        self._get([r.snapshot.remote(key, previous) for r in self.ranks], "snapshot")
        self.held = RaySnapshot(key, self.weights.actor)
        return self.held

    def restore(self, state: RaySnapshot) -> None:
        if state is self.initial and self.untouched:
            return  # nothing changed since the last reset (a skipped question): nothing to do
        if state is not self.initial and state != self.held:
            newest = self.held.key if self.held else "none"
            raise ValueError(f"{state.key} was released: the scale engine keeps the initial "
                             f"snapshot and only the newest other one ({newest})")
        restores = [r.restore.remote(state.key) for r in self.ranks]
        # Version 0 is the checkpoint on disk the engines started from (a loaded state gets a
        # new number): they reload it themselves while the ranks restore, instead of a sync.
        reloads = self.weights.reload_calls(state.version)
        got = self._get(restores + reloads, "restore")
        self.weights.reloaded(got[len(restores):])
        self.weights.actor = state.version
        self.untouched = state is self.initial
        self.weights.sync(self.timeout)

    def reset(self) -> None:
        """Back to the initial weights and (empty) optimizer state: actor, critic and engines."""
        self.restore(self.initial)

    def state_dict(self) -> dict:
        """Full weights, or with LoRA the adapter (gathered on rank 0), and each rank's
        optimizer state, for checkpoints."""
        key, method = ("adapter", "adapter_weights") if self.settings.lora_rank else (
            "model", "full_weights")
        weights = self._get([getattr(t, method).remote() for t in self.trainers],
                            "gathering weights")[0]
        optimizer = self._get([t.optimizer_state.remote() for t in self.trainers],
                              "saving the optimizer state")
        state = {key: weights, "optimizer": optimizer, "world_size": len(self.trainers)}
        if self.actors.critics:  # gae: the critic ranks' partitions and Adam state likewise
            state["critic_optimizer"] = self._get(
                [c.optimizer_state.remote() for c in self.actors.critics], "saving the critic")
        return state

    def load_state_dict(self, state: dict) -> None:
        if state.get("world_size") != len(self.trainers):
            raise UserError(f"this checkpoint was written by {state.get('world_size')} actor ranks "
                            f"(--actor_num_gpus), not {len(self.trainers)}")
        if bool(self.settings.lora_rank) != ("adapter" in state):
            held = "a LoRA adapter" if "adapter" in state else "full weights"
            raise UserError(f"the checkpoint holds {held}, which this run (--lora_rank "
                            f"{self.settings.lora_rank}) cannot resume")
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
        self.weights.changed()
        self.weights.sync(self.timeout)

    # ---- SLOT's hidden-state hooks: refused (vLLM does not expose the hidden states) ----------
    def prompt_hidden(self, prompt_ids: list[int]):
        raise UserError(NO_HIDDEN_STATES)

    def head_logits(self, hidden):
        raise UserError(NO_HIDDEN_STATES)

    def set_head_hook(self, hook) -> None:
        if hook is not None:  # None: there is never a hook to remove
            raise UserError(NO_HIDDEN_STATES)

    @property
    def head_hook(self) -> None:
        return None
