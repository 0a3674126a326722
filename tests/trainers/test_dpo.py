"""Diffusion-DPO math, LR schedule, DeepSpeed config and LoRA reference (no Ray here)."""

from __future__ import annotations

import math

import pytest
import torch

from actors.errors import InputError
from trainers.config import TrainerConfig
from trainers.deepspeed_config import (
    DEEPSPEED_REDUCE_BUCKET,
    build_deepspeed_config,
    gradient_accumulation_steps,
    lr_lambda,
    size_gradient_bucket,
)
from trainers.dpo import dpo_loss, per_sample_error


def _errors(b: int = 6, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(b, generator=g, dtype=torch.float64) for _ in range(4)]


def test_loss_is_ln2_when_policy_equals_reference():
    mw, ml, _, _ = _errors()
    loss, m = dpo_loss(mw, ml, mw.clone(), ml.clone(), beta=3.0)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-12)
    assert m["reward_margin"] == 0 and m["reward_accuracy"] == 0
    assert m["policy_ref_gap_w"] == 0 and m["policy_ref_gap_l"] == 0


def test_loss_value_and_metrics_match_the_formula():
    mw, ml, rw, rl = _errors()
    beta = 2.5
    loss, m = dpo_loss(mw, ml, rw, rl, beta)
    z = beta * ((rw - mw) - (rl - ml))
    assert loss.item() == pytest.approx((-torch.log(torch.sigmoid(z))).mean().item(), rel=1e-12)
    assert m["reward_margin"] == pytest.approx(z.mean().item())
    assert m["reward_accuracy"] == pytest.approx((z > 0).double().mean().item())
    assert m["policy_ref_gap_w"] == pytest.approx((mw - rw).mean().item())
    assert m["policy_ref_gap_l"] == pytest.approx((ml - rl).mean().item())


def test_official_loss_variants_and_policy_only_accuracy():
    """hinge: max(0, 1 − z); label_smoothed: BCE of σ(z) against 1 − ε (torch's own BCE); the
    policy-only reward of the official trainer: −E_θ, winner against loser."""
    import torch.nn.functional as F

    mw, ml, rw, rl = _errors()
    beta, eps = 2.5, 0.1
    z = beta * ((rw - mw) - (rl - ml))
    hinge, m = dpo_loss(mw, ml, rw, rl, beta, loss_type="hinge")
    assert hinge.item() == pytest.approx(torch.clamp(1 - z, min=0).mean().item(), rel=1e-12)
    smoothed, _ = dpo_loss(mw, ml, rw, rl, beta, loss_type="label_smoothed", label_smoothing=eps)
    bce = F.binary_cross_entropy(torch.sigmoid(z), torch.full_like(z, 1 - eps))
    assert smoothed.item() == pytest.approx(bce.item(), rel=1e-9)
    plain, _ = dpo_loss(mw, ml, rw, rl, beta)
    assert dpo_loss(mw, ml, rw, rl, beta, loss_type="label_smoothed", label_smoothing=0.0)[0].item() == \
        pytest.approx(plain.item(), rel=1e-12)
    assert m["policy_reward_margin"] == pytest.approx((ml - mw).mean().item())
    assert m["policy_reward_accuracy"] == pytest.approx((mw < ml).double().mean().item())
    assert m["reward_accuracy"] == pytest.approx((z > 0).double().mean().item())  # both, named apart


def test_loss_options_that_do_not_fit_together_are_refused():
    from pydantic import ValidationError

    for bad, key in [(dict(loss="label_smoothed"), "label_smoothing > 0"),
                     (dict(label_smoothing=0.1), "ignores it"),
                     (dict(export="best_validation"), "validation_fraction > 0")]:
        with pytest.raises(ValidationError, match=key):
            TrainerConfig(**bad)


def test_gradient_equals_autograd_of_hand_written_formula():
    mw, ml, rw, rl = _errors()
    beta = 1.7
    mw1, ml1 = mw.clone().requires_grad_(), ml.clone().requires_grad_()
    loss, _ = dpo_loss(mw1, ml1, rw, rl, beta)
    g_ours = torch.autograd.grad(loss, (mw1, ml1))
    mw2, ml2 = mw.clone().requires_grad_(), ml.clone().requires_grad_()
    hand = -torch.log(1 / (1 + torch.exp(-beta * ((rw - mw2) - (rl - ml2))))).mean()
    g_hand = torch.autograd.grad(hand, (mw2, ml2))
    for a, b in zip(g_ours, g_hand):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    # closed form: dL/dE_w = β σ(−z)/B (pushes the winner's error down), dL/dE_l = −β σ(−z)/B
    z = beta * ((rw - mw) - (rl - ml))
    torch.testing.assert_close(g_ours[0], beta * torch.sigmoid(-z) / len(z))
    torch.testing.assert_close(g_ours[1], -beta * torch.sigmoid(-z) / len(z))


def test_reference_errors_get_no_gradient_and_large_logits_stay_finite():
    mw, ml, rw, rl = _errors()
    rw.requires_grad_()
    mw.requires_grad_()
    loss, _ = dpo_loss(mw * 1e4, ml, rw, rl, beta=1e3)
    assert torch.isfinite(loss)
    loss.backward()
    assert rw.grad is None and torch.isfinite(mw.grad).all()


def test_per_sample_error_is_float32_mean_over_non_batch_dims():
    pred = torch.randn(3, 2, 4, 5, dtype=torch.bfloat16)
    target = torch.randn(3, 2, 4, 5, dtype=torch.bfloat16)
    e = per_sample_error(pred, target)
    assert e.dtype == torch.float32 and e.shape == (3,)
    torch.testing.assert_close(e, ((pred.float() - target.float()) ** 2).flatten(1).mean(1))
    with pytest.raises(ValueError):
        per_sample_error(pred, target[:, :1])


def test_trainer_config_defaults_are_the_paper_recipe():
    c = TrainerConfig()
    assert ((c.learning_rate, c.warmup_steps, c.max_steps, c.grad_clip, c.effective_batch_size)
            == (5e-6, 500, 10_000, 1.0, 16))
    assert (c.lora_rank, c.lora_alpha, c.lora_dropout, c.beta, c.zero_stage) == (64, 128, 0.0, 1.0, 2)
    assert (c.weight_decay, c.loss, c.validation_fraction) == (0.01, "sigmoid", 0.0)  # official AdamW decay
    with pytest.raises(ValueError):
        TrainerConfig(unknown_key=1)


def test_lr_schedule_linear_warmup_then_cosine():
    cfg = TrainerConfig(warmup_steps=4, max_steps=14, min_lr_ratio=0.1)
    f = lr_lambda(cfg)
    assert [f(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert f(4) == pytest.approx(1.0)
    assert f(9) == pytest.approx(0.1 + 0.9 * 0.5)  # half-way through the decay
    assert f(14) == pytest.approx(0.1) and f(100) == pytest.approx(0.1)
    assert all(f(s) >= f(s + 1) for s in range(4, 20))
    assert lr_lambda(TrainerConfig(warmup_steps=0, max_steps=10))(0) == pytest.approx(1.0)


def test_deepspeed_config_batch_arithmetic_and_precision():
    cfg = TrainerConfig(micro_batch_size=2, effective_batch_size=16, zero_stage=3)
    ds = build_deepspeed_config(cfg, world_size=4, device_type="cpu")
    assert ds["gradient_accumulation_steps"] == 2 and ds["train_micro_batch_size_per_gpu"] == 2
    assert ds["train_batch_size"] == 16 and ds["zero_optimization"]["stage"] == 3
    # ZeRO-3 releases gathered parameters after use (DeepSpeed's defaults keep a <1B model whole)
    zero = ds["zero_optimization"]
    assert (zero["stage3_max_live_parameters"], zero["stage3_prefetch_bucket_size"],
            zero["stage3_max_reuse_distance"]) == (30_000_000, 10_000_000, 0)
    assert "stage3_max_live_parameters" not in build_deepspeed_config(TrainerConfig(), 1, "cpu")["zero_optimization"]
    # the gradient bucket is the LoRA's size, not DeepSpeed's 5e8 elements (allocated whole on each GPU)
    assert size_gradient_bucket(ds, 66_060_288)["zero_optimization"]["reduce_bucket_size"] == 66_060_288
    assert size_gradient_bucket(ds, 10**10)["zero_optimization"]["reduce_bucket_size"] == DEEPSPEED_REDUCE_BUCKET
    assert "reduce_bucket_size" not in ds["zero_optimization"] and zero["stage"] == 3  # the input is left as it was
    assert ds["gradient_clipping"] == 1.0 and ds["optimizer"]["params"]["torch_adam"] is True
    assert ds["bf16"]["enabled"] is False  # CPU -> fp32
    # "auto" follows the device the workers really have, not what they asked Ray for.
    assert build_deepspeed_config(cfg, 4, "cuda")["bf16"]["enabled"] is True
    assert build_deepspeed_config(cfg.model_copy(update={"use_gpu": True}), 4, "cpu")["bf16"]["enabled"] is False
    with pytest.raises(InputError) as err:
        gradient_accumulation_steps(TrainerConfig(micro_batch_size=3, effective_batch_size=16), 2)
    assert "\n" not in str(err.value) and "effective_batch_size=16" in str(err.value)


# ---- on the real tiny CogVideoX transformer (diffusers + peft), one micro-batch ----------------


def _tiny_batch(n: int = 2):
    from trainers.data import PairBatch

    g = torch.Generator().manual_seed(0)
    shape = (3, 4, 4, 4)  # [F, C, H, W] latents of the tiny cogvideox-t2v preset
    return PairBatch(
        pair_ids=[f"p{i}" for i in range(n)],
        winner=torch.randn(n, *shape, generator=g),
        loser=torch.randn(n, *shape, generator=g),
        prompt_embeds=torch.randn(n, 16, 32, generator=g),
        image_latents=None,
    )


def _tiny(cfg: TrainerConfig, previous: str | None = None, as_reference: bool = False):
    from actors.families import get_family
    from actors.model_config import ModelConfig
    from actors.models import build_denoiser
    from trainers.lora import add_lora

    family = get_family("cogvideox-t2v")
    transformer, scheduler = build_denoiser(ModelConfig(family="cogvideox-t2v"))
    params = add_lora(family.lora_experts(transformer), cfg, family.lora_target_modules, previous,
                      reference_is_previous=as_reference)
    return family, transformer, scheduler, params


def test_first_step_loss_is_ln2_and_only_lora_gets_gradients():
    from trainers.step import PolicyCall, TrainedNetwork, dpo_micro_batch

    cfg = TrainerConfig(lora_rank=4, lora_alpha=8)
    family, t, sched, params = _tiny(cfg)
    loss, m = dpo_micro_batch(TrainedNetwork(family, sched, t), PolicyCall(t), _tiny_batch(), cfg, epoch=0)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-6)
    loss.backward()
    grads = {n: p.grad for n, p in t.named_parameters() if p.grad is not None}
    assert grads and all(".policy." in n and "lora_" in n for n in grads)
    assert {id(p) for p in params} == {id(p) for p in t.parameters() if p.requires_grad}
    # B = 0 at init, so only the B matrices get a gradient at the first step
    assert any(g.abs().sum() > 0 for n, g in grads.items() if "lora_B" in n)


def test_a_bf16_wan_with_its_float32_modules_trains(tmp_path):
    """from_pretrained in bf16 keeps Wan's norms and time embedder in float32: the policy's inputs must
    take the dtype diffusers reports (the first parameter is a float32 one)."""
    from actors.families import get_family
    from actors.model_config import ModelConfig
    from actors.models import build_denoiser
    from trainers.data import PairBatch
    from trainers.lora import add_lora
    from trainers.step import PolicyCall, TrainedNetwork, dpo_micro_batch

    family = get_family("wan2.1-t2v")
    tiny, scheduler = family.tiny_denoiser(torch.float32)
    tiny.save_pretrained(tmp_path / "model" / "transformer")
    scheduler.save_pretrained(tmp_path / "model" / "scheduler")
    t, sched = build_denoiser(ModelConfig(family="wan2.1-t2v", pretrained=str(tmp_path / "model"), dtype="bfloat16"))
    assert next(t.parameters()).dtype == torch.float32 and t.dtype == torch.bfloat16
    add_lora(family.lora_experts(t), TrainerConfig(lora_rank=4, lora_alpha=8), family.lora_target_modules)
    g = torch.Generator().manual_seed(0)
    shape = (16, 3, 4, 4)  # [C, F, H, W] latents of the tiny Wan2.1 preset
    batch = PairBatch(["p0"], torch.randn(1, *shape, generator=g), torch.randn(1, *shape, generator=g),
                      torch.randn(1, 16, tiny.config.text_dim, generator=g), None)
    loss, _ = dpo_micro_batch(TrainedNetwork(family, sched, t), PolicyCall(t), batch, TrainerConfig(), epoch=0)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-3)


def test_previous_round_lora_as_frozen_reference_adapter(tmp_path):
    from trainers.lora import export_lora, policy_state_dict
    from trainers.step import PolicyCall, TrainedNetwork, dpo_micro_batch

    cfg = TrainerConfig(lora_rank=4, lora_alpha=8)
    family, t, _, _ = _tiny(cfg)
    with torch.no_grad():
        for n, p in t.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    export_lora(policy_state_dict(t, zero_stage=2), t, "transformer", family.pipeline_class, str(tmp_path))

    family, t2, sched, params = _tiny(cfg, str(tmp_path), as_reference=True)
    assert set(t2.peft_config) == {"policy", "reference"} and t2.peft_config["policy"].lora_alpha == 8
    batch = _tiny_batch()
    loss, _ = dpo_micro_batch(TrainedNetwork(family, sched, t2, reference_is_adapter=True), PolicyCall(t2), batch,
                              cfg, 0)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-6)  # policy starts as the previous LoRA
    loss.backward()
    assert all(p.grad is None for n, p in t2.named_parameters() if ".reference." in n)
    # vs the base as reference the previous LoRA already makes a difference
    loss_base, _ = dpo_micro_batch(TrainedNetwork(family, sched, t2), PolicyCall(t2), batch, cfg, 0)
    assert abs(loss_base.item() - math.log(2)) > 1e-6


def test_sft_objective_is_the_winners_denoising_error_and_keeps_the_dpo_metrics():
    from trainers.dpo import per_sample_error
    from trainers.step import PolicyCall, TrainedNetwork, dpo_micro_batch, shared_noise_and_timesteps

    cfg = TrainerConfig(lora_rank=4, lora_alpha=8)
    family, t, sched, _ = _tiny(cfg)
    batch = _tiny_batch()
    loss, m = dpo_micro_batch(TrainedNetwork(family, sched, t), PolicyCall(t), batch, cfg, epoch=0, objective="sft")
    noise, ts = shared_noise_and_timesteps(family, sched, batch, 0, 0, torch.device("cpu"))
    noisy, target = family.noisy_and_target(sched, batch.winner, noise, ts)
    with torch.no_grad():
        expected = per_sample_error(family.predict(PolicyCall(t), noisy, ts, batch.prompt_embeds, None), target).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5) and m["loss"] == pytest.approx(loss.item())
    assert m["dpo_loss"] == pytest.approx(math.log(2), abs=1e-6) and "reward_accuracy" in m
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in t.parameters() if p.requires_grad)
