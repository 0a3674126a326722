"""The published component configs of every checkpoint in the families' ``real_model_ids``.

What ``videogpa plan`` builds on the meta device when a hub id's own ``config.json`` files cannot be
read (offline, not in the cache) and for ``random-full-size`` (which builds every component from them):
the keys that shape the parameters, as in each checkpoint's ``<component>/config.json`` (values that
make no parameter are left at the class defaults, but for the Wan2.2 VAE's 48 latent statistics).
Components absent here keep their class's defaults, which are these checkpoints' (diffusers'
``AutoencoderKLCogVideoX`` and ``AutoencoderKLWan`` defaults are the CogVideoX-5B and Wan2.1 VAEs).

Torch-free: plain dicts.
"""

from __future__ import annotations

from typing import Any

# google/t5-v1_1-xxl (CogVideoX's text encoder) and google/umt5-xxl (Wan's), encoder side.
T5_V1_1_XXL = dict(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
                   relative_attention_num_buckets=32, relative_attention_max_distance=128,
                   feed_forward_proj="gated-gelu", tie_word_embeddings=False)
UMT5_XXL = {**T5_V1_1_XXL, "vocab_size": 256384}

# THUDM/CogVideoX-5b transformer/config.json.
COGVIDEOX_5B_TRANSFORMER = dict(
    num_attention_heads=48, attention_head_dim=64, in_channels=16, out_channels=16, flip_sin_to_cos=True,
    freq_shift=0, time_embed_dim=512, text_embed_dim=4096, num_layers=42, dropout=0.0, attention_bias=True,
    sample_width=90, sample_height=60, sample_frames=49, patch_size=2, temporal_compression_ratio=4,
    max_text_seq_length=226, activation_fn="gelu-approximate", timestep_activation_fn="silu",
    norm_elementwise_affine=True, norm_eps=1e-5, spatial_interpolation_scale=1.875,
    temporal_interpolation_scale=1.0, use_rotary_positional_embeddings=True, use_learned_positional_embeddings=False,
)
# THUDM/CogVideoX-5b-I2V: the image latents concatenated on channels, learned positional embeddings.
COGVIDEOX_5B_I2V_TRANSFORMER = {**COGVIDEOX_5B_TRANSFORMER, "in_channels": 32,
                                "use_learned_positional_embeddings": True}
# THUDM/CogVideoX1.5-5B: frames patched in pairs, no patch bias, RoPE sliced from a 300 x 300 grid.
COGVIDEOX15_5B_TRANSFORMER = {**COGVIDEOX_5B_TRANSFORMER, "patch_size_t": 2, "patch_bias": False,
                              "sample_height": 300, "sample_width": 300, "sample_frames": 81}

# Wan-AI/Wan2.2-TI2V-5B-Diffusers transformer/config.json.
WAN22_TI2V_5B_TRANSFORMER = dict(
    patch_size=(1, 2, 2), num_attention_heads=24, attention_head_dim=128, in_channels=48, out_channels=48,
    text_dim=4096, freq_dim=256, ffn_dim=14336, num_layers=30, cross_attn_norm=True,
    qk_norm="rms_norm_across_heads", eps=1e-6, image_dim=None, added_kv_proj_dim=None, rope_max_seq_len=1024,
    pos_embed_seq_len=None,
)
# Wan-AI/Wan2.1-T2V-14B-Diffusers; each of Wan2.2-T2V-A14B's two experts has the same architecture.
WAN_14B_TRANSFORMER = {**WAN22_TI2V_5B_TRANSFORMER, "num_attention_heads": 40, "in_channels": 16,
                       "out_channels": 16, "ffn_dim": 13824, "num_layers": 40}
WAN21_1_3B_TRANSFORMER = {**WAN_14B_TRANSFORMER, "num_attention_heads": 12, "ffn_dim": 8960, "num_layers": 30}
# Wan2.2-TI2V-5B's VAE (48 latent channels, 2x2 pixel patchify, 16x spatial); Wan2.1's is the class default.
# Its latent statistics make no parameter but must have 48 values (the class defaults are Wan2.1's 16):
# random-full-size normalises latents with them.
WAN22_VAE = dict(base_dim=160, decoder_base_dim=256, z_dim=48, dim_mult=[1, 2, 4, 4], num_res_blocks=2,
                 temperal_downsample=[False, True, True], is_residual=True, in_channels=12, out_channels=12,
                 patch_size=2, scale_factor_spatial=16, scale_factor_temporal=4,
                 latents_mean=[-0.2289, -0.0052, -0.1323, -0.2339, -0.2799, 0.0174, 0.1838, 0.1557, -0.1382, 0.0542,
                               0.2813, 0.0891, 0.1570, -0.0098, 0.0375, -0.1825, -0.2246, -0.1207, -0.0698, 0.5109,
                               0.2665, -0.2108, -0.2158, 0.2502, -0.2055, -0.0322, 0.1109, 0.1567, -0.0729, 0.0899,
                               -0.2799, -0.1230, -0.0313, -0.1649, 0.0117, 0.0723, -0.2839, -0.2083, -0.0520, 0.3748,
                               0.0152, 0.1957, 0.1433, -0.2944, 0.3573, -0.0548, -0.1681, -0.0667],
                 latents_std=[0.4765, 1.0364, 0.4514, 1.1677, 0.5313, 0.4990, 0.4818, 0.5013, 0.8158, 1.0344, 0.5894,
                              1.0901, 0.6885, 0.6165, 0.8454, 0.4978, 0.5759, 0.3523, 0.7135, 0.6804, 0.5833, 1.4146,
                              0.8986, 0.5659, 0.7069, 0.5338, 0.4889, 0.4917, 0.4069, 0.4999, 0.6866, 0.4093, 0.5709,
                              0.6065, 0.6415, 0.4944, 0.5726, 1.2042, 0.5458, 1.6887, 0.3971, 1.0600, 0.3943, 0.5537,
                              0.5444, 0.4089, 0.7468, 0.7744])

_COGVIDEOX_VAE: dict[str, Any] = {"scaling_factor": 0.7}

PUBLISHED: dict[str, dict[str, dict[str, Any]]] = {
    "THUDM/CogVideoX-5b": {"transformer": COGVIDEOX_5B_TRANSFORMER, "vae": _COGVIDEOX_VAE,
                           "text_encoder": T5_V1_1_XXL},
    "THUDM/CogVideoX-5b-I2V": {"transformer": COGVIDEOX_5B_I2V_TRANSFORMER, "vae": _COGVIDEOX_VAE,
                               "text_encoder": T5_V1_1_XXL},
    "THUDM/CogVideoX1.5-5B": {"transformer": COGVIDEOX15_5B_TRANSFORMER,
                              "vae": {**_COGVIDEOX_VAE, "invert_scale_latents": True}, "text_encoder": T5_V1_1_XXL},
    "Wan-AI/Wan2.2-TI2V-5B-Diffusers": {"transformer": WAN22_TI2V_5B_TRANSFORMER, "vae": WAN22_VAE,
                                        "text_encoder": UMT5_XXL},
    "Wan-AI/Wan2.1-T2V-1.3B-Diffusers": {"transformer": WAN21_1_3B_TRANSFORMER, "vae": {}, "text_encoder": UMT5_XXL},
    "Wan-AI/Wan2.1-T2V-14B-Diffusers": {"transformer": WAN_14B_TRANSFORMER, "vae": {}, "text_encoder": UMT5_XXL},
    "Wan-AI/Wan2.2-T2V-A14B-Diffusers": {"transformer": WAN_14B_TRANSFORMER, "transformer_2": WAN_14B_TRANSFORMER,
                                         "vae": {}, "text_encoder": UMT5_XXL},
}
