"""The `qformer` image medium (spec §2 ablation): its loss trains on a tiny run,
and generation renders from the same conditioning the training view computes."""
import io

import numpy as np
import pytest
import jax
import jax.numpy as jnp

from configs import mim_stage2
import diffusion_helpers
from helpers import bigram_mim_params, text_ids, tiny_mim_config, tiny_mim_tokenizer
from mim_jax import chat as chat_cli
from mim_jax.config import model_config
from mim_jax.convert.mim import load_hf_mim, save_hf_mim, save_textbind
from mim_jax.convert.sd_text_encoder import TextEncoder
from mim_jax.data.conversation import Conversation, Turn
from mim_jax.data.features import FeatureConfig, build_features
from mim_jax.infer.generate import SamplingConfig
from mim_jax.infer.mim_decode import TurnLimits
from mim_jax.infer.mim_generate import MIMGenerator
from mim_jax.infer.renderers import PlaceholderEmbeddingRenderer
from mim_jax.infer.sd_embedding_renderer import StableDiffusionEmbeddingRenderer
from mim_jax.infer.sd_pipeline import StableDiffusion
from mim_jax.infer.sd_text_conditioning import TextConditioner
from mim_jax.models.image_medium import MediumConfig, medium_loss
from mim_jax.models.mim import MIM, init_params
from configs import common
from mim_jax.train.freeze import MEDIUM_TRAINABLE
from mim_jax.train.loss import medium_loss_fn
from mim_jax.train.optimizer import make_optimizer
from mim_jax.train.step import make_train_step

# SD conditioning of the tiny SD-1.x text encoder below: 77 × 32.
MEDIUM = MediumConfig("qformer", num_prompt_tokens=3, cond_length=77, cond_dim=32, mapper_width=16, mapper_layers=1,
                      mapper_heads=2, mapper_mlp_dim=32, init_std=0.3)
CAPTIONS = ["a photo of cats on a sofa", "dogs on a chair", "birds on a fence", "one more dog"]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
  return tiny_mim_tokenizer(tmp_path_factory.mktemp("tok"))


def _sequence(tokenizer, cfg, text):
  """A generation prompt, then `<start>` and N placeholders for the prompt embeddings."""
  features = build_features(Conversation((Turn("user", text),)), tokenizer, FeatureConfig(
      max_len=64, num_image_tokens=cfg.num_image_tokens, caption_branches=False))
  prompt = features.tokens[:features.main_length].tolist()
  return prompt + [tokenizer.start_id] + [tokenizer.image_id] * MEDIUM.num_prompt_tokens, len(prompt) + 1


def test_config_rejects_unknown_medium():
  with pytest.raises(ValueError, match="medium.kind is 'pixels'; allowed values: language, qformer"):
    MediumConfig("pixels")


def sd_caption_embeddings(directory, captions):
  """What SD 1.x conditions on: a (tiny random) CLIP text encoder's last hidden
  states, through our CLIP and text-conditioning code."""
  encoder_dir = directory / "text_encoder"
  diffusion_helpers.text_encoder(MEDIUM.cond_dim, seed=0).save_pretrained(encoder_dir)
  diffusion_helpers.save_tiny_clip_tokenizer(directory / "tokenizer")
  encoder = TextEncoder.load(directory / "tokenizer", encoder_dir, "float32")
  context, _ = TextConditioner([encoder], xl=False, zero_unconditional=False).encode(captions)
  return context


def test_medium_loss_trains_the_mapper_on_captions(tokenizer, tmp_path):
  """Beating the best constant prediction shows the mapper reads the caption
  through the LLM states."""
  cfg = tiny_mim_config(tokenizer, MEDIUM)
  params = init_params(cfg, jax.random.key(0))
  rows = [_sequence(tokenizer, cfg, caption) for caption in CAPTIONS]
  width = max(len(tokens) for tokens, _ in rows)
  tokens_bt = np.asarray([tokens + [0] * (width - len(tokens)) for tokens, _ in rows], np.int32)
  starts_b = np.asarray([start for _, start in rows], np.int32)
  targets = sd_caption_embeddings(tmp_path, CAPTIONS)
  assert targets.shape == (len(CAPTIONS), MEDIUM.cond_length, MEDIUM.cond_dim)
  batch = {"tokens": tokens_bt, "targets": np.zeros_like(tokens_bt), "weights": np.zeros(tokens_bt.shape, np.float32),
           "medium_starts": starts_b[:, None], "medium_targets": targets[:, None],
           "medium_valid": np.ones((len(CAPTIONS), 1), bool)}
  # GILL's setting: only the prompt embeddings and the mapper train.
  # Adam at a constant 3e-2 (optax.adam's betas), through the optimizer training uses.
  adam = common.optimizer(learning_rate=3e-2, warmup_steps=0, b2=0.999, weight_decay=0.0, grad_clip=1e9)
  optimizer = make_optimizer(adam, 10**9, trainable=MEDIUM_TRAINABLE)
  step = jax.jit(make_train_step(MIM(cfg), optimizer, loss=medium_loss_fn))
  state = {"params": params, "opt_state": optimizer.init(params), "step": 0}
  losses = []
  for _ in range(40):
    state, metrics = step(state, batch)
    losses.append(float(metrics["loss"]))  # no token has weight: the loss is the medium term alone
  assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(state["params"]["llm"]),
                                                  jax.tree.leaves(params["llm"])))
  best_constant = float(medium_loss(jnp.broadcast_to(targets.mean(0), targets.shape), targets))
  # Captions share most of their 77 slots (padding), so the constant is a strong baseline.
  assert losses[-1] < 0.1 * losses[0] and losses[-1] < 0.8 * best_constant


def test_generation_renders_from_the_training_view_conditioning(tokenizer):
  cfg = tiny_mim_config(tokenizer, MEDIUM)
  params = bigram_mim_params(cfg, tokenizer)
  received = []

  def renderer(cond_nld):
    received.append(np.asarray(cond_nld))
    return PlaceholderEmbeddingRenderer()(cond_nld)

  sampling = SamplingConfig(max_new_tokens=40, stop_ids=(tokenizer.eos_id,))
  generator = MIMGenerator(cfg, params, tokenizer, renderer, sampling=sampling, limits=TurnLimits(max_images=1))
  prompt = Conversation((Turn("user", "a photo of cats"),))
  [turn] = generator.generate([prompt], [[]])
  _, _, t1, t2 = text_ids(tokenizer)
  # <start> is READY at once (no description); the image then reads as `<image>` → t1 t2 → </s>.
  assert turn.token_ids == [tokenizer.start_id, t1, t2, tokenizer.eos_id]
  assert len(turn.parts) == 2 and turn.parts[0].description == "" and turn.parts[1] == tokenizer.decode([t1, t2]).strip()

  tokens, start = _sequence(tokenizer, cfg, "a photo of cats")
  _, expected = MIM(cfg).apply({"params": params}, np.asarray([tokens], np.int32), np.asarray([start], np.int32),
                               method=MIM.medium_forward)
  assert len(received) == 1 and received[0].shape == (1, MEDIUM.cond_length, MEDIUM.cond_dim)
  np.testing.assert_allclose(received[0], np.asarray(expected), atol=1e-4)
  assert np.array_equal(np.asarray(turn.images[0].image), np.asarray(PlaceholderEmbeddingRenderer()(received[0])[0]))


def test_stage2_config_switches_the_medium():
  config = mim_stage2.get_config("tiny")
  assert model_config(config).medium.kind == "language"
  config.model.medium.kind = "qformer"
  assert model_config(config).medium == MediumConfig("qformer")
  config.model.medium.kind = "pixels"
  with pytest.raises(ValueError, match="medium.kind"):
    model_config(config)


@pytest.mark.slow
def test_sd_embedding_renderer_equals_rendering_the_text(tmp_path):
  """Given exactly what the text encoder makes of a description, rendering
  from embeddings is rendering that description."""
  diffusion_helpers.sd_pipeline(tmp_path / "sd")
  pipe = StableDiffusion.load(tmp_path / "sd")
  descriptions = ["a red fox in fresh snow", "a lighthouse at dusk"]
  context, _ = pipe.base.text.encode(descriptions)
  renderer = StableDiffusionEmbeddingRenderer(pipe, steps=2)
  got = renderer(context)
  want = pipe.render(descriptions, seed=42, steps=2)
  for a, b in zip(got, want):
    assert np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16)).max() <= 1
  assert not np.array_equal(np.asarray(got[0]), np.asarray(got[1]))
  with pytest.raises(ValueError, match="medium.cond_length / cond_dim"):
    renderer(context[:, :10])


def test_hf_export_carries_the_medium_and_the_chat_cli_renders_from_it(tokenizer, tmp_path):
  cfg = tiny_mim_config(tokenizer, MEDIUM)
  params = bigram_mim_params(cfg, tokenizer)
  save_hf_mim(tmp_path / "ckpt", cfg, params, tokenizer=tokenizer, dtype="float32")
  loaded_cfg, loaded = load_hf_mim(tmp_path / "ckpt")
  assert loaded_cfg == cfg
  jax.tree.map(np.testing.assert_array_equal, loaded, jax.tree.map(np.asarray, params))
  with pytest.raises(ValueError, match="release format has no image medium"):
    save_textbind(tmp_path / "mim.safetensors", cfg, params)

  stdout = io.StringIO()
  code = chat_cli.main(["--checkpoint", str(tmp_path / "ckpt"), "--renderer=placeholder", "--output",
                        str(tmp_path / "out"), "--max-new-tokens", "40", "--images-per-turn", "1"],
                       io.StringIO("a photo of cats\n/quit\n"), stdout)
  assert code == 0, stdout.getvalue()
  images = [line for line in stdout.getvalue().splitlines() if line.startswith("[image: ")]
  assert images == [f"[image: {tmp_path / 'out' / 'image_0001.png'}]"]
