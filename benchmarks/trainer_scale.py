"""Host memory per trainer worker under ZeRO-2 and ZeRO-3, with 1 and 2 workers, side by side.

A mid-size CogVideoX-architecture transformer (the 5B block layout at reduced width and depth,
random weights) is saved as a diffusers directory in safetensors shards, and the project's own
trainer (Ray Train + DeepSpeed, CPU, gloo) runs 2 DPO steps from it four times: ZeRO-2 and ZeRO-3,
each with 1 and 2 workers. ZeRO-2 loads the whole frozen network in every worker; ZeRO-3 builds it
partitioned and each worker reads only its share of every tensor, so its host memory per worker
should fall as ~1/N. The figure per run is the trainer's own ``peak_rss_growth_mb``: the largest,
over the workers, of peak RSS minus the RSS just before the model was built (imports and Ray's
worker process excluded). Last line: one JSON object.

    python -m benchmarks.trainer_scale [--layers 24] [--heads 24] [--steps 2]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile

from benchmarks.rehearsal.trainer_runs import train_run, write_random_pairs

LATENT = (2, 16, 4, 4)  # [F, C, H, W]: CogVideoX latents of a 9-frame 32x32 clip
TEXT = (8, 4096)  # the real T5-XXL width, a few tokens


def save_mid_size_model(root: str, layers: int, heads: int) -> int:
    """A diffusers directory with a random CogVideoX-architecture transformer; its parameter count."""
    import torch
    from diffusers import CogVideoXTransformer3DModel

    from actors.families import get_family
    from actors.families.cogvideox import COGVIDEOX_5B_TRANSFORMER

    torch.manual_seed(0)
    config = {**COGVIDEOX_5B_TRANSFORMER, "num_attention_heads": heads, "num_layers": layers}
    transformer = CogVideoXTransformer3DModel.from_config(config)
    transformer.save_pretrained(os.path.join(root, "transformer"), max_shard_size="500MB")
    # the tiny preset's scheduler is the real checkpoints' scheduler config
    get_family("cogvideox-t2v").tiny_scheduler().save_pretrained(os.path.join(root, "scheduler"))
    with open(os.path.join(root, "model_index.json"), "w") as f:
        json.dump({"_class_name": "CogVideoXPipeline"}, f)
    return sum(p.numel() for p in transformer.parameters())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--heads", type=int, default=24, help="x 64 channels each (5B: 48)")
    parser.add_argument("--steps", type=int, default=2)
    args = parser.parse_args()

    import ray

    from actors.model_config import ModelConfig

    # 3 logical CPUs: two 1-CPU workers and the Ray Data read that feeds them (the machine has 2 cores)
    ray.init(num_cpus=3, include_dashboard=False, log_to_driver=False)
    with tempfile.TemporaryDirectory(prefix="videogpa-scale-") as d:
        params = save_mid_size_model(os.path.join(d, "model"), args.layers, args.heads)
        print(f"mid-size transformer: {params / 1e9:.2f}B parameters, saved as safetensors shards", flush=True)
        files = write_random_pairs(os.path.join(d, "pairs"), 4, LATENT, TEXT)
        model = ModelConfig(family="cogvideox-t2v", pretrained=os.path.join(d, "model"), dtype="float32")
        growth: dict[str, dict[str, float]] = {"2": {}, "3": {}}
        for stage in (2, 3):
            for workers in (1, 2):
                m = train_run(model, dict(num_workers=workers, zero_stage=stage, precision="fp32", lora_rank=64,
                                          lora_alpha=128, learning_rate=1e-4, warmup_steps=0, max_steps=args.steps,
                                          micro_batch_size=1, effective_batch_size=2, gradient_checkpointing=True,
                                          log_every=1, checkpoint_every=args.steps, max_failures=0), files)
                growth[str(stage)][str(workers)] = round(m["peak_rss_growth_mb"], 1)
                print(f"ZeRO-{stage}, {workers} worker(s): peak RSS growth {m['peak_rss_growth_mb']:.0f} MiB "
                      f"per worker (whole process {m['peak_memory_mb']:.0f} MiB), {m['step_s']:.1f} s/step, "
                      f"loss {m['loss']:.4f}", flush=True)
    ray.shutdown()
    print(json.dumps({
        "benchmark": "trainer_scale",
        "model_params": params,
        "weights_mib_fp32": round(params * 4 / 2**20, 1),
        "zero3_rss_mib_per_worker": growth["3"],
        "zero2_rss_mib_per_worker": growth["2"],
        "zero3_ratio_2_vs_1": round(growth["3"]["2"] / growth["3"]["1"], 3),
        "zero2_ratio_2_vs_1": round(growth["2"]["2"] / growth["2"]["1"], 3),
        "steps": args.steps,
    }))


if __name__ == "__main__":
    main()
