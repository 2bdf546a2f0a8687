"""The diffusers config.json values of the SDXL 1.0 releases
(stabilityai/stable-diffusion-xl-base-1.0 and -refiner-1.0: unet/, vae/,
scheduler/), for shape-only work without a download (AOT compiles, memory
planning). Loading a real checkpoint reads its own config files instead."""

SDXL_BASE_UNET = dict(
    _class_name="UNet2DConditionModel", sample_size=128, in_channels=4, out_channels=4,
    down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    block_out_channels=[320, 640, 1280], layers_per_block=2, attention_head_dim=[5, 10, 20],
    transformer_layers_per_block=[1, 2, 10], cross_attention_dim=2048, use_linear_projection=True,
    addition_embed_type="text_time", addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816,
    norm_num_groups=32, norm_eps=1e-5, flip_sin_to_cos=True, freq_shift=0,
)
SDXL_REFINER_UNET = dict(
    _class_name="UNet2DConditionModel", sample_size=128, in_channels=4, out_channels=4,
    down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    block_out_channels=[384, 768, 1536, 1536], layers_per_block=2, attention_head_dim=[6, 12, 24, 24],
    transformer_layers_per_block=4, cross_attention_dim=1280, use_linear_projection=True,
    addition_embed_type="text_time", addition_time_embed_dim=256, projection_class_embeddings_input_dim=2560,
    norm_num_groups=32, norm_eps=1e-5, flip_sin_to_cos=True, freq_shift=0,
)
SDXL_VAE = dict(
    _class_name="AutoencoderKL", in_channels=3, out_channels=3, latent_channels=4, sample_size=1024,
    down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
    block_out_channels=[128, 256, 512, 512], layers_per_block=2, norm_num_groups=32, scaling_factor=0.13025,
    force_upcast=True,
)
SDXL_SCHEDULER = dict(
    _class_name="EulerDiscreteScheduler", num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
    beta_schedule="scaled_linear", prediction_type="epsilon", timestep_spacing="leading", steps_offset=1,
)
# Text conditioning widths: CLIP ViT-L/14 (768) + OpenCLIP ViT-bigG/14 (1280, pooled projection 1280).
SDXL_TEXT_LENGTH, SDXL_CONTEXT_DIM, SDXL_POOLED_DIM = 77, 2048, 1280
