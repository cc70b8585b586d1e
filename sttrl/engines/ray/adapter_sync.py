"""The weight sync with --lora_rank: the vLLM engines keep the base weights they loaded at
start-up and serve the actor's adapter through vLLM's LoRA support, so a sync sends the adapter
(megabytes) instead of every weight.

Each weight version the actor ranks hold (weight_sync.WeightSync's numbering) is served under
its own LoRA id: the ranks gather the adapter (a collective; rank 0 returns it), the driver puts
it in Ray's object store once, and every engine writes it as a peft adapter folder
(adapter_model.safetensors + adapter_config.json), loads it, and drops the previous one. A
reset (version 0: the base model) only switches the engines back to no adapter: nothing is
reloaded.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile

from sttrl.engines.ray.weight_sync import WeightSync


class AdapterSync(WeightSync):
    """The driver's end, as WeightSync but sending the adapter."""

    def open(self) -> None:
        """Nothing to set up: no broadcast group (the adapter goes through the object store)."""

    def reload_calls(self, version: int) -> list:
        return []  # the engines never lose the base weights: a reset is `drop_adapter`

    def sync(self, timeout: float) -> None:
        import ray

        if self.engines == self.actor:
            return
        if self.actor == 0:
            calls = [r.drop_adapter.remote() for r in self.rollouts]
        else:
            adapter = self._get([t.adapter_weights.remote() for t in self.trainers],
                                "gathering the adapter on the actor ranks")[0]
            ref = ray.put(adapter)
            calls = [r.load_adapter.remote(ref, self.actor) for r in self.rollouts]
        self._get(calls, "adapter sync to the vLLM engines")
        self.engines = self.actor


class AdapterReceiver:
    """A vLLM engine's end. Needs the host's `llm` (started with enable_lora) and `settings`."""

    lora_request = None  # the adapter generate and score apply; None: the base model
    adapter_dir: str | None = None

    def load_adapter(self, tensors: dict, version: int) -> None:
        """Serve `tensors` (peft's names) as LoRA id `version` from now on."""
        from safetensors.torch import save_file
        from vllm.lora.request import LoRARequest

        from sttrl.engines.lora import adapter_config_dict

        if self.adapter_dir is None:
            self.adapter_dir = tempfile.mkdtemp(prefix="sttrl_lora_")
        folder = os.path.join(self.adapter_dir, f"v{version}")
        os.makedirs(folder, exist_ok=True)
        save_file({k: v.contiguous() for k, v in tensors.items()},
                  os.path.join(folder, "adapter_model.safetensors"))
        with open(os.path.join(folder, "adapter_config.json"), "w") as f:
            json.dump(adapter_config_dict(self.settings, self.settings.model_path), f)
        self.drop_adapter()  # first: the engine holds one adapter at a time (max_loras=1)
        request = LoRARequest(f"sttrl-v{version}", version, folder)
        # loaded now, so that an adapter vLLM cannot read fails the sync, not the next sampling
        self.llm.llm_engine.add_lora(request)
        self.lora_request = request

    def drop_adapter(self) -> None:
        """Back to the base model (a reset): no reload, the base weights never left."""
        if self.lora_request is None:
            return
        self.llm.llm_engine.remove_lora(self.lora_request.lora_int_id)
        shutil.rmtree(self.lora_request.lora_path, ignore_errors=True)
        self.lora_request = None

    def list_adapters(self) -> list[int]:
        """The LoRA ids this engine holds (what the tests check)."""
        return sorted(self.llm.llm_engine.list_loras())

    def remove_adapter_dir(self) -> None:
        if self.adapter_dir is not None:
            shutil.rmtree(self.adapter_dir, ignore_errors=True)
            self.adapter_dir = None
