"""The scale engine (`--engine ray`): Ray places vLLM rollout engines and DeepSpeed ZeRO-3 ranks,
one file per distributed role (the OpenRLHF layout):

- `engine.py`: `RayEngine`, the driver's side: starts the actors, orchestrates every call;
- `scoring.py`: its read-only queries (log-probs on the actor ranks and engines, values);
- `placement.py`: the layout (which bundle each actor gets) and the actors' creation;
- `rollout.py`: one vLLM engine (`RolloutActor`);
- `zero.py`: the DeepSpeed ZeRO-3 rank base and how a batch is dealt to the ranks;
- `trainer.py`: the policy's ranks (`TrainerActor`) and the separate reference (`ReferenceActor`);
- `critic.py`: PPO's critic ranks (`CriticActor`) and GAE on their values;
- `weight_sync.py`: both ends of the weight sync, and which weights each side holds;
- `adapter_sync.py`: the sync with --lora_rank (the adapter, served by vLLM as a LoRA);
- `common.py`: the actors' settings, placement info, one-line errors, the bounded Ray wait.

Import the modules themselves (`from sttrl.engines.ray.engine import RayEngine`): this file
imports nothing, so that a Ray worker unpickling one actor class loads only what it needs.
"""
