"""actors.families: the training math of each family checked against its real diffusers pipeline."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from actors.errors import InputError
from actors.families import FAMILIES, get_family
from actors.families.cogvideox import cogvideox_rotary_emb
from actors.model_config import ModelConfig
from actors.models import (
    build_pipeline,
    encode_training_inputs,
    generate_videos,
    tiny_sampling,
)
from tests.support.tiny import scheduler_settings, tiny_image, tiny_pipe

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PROMPT = "a blue sphere on a table"


def _image(family: str) -> np.ndarray | None:
    return tiny_image(family, 5) if get_family(family).accepts_image else None


@functools.cache
def _inputs(family: str, with_image: bool = True) -> dict:
    pipe = tiny_pipe(family)
    model = ModelConfig(family=family)
    image = _image(family) if with_image else None
    videos = generate_videos(pipe, model, tiny_sampling(family), PROMPT, [0, 1], image=image)
    return encode_training_inputs(pipe, model, videos, PROMPT, image)


def test_family_attributes():
    for name in FAMILIES:
        fam = get_family(name)
        assert fam.name == name
        expected = "flow_matching" if name.startswith("wan") else "v_prediction"
        assert fam.prediction == expected
        assert hasattr(fam.pipeline_class, "save_lora_weights")
    assert get_family("cogvideox-t2v").lora_target_modules == ("to_q", "to_k", "to_v", "to_out.0")
    assert get_family("cogvideox-i2v").pipeline_class.__name__ == "CogVideoXImageToVideoPipeline"
    assert get_family("wan2.2-ti2v").pipeline_class.__name__ == "WanPipeline"
    with pytest.raises(InputError, match="unknown family"):
        get_family("sora")


@pytest.mark.parametrize("family", FAMILIES)
def test_lora_targets_name_linear_layers(family):
    targets = get_family(family).lora_target_modules
    names = [n for n, m in tiny_pipe(family).transformer.named_modules() if isinstance(m, torch.nn.Linear)]
    for target in targets:
        assert any(n.endswith("." + target) for n in names), target
    if family == "wan2.2-ti2v":  # Wan's q, k, v, o: self-attention and cross-attention
        assert any(".attn1.to_q" in n for n in names) and any(".attn2.to_out.0" in n for n in names)


def test_v_prediction_targets_match_scheduler():
    fam, scheduler = get_family("cogvideox-t2v"), tiny_pipe("cogvideox-t2v").scheduler
    t = fam.sample_timesteps(scheduler, 64, torch.Generator().manual_seed(0), "cpu")
    assert t.dtype == torch.long and t.min() >= 0 and t.max() < 1000
    assert torch.equal(t, fam.sample_timesteps(scheduler, 64, torch.Generator().manual_seed(0), "cpu"))
    x0 = torch.randn(64, 3, 4, 4, 4)
    noise = torch.randn_like(x0)
    noisy, target = fam.noisy_and_target(scheduler, x0, noise, t)
    torch.testing.assert_close(noisy, scheduler.add_noise(x0, noise, t))
    torch.testing.assert_close(target, scheduler.get_velocity(x0, noise, t))
    # v = sqrt(a) * noise - sqrt(1 - a) * x0
    a = scheduler.alphas_cumprod[t].float().view(-1, 1, 1, 1, 1)
    torch.testing.assert_close(target, a.sqrt() * noise - (1 - a).sqrt() * x0)


def test_flow_matching_targets():
    fam, scheduler = get_family("wan2.2-ti2v"), tiny_pipe("wan2.2-ti2v").scheduler
    gen = torch.Generator().manual_seed(0)
    t = fam.sample_timesteps(scheduler, 4096, gen, "cpu")
    assert t.dtype == torch.float32 and t.min() > 0 and t.max() < 1000
    # shift 5 pushes sigma up: median of sigma = 5*0.5/(1+4*0.5) = 5/6
    assert abs(t.median().item() / 1000 - 5 / 6) < 0.02
    t = t[:3]
    x0 = torch.randn(3, 48, 3, 4, 4)
    noise = torch.randn_like(x0)
    noisy, target = fam.noisy_and_target(scheduler, x0, noise, t)
    sigma = (t / 1000).view(-1, 1, 1, 1, 1)
    torch.testing.assert_close(noisy, (1 - sigma) * x0 + sigma * noise)
    torch.testing.assert_close(target, noise - x0)


@pytest.mark.parametrize("family", FAMILIES)
def test_predict_shape_matches_target(family):
    fam, pipe = get_family(family), tiny_pipe(family)
    enc = _inputs(family)
    x0 = enc["latents"]
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
    t = fam.sample_timesteps(pipe.scheduler, x0.shape[0], torch.Generator().manual_seed(2), "cpu")
    noisy, target = fam.noisy_and_target(pipe.scheduler, x0, noise, t, image_latents=enc["image_latents"])
    with torch.no_grad():
        pred = fam.predict(pipe.transformer, noisy, t, enc["prompt_embeds"], enc["image_latents"])
    assert pred.shape == target.shape == x0.shape
    assert torch.isfinite(pred).all()


def test_wan_condition_frame_carries_no_loss():
    fam, pipe = get_family("wan2.2-ti2v"), tiny_pipe("wan2.2-ti2v")
    enc = _inputs("wan2.2-ti2v")
    x0, cond = enc["latents"], enc["image_latents"]
    noise = torch.randn_like(x0)
    t = torch.tensor([300.0, 800.0])
    noisy, target = fam.noisy_and_target(pipe.scheduler, x0, noise, t, image_latents=cond)
    with torch.no_grad():
        pred = fam.predict(pipe.transformer, noisy, t, enc["prompt_embeds"], cond)
    assert ((pred - target)[:, :, 0] ** 2).sum() == 0
    torch.testing.assert_close(target[:, :, 1:], (noise - x0)[:, :, 1:])
    assert ((pred - target)[:, :, 1:] ** 2).sum() > 0
    # Text-only inputs train every frame.
    plain = _inputs("wan2.2-ti2v", with_image=False)
    assert plain["image_latents"] is None


def _capture_transformer_call(pipe, family: str, image) -> tuple[dict, torch.Tensor]:
    """Run the pipeline for one step without CFG and record the transformer's inputs and output."""
    seen: dict = {}

    def pre_hook(_module, _args, kwargs):
        seen.setdefault("kwargs", kwargs)

    def post_hook(_module, _args, _kwargs, output):
        seen.setdefault("output", output[0])

    handles = [
        pipe.transformer.register_forward_pre_hook(pre_hook, with_kwargs=True),
        pipe.transformer.register_forward_hook(post_hook, with_kwargs=True),
    ]
    try:
        sampling = tiny_sampling(family).model_copy(update={"num_inference_steps": 1, "guidance_scale": 1.0})
        generate_videos(pipe, ModelConfig(family=family), sampling, PROMPT, [0, 1], image=image)
    finally:
        for h in handles:
            h.remove()
    return seen["kwargs"], seen["output"]


@pytest.mark.parametrize("family", FAMILIES)
def test_predict_reproduces_the_pipeline_transformer_call(family):
    """predict(), fed what the pipeline fed its transformer, returns what the transformer returned:
    same rotary embeddings, channel concat, ofs, per-token timesteps, condition frame."""
    fam, pipe = get_family(family), tiny_pipe(family)
    image = _image(family)
    kwargs, expected = _capture_transformer_call(pipe, family, image)
    hidden, prompt_embeds = kwargs["hidden_states"], kwargs["encoder_hidden_states"]
    timestep = kwargs["timestep"]
    if family == "cogvideox-i2v":
        half = hidden.shape[2] // 2
        noisy, image_latents = hidden[:, :, :half], hidden[:, :, half:]
    elif family == "wan2.2-ti2v":
        noisy, image_latents = hidden, hidden[:1, :, :1]
        assert timestep.ndim == 2 and (timestep[:, : timestep.shape[1] // 3] == 0).all()
        timestep = timestep[:, -1]  # the noisy frames' timestep
        # encode_training_inputs builds the same condition latent the pipeline built.
        enc = _inputs(family)
        torch.testing.assert_close(enc["image_latents"], image_latents, rtol=1e-4, atol=1e-4)
    else:
        noisy, image_latents = hidden, None
    with torch.no_grad():
        pred = fam.predict(pipe.transformer, noisy, timestep, prompt_embeds, image_latents)
    if family == "wan2.2-ti2v":
        pred, expected = pred[:, :, 1:], expected[:, :, 1:]  # frame 0 is zeroed (no loss) by design
    torch.testing.assert_close(pred, expected, rtol=1e-5, atol=1e-5)


def test_wan_text_only_predict_matches_pipeline_per_token_timesteps():
    # WanPipeline(expand_timesteps=True) passes per-token timesteps; predict passes one per sample.
    family = "wan2.2-ti2v"
    fam, pipe = get_family(family), tiny_pipe(family)
    kwargs, expected = _capture_transformer_call(pipe, family, None)
    assert kwargs["timestep"].ndim == 2
    with torch.no_grad():
        pred = fam.predict(
            pipe.transformer, kwargs["hidden_states"], kwargs["timestep"][:, 0], kwargs["encoder_hidden_states"], None
        )
    torch.testing.assert_close(pred, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", ["cogvideox-t2v", "cogvideox1.5-t2v"])
def test_rotary_embeddings_match_pipeline(family):
    pipe = tiny_pipe(family)
    s = tiny_sampling(family)
    frames = 4
    ours = cogvideox_rotary_emb(
        pipe.transformer.config,
        frames,
        s.height // pipe.vae_scale_factor_spatial,
        s.width // pipe.vae_scale_factor_spatial,
        "cpu",
    )
    theirs = pipe._prepare_rotary_positional_embeddings(s.height, s.width, frames, torch.device("cpu"))
    for a, b in zip(ours, theirs):
        assert torch.equal(a, b)


def test_a14b_experts_route_each_timestep_like_the_pipeline():
    """Wan2.2-A14B: the training denoiser sends t >= boundary to the high-noise expert and the rest to
    the low-noise one, as WanPipeline switches experts, and reproduces each expert's call."""
    from actors.models import build_denoiser

    family = "wan2.2-t2v-a14b"
    fam, pipe = get_family(family), tiny_pipe(family)
    seen: dict[str, list] = {"transformer": [], "transformer_2": []}
    handles = [getattr(pipe, name).register_forward_hook(
        lambda _m, _a, kwargs, out, name=name: seen[name].append((kwargs, out[0])), with_kwargs=True)
        for name in seen]
    try:
        sampling = tiny_sampling(family).model_copy(update={"guidance_scale": 1.0})
        generate_videos(pipe, ModelConfig(family=family), sampling, PROMPT, [0], image=None)
    finally:
        for h in handles:
            h.remove()
    boundary = pipe.config.boundary_ratio * pipe.scheduler.config.num_train_timesteps
    assert seen["transformer"] and seen["transformer_2"], "both experts denoise some steps"
    assert all((kw["timestep"] >= boundary).all() for kw, _ in seen["transformer"])
    assert all((kw["timestep"] < boundary).all() for kw, _ in seen["transformer_2"])

    denoiser, _ = build_denoiser(ModelConfig(family=family))
    (high_kw, high_out), (low_kw, low_out) = seen["transformer"][0], seen["transformer_2"][-1]
    # One batch holding a high-noise and a low-noise sample: each row goes to its own expert.
    noisy = torch.cat([high_kw["hidden_states"], low_kw["hidden_states"]])
    t = torch.cat([high_kw["timestep"], low_kw["timestep"]]).float()
    prompt = torch.cat([high_kw["encoder_hidden_states"], low_kw["encoder_hidden_states"]])
    with torch.no_grad():
        pred = fam.predict(denoiser, noisy, t, prompt, None)
    torch.testing.assert_close(pred, torch.cat([high_out, low_out]), rtol=1e-5, atol=1e-5)
    assert set(fam.lora_experts(denoiser)) == {"transformer", "transformer_2"}


def test_a14b_lora_of_each_expert_learns_only_from_its_timesteps():
    """One LoRA per expert: a sample's loss reaches only the adapter of the expert its timestep routes
    to; an expert with no sample in the batch still runs (zero-weighted), so its LoRA gets zero, not
    missing, gradients and every rank's gradient reduction sees the same parameters."""
    from actors.models import build_denoiser
    from trainers.config import TrainerConfig
    from trainers.lora import add_lora

    family = "wan2.2-t2v-a14b"
    fam = get_family(family)
    denoiser, scheduler = build_denoiser(ModelConfig(family=family))
    params = add_lora(fam.lora_experts(denoiser), TrainerConfig(lora_rank=4, lora_alpha=4), fam.lora_target_modules)
    by_expert = {name: [p for n, p in denoiser.named_parameters() if n.startswith(name + ".") and p.requires_grad]
                 for name in fam.experts}
    assert sum(len(v) for v in by_expert.values()) == len(params) and all(by_expert.values())
    x0 = torch.randn(2, 16, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    noise = torch.randn_like(x0)
    prompt = torch.randn(1, 16, 32)
    grads = {}
    for case, t in {"both": [950.0, 300.0], "high only": [950.0, 990.0]}.items():
        denoiser.zero_grad(set_to_none=True)
        t = torch.tensor(t)
        noisy, target = fam.noisy_and_target(scheduler, x0, noise, t)
        ((fam.predict(denoiser, noisy, t, prompt, None) - target) ** 2).mean().backward()
        grads[case] = {name: [p.grad for p in ps] for name, ps in by_expert.items()}
    # LoRA B starts at 0, so the B matrices carry the first gradient of each adapter.
    for name in fam.experts:
        assert any(g is not None and g.abs().sum() > 0 for g in grads["both"][name]), name
    assert any(g.abs().sum() > 0 for g in grads["high only"]["transformer"])
    assert all(g is not None and g.abs().sum() == 0 for g in grads["high only"]["transformer_2"])


@pytest.mark.parametrize(("family", "sampler"), [
    ("cogvideox-t2v", "CogVideoXDPMScheduler"),  # generate/CogVideoX-5B.py swaps the checkpoint's scheduler
    ("cogvideox1.5-t2v", "CogVideoXDPMScheduler"),  # generate/CogVideoX1.5-5B.py likewise
    ("cogvideox-i2v", "CogVideoXDDIMScheduler"),  # generate/CogVideoX-5B-I2V.py keeps the checkpoint's
])
def test_cogvideox_samples_with_the_official_scripts_scheduler(family, sampler, tmp_path):
    fam = get_family(family)
    checkpoint = fam.tiny_scheduler()
    assert type(checkpoint).__name__ == "CogVideoXDDIMScheduler"  # the published checkpoints' class
    tiny = tiny_pipe(family).scheduler
    assert type(tiny).__name__ == sampler and tiny.config.timestep_spacing == "trailing"
    # A checkpoint directory, its scheduler folder as published, loads (build_pipeline) with the same sampler.
    build_pipeline(ModelConfig(family=family)).save_pretrained(tmp_path)  # (saving marks the config: not tiny_pipe)
    checkpoint.save_pretrained(tmp_path / "scheduler")
    loaded = build_pipeline(ModelConfig(family=family, pretrained=str(tmp_path))).scheduler
    assert type(loaded) is type(tiny) and scheduler_settings(loaded) == scheduler_settings(tiny)
