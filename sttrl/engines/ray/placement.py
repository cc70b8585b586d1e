"""Where the scale engine's Ray actors go: one placement group, one bundle per GPU, and every actor
created on its bundle (`spawn_actors`).

`plan_layout` is pure Python (no Ray): it numbers the bundles and says which role sits on which.
Bundles come in this order: actor ranks, then the separate reference (if any), then the critic
ranks (gae only), then the vLLM engines (unless colocated on the actor's bundles). A bundle is
`{"GPU": 1, "CPU": c}` on a cluster with GPUs and `{"CPU": c}` without (this CPU machine), so
the same layout runs, unchanged, on both. Actors that share a bundle split its GPU and CPU.

Default layout on one node of 4 GPUs (actor_num_gpus 2, vllm_num_engines 2):

    bundle 0: actor rank 0 (+ its shard of the frozen reference)
    bundle 1: actor rank 1 (+ its shard of the frozen reference)
    bundle 2: vLLM engine 0
    bundle 3: vLLM engine 1
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from sttrl.errors import EngineError
from sttrl.settings import EngineSettings


@dataclass(frozen=True)
class Layout:
    """Bundle indices of every role in the engine's one placement group."""

    bundles: int
    """Bundles (GPUs) in the placement group."""
    actor: list[int]
    """Bundle of each DeepSpeed ZeRO-3 actor rank."""
    vllm: list[list[int]]
    """Bundles of each vLLM engine (vllm_tensor_parallel_size each)."""
    ref: int | None = None
    """Bundle of the separate reference actor; None: the reference lives in the actor ranks."""
    critic: list[int] = field(default_factory=list)
    """Bundle of each critic rank (advantage_estimator gae only)."""

    def sharers(self, bundle: int) -> int:
        """How many actors sit on this bundle (a tp>1 vLLM engine counts on each of its bundles)."""
        roles = self.actor + self.critic + [b for engine in self.vllm for b in engine]
        if self.ref is not None:
            roles.append(self.ref)
        return roles.count(bundle)


def plan_layout(settings: EngineSettings) -> Layout:
    """Number the bundles for the engine's settings."""
    s = settings
    n_actor, tp, n_vllm = s.actor_num_gpus, s.vllm_tensor_parallel_size, s.vllm_num_engines
    actor = list(range(n_actor))
    nxt = n_actor
    ref = None
    if s.separate_ref_gpu:
        ref, nxt = nxt, nxt + 1
    critic = []
    if s.advantage_estimator == "gae":  # PPO's critic: as many ranks as the actor
        critic, nxt = list(range(nxt, nxt + n_actor)), nxt + n_actor
    if s.colocate:  # vLLM engine i takes actor bundles i*tp .. i*tp+tp-1
        vllm = [actor[i * tp:(i + 1) * tp] for i in range(n_vllm)]
    else:
        vllm = [list(range(nxt + i * tp, nxt + (i + 1) * tp)) for i in range(n_vllm)]
        nxt += n_vllm * tp
    return Layout(bundles=nxt, actor=actor, vllm=vllm, ref=ref, critic=critic)


def bundle_specs(layout: Layout, cluster: dict) -> list[dict]:
    """One bundle per GPU; CPU-only clusters get CPU-only bundles (the engine then runs on CPU)."""
    cpus = cluster.get("CPU", 0)
    cpu = min(1.0, int(100 * cpus / layout.bundles) / 100)
    if cpu <= 0:
        raise EngineError(f"the Ray cluster has {cpus:g} CPUs, too few for {layout.bundles} bundles")
    if cluster.get("GPU", 0) > 0:
        return [{"GPU": 1, "CPU": cpu}] * layout.bundles
    return [{"CPU": cpu}] * layout.bundles


def create_placement_group(layout: Layout, timeout: float):
    """Reserve the bundles (PACK: as few nodes as possible); a clear error if they never fit."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    cluster = ray.cluster_resources()
    specs = bundle_specs(layout, cluster)
    pg = placement_group(specs, strategy="PACK")
    ready, _ = ray.wait([pg.ready()], timeout=timeout)
    if not ready:
        remove_placement_group(pg)
        need = sum(s.get("GPU", 0) for s in specs)
        raise EngineError(f"the placement group ({layout.bundles} bundles, {need:g} GPUs) did not "
                          f"fit the Ray cluster ({cluster.get('GPU', 0):g} GPUs, "
                          f"{cluster.get('CPU', 0):g} CPUs) within {timeout:g} s")
    return pg


def on_bundle(pg, layout: Layout, bundle: int, gpu_share: bool = True, **extra) -> dict:
    """Ray `.options()` that pin an actor to one bundle, with its share of the bundle's GPU/CPU.

    `gpu_share=False` (a tp>1 vLLM engine's front actor) takes no GPU: vLLM's own Ray workers
    take the GPUs of the engine's bundles.
    """
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    spec = pg.bundle_specs[bundle]
    k = layout.sharers(bundle)
    options = {"num_cpus": round(spec["CPU"] / max(k, 1), 4),
               "num_gpus": round(spec.get("GPU", 0) / k, 4) if gpu_share else 0,
               "scheduling_strategy": PlacementGroupSchedulingStrategy(
                   placement_group=pg, placement_group_bundle_index=bundle,
                   placement_group_capture_child_tasks=True)}
    options.update(extra)
    return options


@dataclass
class Actors:
    """Handles of every actor the engine placed."""

    trainers: list
    rollouts: list
    ref: object | None = None
    critics: list = field(default_factory=list)

    def labelled(self) -> list[tuple[str, object]]:
        out = [(f"actor rank {i}", a) for i, a in enumerate(self.trainers)]
        out += [(f"vLLM engine {i}", a) for i, a in enumerate(self.rollouts)]
        if self.ref is not None:
            out.append(("reference actor", self.ref))
        out += [(f"critic rank {i}", a) for i, a in enumerate(self.critics)]
        return out


def spawn_actors(pg, layout: Layout, settings) -> Actors:
    """Create (not set up) every actor on its bundle; cheap: constructors only store arguments.
    `settings`: the `ActorSettings` every actor gets (the critic's with lr = --critic_lr)."""
    import ray

    from sttrl.engines.ray.critic import CriticActor
    from sttrl.engines.ray.rollout import RolloutActor
    from sttrl.engines.ray.trainer import ReferenceActor, TrainerActor

    trainer, rollout = ray.remote(TrainerActor), ray.remote(RolloutActor)
    world = len(layout.actor)
    trainers = [trainer.options(**on_bundle(pg, layout, b)).remote(rank, world, b, settings)
                for rank, b in enumerate(layout.actor)]
    tp = settings.vllm_tensor_parallel_size
    rollouts = [rollout.options(**on_bundle(pg, layout, bundles[0], gpu_share=tp == 1))
                .remote(i, bundles, settings) for i, bundles in enumerate(layout.vllm)]
    ref = None
    if layout.ref is not None:
        ref = ray.remote(ReferenceActor).options(**on_bundle(pg, layout, layout.ref)).remote(
            layout.ref, settings)
    critic_settings = dataclasses.replace(settings, lr=settings.critic_lr)
    critics = [ray.remote(CriticActor).options(**on_bundle(pg, layout, b)).remote(
        rank, len(layout.critic), b, critic_settings) for rank, b in enumerate(layout.critic)]
    return Actors(trainers, rollouts, ref, critics)
