"""Where the scale engine's actors go: the layouts (pure Python), then real Ray placement on a
local Ray that declares 4 fake GPUs, checking which GPU (bundle) every actor lands on."""
import importlib.util
import shutil
import tempfile

import pytest

from sttrl.config import Config, resolve
from sttrl.engines.ray.placement import Layout, bundle_specs, plan_layout
from sttrl.errors import EngineError
from sttrl.parts import parts

# name -> (flags, expected layout); the table of layouts in docs/ENGINES.md is this list
LAYOUTS = {
    "4 GPUs, default": ({}, Layout(bundles=4, actor=[0, 1], vllm=[[2], [3]])),
    "4 GPUs, --separate_ref_gpu": (
        {"separate_ref_gpu": True, "vllm_num_engines": 1},
        Layout(bundles=4, actor=[0, 1], vllm=[[3]], ref=2)),
    "4 GPUs, --colocate": (
        {"colocate": True, "actor_num_gpus": 4},
        Layout(bundles=4, actor=[0, 1, 2, 3], vllm=[[0], [1], [2], [3]])),
    "4 GPUs, --advantage_estimator gae": (
        {"advantage_estimator": "gae", "actor_num_gpus": 1},
        Layout(bundles=4, actor=[0], vllm=[[2], [3]], critic=[1])),
    "8 GPUs": ({"actor_num_gpus": 4, "vllm_num_engines": 4},
               Layout(bundles=8, actor=[0, 1, 2, 3], vllm=[[4], [5], [6], [7]])),
    "8 GPUs, vLLM tp 2": (
        {"actor_num_gpus": 4, "vllm_num_engines": 2, "vllm_tensor_parallel_size": 2},
        Layout(bundles=8, actor=[0, 1, 2, 3], vllm=[[4, 5], [6, 7]])),
}


def gpu_settings(**flags):
    """The engine settings of a resolved GPU config with these flags."""
    return parts(resolve(Config(engine="ray", **flags), on_gpu=True)).engine


@pytest.mark.parametrize("name", LAYOUTS)
def test_layouts(name):
    flags, expected = LAYOUTS[name]
    assert plan_layout(gpu_settings(**flags)) == expected


def test_cpu_defaults_and_bundle_shapes():
    cpu = parts(resolve(Config(engine="ray"), on_gpu=False)).engine
    layout = plan_layout(cpu)
    assert layout == Layout(bundles=2, actor=[0], vllm=[[1]])
    assert bundle_specs(layout, {"CPU": 2}) == [{"CPU": 1.0}] * 2
    four = plan_layout(gpu_settings())
    assert bundle_specs(four, {"CPU": 2, "GPU": 4}) == [{"GPU": 1, "CPU": 0.5}] * 4
    assert four.sharers(0) == 1
    assert plan_layout(gpu_settings(colocate=True, actor_num_gpus=4)).sharers(0) == 2


# ---- real placement on fake GPUs --------------------------------------------------------------

def needs_ray(test):
    """A scale test that runs a real (local) Ray: skipped where ray is not installed."""
    skip = pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                              reason="ray not installed (bash scripts/setup.sh --scale)")
    return pytest.mark.scale(skip(test))


@pytest.fixture(scope="module")
def fake_gpu_ray():
    import ray

    tmp = tempfile.mkdtemp(prefix="ray_", dir="/tmp")  # unix socket paths must stay short
    ray.init(num_cpus=2, num_gpus=4, _temp_dir=tmp, include_dashboard=False,
             log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)


def bundle_gpus(ray, pg, n: int) -> dict[int, list]:
    """Which fake GPU each bundle holds, asked by a probe task pinned to that bundle."""
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    @ray.remote(num_cpus=0.01, num_gpus=1)
    def probe():
        return ray.get_gpu_ids()

    return {b: ray.get(probe.options(scheduling_strategy=PlacementGroupSchedulingStrategy(
        placement_group=pg, placement_group_bundle_index=b)).remote(), timeout=60)
        for b in range(n)}


@needs_ray
@pytest.mark.parametrize("name", [n for n in LAYOUTS if n.startswith("4 GPUs")])
def test_actors_land_on_their_bundles(fake_gpu_ray, name):
    from ray.util.placement_group import remove_placement_group

    from sttrl.engines.ray.common import ActorSettings
    from sttrl.engines.ray.placement import create_placement_group, spawn_actors

    ray = fake_gpu_ray
    flags, layout = LAYOUTS[name]
    settings = ActorSettings.derive(gpu_settings(**flags), "unused", pad_id=0)
    pg = create_placement_group(layout, timeout=60)
    actors = None
    try:
        assert pg.bundle_specs == [{"GPU": 1.0, "CPU": 0.5}] * 4
        gpus = bundle_gpus(ray, pg, 4)
        assert sorted(g for ids in gpus.values() for g in ids) == [0, 1, 2, 3]  # one GPU each
        actors = spawn_actors(pg, layout, settings)
        infos = {label: ray.get(a.info.remote(), timeout=120) for label, a in actors.labelled()}
        expected = {f"actor rank {i}": b for i, b in enumerate(layout.actor)}
        expected |= {f"vLLM engine {i}": bs[0] for i, bs in enumerate(layout.vllm)}
        expected |= {f"critic rank {i}": b for i, b in enumerate(layout.critic)}
        if layout.ref is not None:
            expected["reference actor"] = layout.ref
        assert set(infos) == set(expected)
        for label, bundle in expected.items():
            info = infos[label]
            assert info["placement_group"] == pg.id.hex(), label
            assert info["gpu_ids"] == gpus[bundle], (label, info["gpu_ids"], gpus)
        if "separate_ref_gpu" in name:  # the reference has a GPU no one else uses
            others = [infos[k]["gpu_ids"] for k in infos if k != "reference actor"]
            assert infos["reference actor"]["gpu_ids"] not in others
        if "colocate" in name:  # vLLM engine i shares actor rank i's GPU
            for i in range(4):
                assert infos[f"vLLM engine {i}"]["gpu_ids"] == infos[f"actor rank {i}"]["gpu_ids"]
        else:  # every actor alone on its GPU
            ids = [tuple(info["gpu_ids"]) for info in infos.values()]
            assert len(set(ids)) == len(ids)
    finally:
        for _, a in (actors.labelled() if actors else []):
            ray.kill(a)
        remove_placement_group(pg)


@needs_ray
def test_a_layout_that_does_not_fit_is_a_clear_error(fake_gpu_ray):
    from sttrl.engines.ray.placement import create_placement_group

    with pytest.raises(EngineError, match="8 GPUs.*did not fit.*4 GPUs"):
        create_placement_group(LAYOUTS["8 GPUs"][1], timeout=3)


def test_weight_sync_groups_keep_modules_whole_within_the_budget():
    """vLLM rebuilds a module from one reload call's tensors: a push never splits a decoder
    layer, packs consecutive modules up to the byte budget, and keeps the parameter order."""
    from sttrl.engines.ray.weight_sync import weight_groups

    names = ["model.embed_tokens.weight"]
    for i in range(3):
        names += [f"model.layers.{i}.self_attn.q_proj.weight",
                  f"model.layers.{i}.self_attn.k_proj.weight",
                  f"model.layers.{i}.mlp.up_proj.weight"]
    names += ["model.norm.weight", "lm_head.weight"]
    nbytes = dict.fromkeys(names, 10)
    nbytes["model.embed_tokens.weight"] = nbytes["lm_head.weight"] = 100

    per_module = weight_groups(names)
    assert [len(g) for g in per_module] == [1, 3, 3, 3, 1, 1]
    packed = weight_groups(names, nbytes, budget=70)
    # embeddings (100) alone: over the budget but never split; then two layers (60); then
    # the last layer and the norm (40); lm_head alone
    assert [len(g) for g in packed] == [1, 6, 4, 1]
    assert sum(packed, []) == names
    assert weight_groups(names, nbytes, budget=10**9) == [names]
