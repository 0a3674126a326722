"""Reference model as a disabled LoRA adapter vs a separate frozen copy: peak memory and step time.

Same CogVideoX-architecture transformer (random init, >= 100M parameters), same DPO micro-batch,
same LoRA; the only difference is where the reference forward runs. Each variant runs in its own
subprocess so peak memory is measured fairly. CUDA: torch.cuda.max_memory_allocated. CPU: the
process's peak RSS (ru_maxrss) minus its RSS just before the model is built, i.e. what the model
and training add on top of the interpreter and its imports (~0.5 GiB of Python, torch and
diffusers that no GPU figure would count); the whole-process peak is reported beside it.
Last line of output: one JSON object with the figures.

    python benchmarks/trainer.py [--layers 20] [--steps 3] [--rounds 2] [--threads 1] [--device cpu|cuda]

Both variants use the trainer's defaults (LoRA r=64, gradient checkpointing on). 20 layers of the
5B block layout at 1024 width = 381M parameters; the more the weights dominate (5B: ~10 GiB in
bf16), the closer the memory ratio gets to 1/2. CPU timings run single-threaded by default: on a
shared 2-core machine two threads per process made step times swing by 2x between runs.
"""

from __future__ import annotations

import argparse
import copy
import json
import resource
import statistics
import subprocess
import sys
import time


def _model(layers: int, device: str, dtype):
    import torch
    from diffusers import CogVideoXTransformer3DModel

    torch.manual_seed(0)
    # CogVideoX-5B block layout at reduced width/depth (5B: 48 heads x 64, 42 layers).
    return CogVideoXTransformer3DModel(
        num_attention_heads=16, attention_head_dim=64, in_channels=16, out_channels=16, time_embed_dim=512,
        text_embed_dim=1024, num_layers=layers, sample_width=16, sample_height=16, sample_frames=9, patch_size=2,
        max_text_seq_length=32, use_rotary_positional_embeddings=True,
    ).to(device=device, dtype=dtype)


def _current_rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def run_variant(variant: str, layers: int, steps: int, device: str, threads: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    from actors.families import get_family
    from actors.model_config import ModelConfig
    from actors.models import build_denoiser
    from trainers.config import TrainerConfig
    from trainers.data import PairBatch
    from trainers.dpo import dpo_loss, per_sample_error
    from trainers.lora import add_lora
    from trainers.step import PolicyCall, TrainedNetwork, dpo_micro_batch, shared_noise_and_timesteps

    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    family = get_family("cogvideox-t2v")
    _, scheduler = build_denoiser(ModelConfig(family="cogvideox-t2v"))  # real DDPM config
    baseline = _current_rss_bytes() if device == "cpu" else 0
    transformer = _model(layers, device, dtype)
    n_params = sum(p.numel() for p in transformer.parameters())
    reference = None
    if variant == "copy":  # the conventional setup: a second, frozen network
        reference = copy.deepcopy(transformer).eval().requires_grad_(False)
    cfg = TrainerConfig(lora_rank=64, lora_alpha=128)  # the trainer's defaults: gradient checkpointing on
    params = add_lora(family.lora_experts(transformer), cfg, family.lora_target_modules)
    if cfg.gradient_checkpointing:  # as trainers.worker does
        transformer.enable_gradient_checkpointing()
    transformer.train()
    opt = torch.optim.AdamW(params, lr=5e-6)
    g = torch.Generator().manual_seed(0)
    shape = (3, 16, 16, 16)  # [F, C, H, W]: 3 latent frames of 128x128 px
    batch = PairBatch(["a"], torch.randn(1, *shape, generator=g), torch.randn(1, *shape, generator=g),
                      torch.randn(1, 32, 1024, generator=g), None)

    def step_copy():
        noise, t = shared_noise_and_timesteps(family, scheduler, batch, 0, 0, device)
        x0 = torch.cat([batch.winner, batch.loser]).to(device)
        noisy, target = family.noisy_and_target(scheduler, x0, torch.cat([noise, noise]), torch.cat([t, t]))
        prompt = torch.cat([batch.prompt_embeds] * 2).to(device)
        with torch.no_grad():
            ref_err = per_sample_error(family.predict(PolicyCall(reference), noisy, torch.cat([t, t]), prompt, None),
                                       target)
        err = per_sample_error(family.predict(PolicyCall(transformer), noisy, torch.cat([t, t]), prompt, None), target)
        return dpo_loss(err[:1], err[1:], ref_err[:1], ref_err[1:], 1.0)[0]

    def step():
        if variant == "copy":
            loss = step_copy()
        else:
            net = TrainedNetwork(family, scheduler, transformer)
            loss, _ = dpo_micro_batch(net, PolicyCall(transformer), batch, cfg, 0)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()

    step()  # warm-up (allocator, lazy AdamW state)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    dt = (time.perf_counter() - t0) / steps
    process_peak = (torch.cuda.max_memory_allocated() if device == "cuda"
                    else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {"variant": variant, "params": n_params, "lora_params": sum(p.numel() for p in params),
            "peak_mem_mb": (process_peak - baseline) / 2**20, "process_peak_mem_mb": process_peak / 2**20,
            "step_time_s": dt}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads per variant process")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2,
                    help="alternate adapter/copy subprocesses this many times; step time = median per variant")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--variant", help=argparse.SUPPRESS)  # internal: run one variant, print its JSON
    a = ap.parse_args()
    if a.variant:
        print(json.dumps(run_variant(a.variant, a.layers, a.steps, a.device, a.threads)))
        return
    runs: dict[str, list[dict]] = {"adapter": [], "copy": []}
    for _ in range(a.rounds):  # interleaved, so a burst of background load hits both variants
        for v in ("adapter", "copy"):
            out = subprocess.run([sys.executable, __file__, "--variant", v, "--layers", str(a.layers),
                                  "--steps", str(a.steps), "--device", a.device, "--threads", str(a.threads)],
                                 check=True, capture_output=True, text=True).stdout
            r = json.loads(out.strip().splitlines()[-1])
            runs[v].append(r)
            print(f"{v:8s} params {r['params'] / 1e6:.1f}M (LoRA {r['lora_params'] / 1e6:.2f}M)  "
                  f"peak {r['peak_mem_mb']:.0f} MiB (process {r['process_peak_mem_mb']:.0f})  "
                  f"step {r['step_time_s']:.3f} s", flush=True)
    res = {v: {**rs[0], "peak_mem_mb": max(r["peak_mem_mb"] for r in rs),
               "process_peak_mem_mb": max(r["process_peak_mem_mb"] for r in rs),
               "step_time_s": statistics.median(r["step_time_s"] for r in rs)} for v, rs in runs.items()}
    ad, cp = res["adapter"], res["copy"]
    print(json.dumps({
        "benchmark": "trainer_reference_adapter_vs_copy", "device": a.device, "params": ad["params"],
        "lora_params": ad["lora_params"], "peak_mem_mb_adapter": ad["peak_mem_mb"],
        "peak_mem_mb_copy": cp["peak_mem_mb"],
        "process_peak_mem_mb_adapter": ad["process_peak_mem_mb"], "process_peak_mem_mb_copy": cp["process_peak_mem_mb"],
        "step_time_s_adapter": ad["step_time_s"], "step_time_s_copy": cp["step_time_s"],
        "peak_mem_ratio_adapter_vs_copy": ad["peak_mem_mb"] / cp["peak_mem_mb"],
        "step_time_ratio_adapter_vs_copy": ad["step_time_s"] / cp["step_time_s"],
        # the spread: each round's adapter run against the copy run right after it
        "step_time_ratio_per_round": [round(a["step_time_s"] / c["step_time_s"], 3)
                                      for a, c in zip(runs["adapter"], runs["copy"])],
        "rounds": a.rounds, "steps_per_round": a.steps, "layers": a.layers, "threads": a.threads,
    }))


if __name__ == "__main__":
    main()
