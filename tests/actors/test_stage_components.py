"""Each stage's actors build only their components (issue 30): the tiny presets give the very weights
of the whole pipeline, videos made from the text stage's embeddings equal those made from prompts,
and Wan2.2-T2V-A14B keeps its idle expert in host memory without changing a video."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from actors.families import FAMILIES, get_family
from actors.families.base import VAE_DECODER_MODULES, random_text_encoder, random_vae_encoder
from actors.model_config import ModelConfig
from actors.models import (
    PromptEmbeds,
    build_pipeline,
    encode_prompts,
    encode_training_inputs,
    generate_videos,
    tiny_sampling,
    uses_cfg,
)
from tests.support.tiny import tiny_image, tiny_pipe

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PROMPT = "a red cube in a room, the camera orbits slowly"
# Every image mode: the I2V families need one, Wan2.2-TI2V takes one (a separate pipeline class).
CASES = [(f, get_family(f).requires_image) for f in FAMILIES] + [("wan2.2-ti2v", True)]


def held_by(stage: str, name: str, state: dict) -> dict:
    """The part of component ``name``'s state a ``stage`` actor holds: pair encoding's VAE has no decoder."""
    if name != "vae" or stage != "encode":
        return state
    return {k: v for k, v in state.items() if k.split(".")[0] not in VAE_DECODER_MODULES}


@pytest.mark.parametrize("family", FAMILIES)
def test_each_stage_builds_only_its_components_with_the_whole_presets_weights(family):
    model, whole, f = ModelConfig(family=family), tiny_pipe(family), get_family(family)
    stages = f.stage_components()
    assert "text_encoder" not in stages["generate"] and stages["encode"] == ("vae",)
    for stage in ("text", "generate", "encode"):
        pipe = build_pipeline(model, stage=stage)
        assert {n for n in f.pipeline_components() if getattr(pipe, n) is not None} == set(stages[stage]), stage
        for name in stages[stage]:
            if name == "tokenizer":
                assert pipe.tokenizer.get_vocab() == whole.tokenizer.get_vocab()
                continue
            ours, theirs = getattr(pipe, name).state_dict(), held_by(stage, name, getattr(whole, name).state_dict())
            assert ours.keys() == theirs.keys()
            assert all(torch.equal(ours[k], theirs[k]) and ours[k].dtype == theirs[k].dtype for k in ours), name
    assert build_pipeline(model, stage="encode").vae.decoder is None


@pytest.mark.parametrize("family, with_image", CASES)
def test_videos_and_shards_from_embeddings_equal_those_from_prompts(family, with_image):
    model, whole = ModelConfig(family=family), tiny_pipe(family)
    sampling = tiny_sampling(family)
    if family == "wan2.1-t2v":  # a negative prompt, as the Wan recipes set one
        sampling = sampling.model_copy(update={"negative_prompt": "blurry, static"})
    image = tiny_image(family) if with_image else None
    text = build_pipeline(model, stage="text")
    prompt, negative = encode_prompts(text, model, [PROMPT, sampling.negative_prompt])
    embeds = PromptEmbeds(prompt, negative if uses_cfg(sampling) else None)

    # One seed: the pipeline then encodes the prompt in a batch of one, as the text stage does (a batch of
    # K repeated prompts differs from it in float rounding, ~1e-6).
    generate = build_pipeline(model, stage="generate")
    from_prompts = generate_videos(whole, model, sampling, PROMPT, [3], image=image)
    from_embeds = generate_videos(generate, model, sampling, PROMPT, [3], image=image, embeds=embeds)
    np.testing.assert_array_equal(from_embeds, from_prompts)
    # K seeds share the embeddings: each video is the one its seed gives (up to the batch's rounding).
    batch = generate_videos(generate, model, sampling, PROMPT, [4, 3], image=image, embeds=embeds)
    assert np.abs(batch[1].astype(int) - from_prompts[0]).max() <= 1

    whole_enc = encode_training_inputs(whole, model, from_prompts, PROMPT, image)
    stage_enc = encode_training_inputs(build_pipeline(model, stage="encode"), model, from_prompts, PROMPT, image,
                                       prompt_embeds=prompt)
    for key, value in whole_enc.items():
        assert (value is None and stage_enc[key] is None) or torch.equal(value, stage_enc[key]), key


def test_generation_without_negative_embeddings_under_cfg_is_refused():
    from actors.errors import InputError

    family = "cogvideox-t2v"
    model, sampling = ModelConfig(family=family), tiny_sampling(family)
    prompt = encode_prompts(build_pipeline(model, stage="text"), model, [PROMPT])[0]
    with pytest.raises(InputError, match="negative prompt embeddings"):
        generate_videos(build_pipeline(model, stage="generate"), model, sampling, PROMPT, [0],
                        embeds=PromptEmbeds(prompt))


def test_a14b_idle_expert_waits_in_host_memory_and_videos_do_not_change():
    family = "wan2.2-t2v-a14b"
    model, sampling = ModelConfig(family=family), tiny_sampling(family)
    prompt, negative = encode_prompts(build_pipeline(model, stage="text"), model, [PROMPT, ""])
    embeds = PromptEmbeds(prompt, negative)
    plain = build_pipeline(model, stage="generate")
    offloaded = build_pipeline(model, stage="generate", offload_idle_expert=True)
    offload = offloaded.idle_expert_offload
    assert offload.resident == "transformer" and offload.moves == 0

    calls = []
    for name in ("transformer", "transformer_2"):
        # Record, at every denoiser call, which expert runs and which one the offload holds on the device.
        getattr(offloaded, name).register_forward_pre_hook(
            lambda module, args, name=name: calls.append((name, offload.resident)))
    first = generate_videos(offloaded, model, sampling, PROMPT, [5, 6], embeds=embeds)
    assert offload.moves == 1, "one move in at the boundary"
    second = generate_videos(offloaded, model, sampling, PROMPT, [7], embeds=embeds)
    assert offload.moves == 3, "the next video moves the high-noise expert back in, then the boundary again"
    assert {"transformer", "transformer_2"} == {name for name, _ in calls}
    assert all(name == resident for name, resident in calls), "an expert ran while not on the device"

    np.testing.assert_array_equal(first, generate_videos(plain, model, sampling, PROMPT, [5, 6], embeds=embeds))
    np.testing.assert_array_equal(second, generate_videos(plain, model, sampling, PROMPT, [7], embeds=embeds))


@pytest.mark.parametrize("family, params", [
    # T5-XXL's encoder, the CogVideoX VAE and its encoder half
    ("cogvideox-t2v", {"text_encoder": 4.762e9, "vae": 2.156e8, "vae_encoder": 9.222e7}),
    # umT5-XXL's encoder, the Wan2.2 VAE and its encoder half
    ("wan2.2-ti2v", {"text_encoder": 5.681e9, "vae": 7.047e8, "vae_encoder": 1.496e8}),
])
def test_random_full_size_builds_every_component_at_its_published_size(family, params):
    """On the meta device (no memory): the text encoder and VAE of random-full-size, built in the dtype
    from_pretrained would give them (Wan keeps its VAE in float32), and pair encoding's VAE without its
    decoder. The text encoder's two embedding tables are one, as in the checkpoint."""
    f = get_family(family)
    for name, expected in params.items():
        with torch.device("meta"):
            module = f._full_size_component("vae" if name == "vae_encoder" else name, torch.bfloat16,
                                            vae_decoder=name != "vae_encoder")
        assert sum(p.numel() for p in module.parameters()) == pytest.approx(expected, rel=1e-3), name
        dtype = torch.float32 if (name, family) in {("vae", "wan2.2-ti2v"), ("vae_encoder", "wan2.2-ti2v")} \
            else torch.bfloat16
        assert {p.dtype for p in module.parameters()} == {dtype}, name
        if name == "text_encoder":
            assert module.shared.weight is module.encoder.embed_tokens.weight


@pytest.mark.parametrize("family", ["cogvideox-t2v", "wan2.2-ti2v"])
def test_random_builds_laid_out_on_meta_first_are_initialised(family):
    """``random_text_encoder`` and ``random_vae_encoder`` (random-full-size) on the tiny configs: every
    weight written and finite, norm scales one as their constructors make them, the embedding tied;
    the VAE encodes like the whole one built by its constructor."""
    from transformers import T5Config, T5EncoderModel

    config = T5Config(vocab_size=64, d_model=16, d_kv=8, d_ff=32, num_layers=2, num_heads=2,
                      feed_forward_proj="gated-gelu")
    text = random_text_encoder(T5EncoderModel, config)
    assert text.shared.weight is text.encoder.embed_tokens.weight
    assert sorted(text.state_dict()) == sorted(T5EncoderModel(config).state_dict())
    assert all(torch.isfinite(p).all() and p.abs().sum() > 0 for p in text.parameters())
    assert torch.isfinite(text(input_ids=torch.tensor([[1, 2, 3]])).last_hidden_state).all()

    f = get_family(family)
    vae_config = dict(f.tiny_component_configs()[0])
    vae = random_vae_encoder(f.vae_class(), vae_config)
    whole = f.vae_class().from_config(vae_config)
    assert vae.decoder is None and sorted(vae.state_dict()) == sorted(held_by("encode", "vae", whole.state_dict()))
    assert all(torch.isfinite(p).all() for p in vae.parameters())
    scales = [p for n, p in vae.named_parameters() if n.endswith((".gamma", "norm.weight", "norm1.weight"))]
    assert scales and all(torch.equal(p, torch.ones_like(p)) for p in scales)
    video = torch.rand(1, 3, 5, 32, 32) * 2 - 1
    assert vae.encode(video).latent_dist.mode().shape == whole.encode(video).latent_dist.mode().shape


@pytest.mark.parametrize("family", ["cogvideox-t2v", "wan2.2-t2v-a14b"])
def test_real_weights_load_one_component_at_a_time(family, tmp_path):
    """A diffusers directory (the tiny preset saved with save_pretrained) loads as real weights do:
    each stage reads only its components' subfolders, with the classes and extras model_index.json names."""
    whole = tiny_pipe(family)
    whole.save_pretrained(tmp_path)
    model = ModelConfig(family=family, pretrained=str(tmp_path))
    f = get_family(family)
    for stage in ("text", "generate", "encode"):
        pipe = build_pipeline(model, stage=stage)
        assert {n for n in f.pipeline_components() if getattr(pipe, n) is not None} == set(f.stage_components()[stage])
        for name in f.stage_components()[stage]:
            if name != "tokenizer":
                ours, theirs = getattr(pipe, name).state_dict(), held_by(stage, name, getattr(whole, name).state_dict())
                assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in theirs), \
                    (stage, name)
        assert type(pipe.scheduler) is type(whole.scheduler)
        if stage == "generate":
            assert dict(pipe.config).get("boundary_ratio") == dict(whole.config).get("boundary_ratio")
        if stage == "encode":
            assert pipe.vae.dtype == torch.float32
            assert getattr(pipe.vae, "use_tiling", False) == f.vae_tiled
