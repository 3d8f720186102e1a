"""The architectures the GPU bench measures, with random weights: no weights are reachable from the
GPU machine, and the compute does not depend on their values (the images are noise).

Each shape is the published model's config, hard-coded: SD 1.5 (UNet 860M, CLIP ViT-L/14 text
encoder), SD 2.1 base (the shape of SD-Turbo), SDXL base (the shape of SDXL-Turbo), and Whisper
large-v3. ``TINY`` holds small stand-ins with the same structure (the same pipeline classes, the
same kinds of blocks), which the CPU check in CI runs through the same code.
"""

from dataclasses import dataclass, field
from typing import Any, Dict, Optional

# The four-block VAE of SD 1.x, 2.x and SDXL alike (84M): factor-8 latents.
REAL_VAE = dict(
    block_out_channels=(128, 256, 512, 512), down_block_types=('DownEncoderBlock2D',) * 4,
    up_block_types=('UpDecoderBlock2D',) * 4, latent_channels=4, layers_per_block=2,
)
# Each text encoder's token ids: the project's byte-level CLIP tokenizer (s2i.tiny_sd) has 514 symbols.
BYTE_TOKENIZER_IDS = dict(bos_token_id=512, eos_token_id=513, pad_token_id=513)
CLIP_VIT_L = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12)
OPENCLIP_VIT_H = dict(
    vocab_size=49408, hidden_size=1024, intermediate_size=4096, num_hidden_layers=23, num_attention_heads=16,
    hidden_act='gelu', projection_dim=512,
)
OPENCLIP_BIGG = dict(
    vocab_size=49408, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
    hidden_act='gelu', projection_dim=1280,
)
SD_SCHEDULER = dict(beta_start=0.00085, beta_end=0.012, beta_schedule='scaled_linear', steps_offset=1)


@dataclass(frozen=True)
class DiffusionShape:
    name: str
    xl: bool  # StableDiffusionXLPipeline (two text encoders, size conditioning) instead of StableDiffusionPipeline
    unet: Dict[str, Any]
    vae: Dict[str, Any]
    text_encoder: Dict[str, Any]
    text_encoder_2: Optional[Dict[str, Any]] = None  # SDXL's second (projected) text encoder
    scheduler: Dict[str, Any] = field(default_factory=lambda: dict(SD_SCHEDULER))


SD15 = DiffusionShape(
    name='SD 1.5',
    xl=False,
    unet=dict(
        sample_size=64, cross_attention_dim=768, attention_head_dim=8, block_out_channels=(320, 640, 1280, 1280),
        down_block_types=('CrossAttnDownBlock2D',) * 3 + ('DownBlock2D',),
        up_block_types=('UpBlock2D',) + ('CrossAttnUpBlock2D',) * 3,
    ),
    vae=dict(REAL_VAE, sample_size=512),
    text_encoder=CLIP_VIT_L,
)
# SD-Turbo is SD 2.1 base distilled: the same UNet shape, the OpenCLIP ViT-H text encoder.
SD_TURBO = DiffusionShape(
    name='SD-Turbo (SD 2.1 base shape)',
    xl=False,
    unet=dict(
        sample_size=64, cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20), use_linear_projection=True,
        block_out_channels=(320, 640, 1280, 1280),
        down_block_types=('CrossAttnDownBlock2D',) * 3 + ('DownBlock2D',),
        up_block_types=('UpBlock2D',) + ('CrossAttnUpBlock2D',) * 3,
    ),
    vae=dict(REAL_VAE, sample_size=512),
    text_encoder=OPENCLIP_VIT_H,
    scheduler=dict(SD_SCHEDULER, timestep_spacing='trailing'),
)
SDXL = DiffusionShape(
    name='SDXL base',
    xl=True,
    unet=dict(
        sample_size=128, block_out_channels=(320, 640, 1280), layers_per_block=2,
        down_block_types=('DownBlock2D', 'CrossAttnDownBlock2D', 'CrossAttnDownBlock2D'),
        up_block_types=('CrossAttnUpBlock2D', 'CrossAttnUpBlock2D', 'UpBlock2D'),
        transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
        use_linear_projection=True, addition_embed_type='text_time', addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=2816,
    ),
    # force_upcast: SDXL's own VAE decodes in fp32 (it overflows in fp16), and the pipeline does that
    vae=dict(REAL_VAE, sample_size=1024, scaling_factor=0.13025, force_upcast=True),
    text_encoder=CLIP_VIT_L,
    text_encoder_2=OPENCLIP_BIGG,
)
SDXL_TURBO = DiffusionShape(
    name='SDXL-Turbo (SDXL shape)', xl=True, unet=dict(SDXL.unet, sample_size=64), vae=dict(SDXL.vae, sample_size=512),
    text_encoder=CLIP_VIT_L, text_encoder_2=OPENCLIP_BIGG, scheduler=dict(SD_SCHEDULER, timestep_spacing='trailing'),
)

TINY_TEXT = dict(vocab_size=1000, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4)
TINY_VAE = dict(
    block_out_channels=(16, 16, 16, 16), down_block_types=('DownEncoderBlock2D',) * 4,
    up_block_types=('UpDecoderBlock2D',) * 4, latent_channels=4, norm_num_groups=8, layers_per_block=1, sample_size=64,
)
TINY_SD = DiffusionShape(
    name='tiny SD', xl=False,
    unet=dict(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=8, cross_attention_dim=32, norm_num_groups=16,
        down_block_types=('DownBlock2D', 'CrossAttnDownBlock2D'), up_block_types=('CrossAttnUpBlock2D', 'UpBlock2D'),
    ),
    vae=TINY_VAE, text_encoder=TINY_TEXT,
)
TINY_SDXL = DiffusionShape(
    name='tiny SDXL', xl=True,
    unet=dict(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=8, norm_num_groups=16,
        down_block_types=('DownBlock2D', 'CrossAttnDownBlock2D'), up_block_types=('CrossAttnUpBlock2D', 'UpBlock2D'),
        transformer_layers_per_block=(1, 2), attention_head_dim=(2, 4), cross_attention_dim=64,
        use_linear_projection=True, addition_embed_type='text_time', addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=80,  # text_encoder_2's projection (32) + 6 size numbers x 8
    ),
    vae=dict(TINY_VAE, force_upcast=True), text_encoder=TINY_TEXT, text_encoder_2=dict(TINY_TEXT, projection_dim=32),
)

# Whisper large-v3 (1.55B): openai-whisper's ModelDimensions fields.
WHISPER_LARGE_V3 = dict(
    n_mels=128, n_audio_ctx=1500, n_audio_state=1280, n_audio_head=20, n_audio_layer=32,
    n_vocab=51866, n_text_ctx=448, n_text_state=1280, n_text_head=20, n_text_layer=32,
)
# The same 30 s window (1500 encoder positions), so the short window crops it the same way.
WHISPER_TINY = dict(
    n_mels=80, n_audio_ctx=1500, n_audio_state=64, n_audio_head=2, n_audio_layer=1,
    n_vocab=51865, n_text_ctx=448, n_text_state=64, n_text_head=2, n_text_layer=1,
)

REAL = {'sd15': SD15, 'sd_turbo': SD_TURBO, 'sdxl': SDXL, 'sdxl_turbo': SDXL_TURBO, 'whisper': WHISPER_LARGE_V3}
TINY = {'sd15': TINY_SD, 'sd_turbo': TINY_SD, 'sdxl': TINY_SDXL, 'sdxl_turbo': TINY_SDXL, 'whisper': WHISPER_TINY}


def random_pipeline(shape: DiffusionShape, device, dtype, seed: int = 0):
    """A diffusers text-to-image pipeline of ``shape`` with random weights, built on ``device``
    (on a GPU directly in its memory, rather than built on the CPU and copied)."""
    import torch
    from diffusers import (
        AutoencoderKL, EulerDiscreteScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline, UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from s2i.tiny_sd import byte_level_clip_tokenizer

    torch.manual_seed(seed)
    with torch.device(device):  # the models only: a scheduler's tensors must stay on the CPU (it calls numpy on them)
        unet = UNet2DConditionModel(**shape.unet)
        vae = AutoencoderKL(**shape.vae)
        text_encoder = CLIPTextModel(CLIPTextConfig(**shape.text_encoder, **BYTE_TOKENIZER_IDS))
        if shape.xl:
            text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**shape.text_encoder_2, **BYTE_TOKENIZER_IDS))
    components = dict(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=byte_level_clip_tokenizer(),
                      scheduler=EulerDiscreteScheduler(**shape.scheduler))
    if shape.xl:
        pipe = StableDiffusionXLPipeline(
            **components, text_encoder_2=text_encoder_2, tokenizer_2=byte_level_clip_tokenizer(), add_watermarker=False,
        )
    else:
        pipe = StableDiffusionPipeline(**components, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.to(dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe
