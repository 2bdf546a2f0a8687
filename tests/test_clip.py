"""Our CLIP towers equal transformers' CLIP models, loaded through convert/clip."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from PIL import Image

from clip_helpers import LEGACY_EOS, TINY_TEXT, TINY_VISION, randomize_, tiny_hf_clip
from mim_jax.convert import clip as convert_clip
from mim_jax.convert import json_files
from mim_jax.convert.safetensors_io import CheckpointReader, write_safetensors
from mim_jax.data.clip_images import preprocess_clip_image
from mim_jax.models import clip
from mim_jax.models.clip_config import ClipConfig, ClipTextConfig, ClipVisionConfig

EOS = 97
TOL = 1e-5


def _save(model, directory):
  model.save_pretrained(directory)
  return directory, model


@pytest.fixture(scope="module")
def hf_clip(tmp_path_factory):
  directory = tmp_path_factory.mktemp("clip")
  return directory, tiny_hf_clip(directory)


@pytest.fixture(scope="module")
def hf_text_with_projection(tmp_path_factory):
  config = transformers.CLIPTextConfig(**TINY_TEXT, eos_token_id=EOS, projection_dim=20)
  return _save(randomize_(transformers.CLIPTextModelWithProjection(config), 1), tmp_path_factory.mktemp("text"))


def _legacy_tokens():
  """Token ids whose end token (98, the largest id) sits at different places, padding (1) after it."""
  ids = np.random.RandomState(0).randint(3, 90, size=(3, 12))
  ids[:, 0] = 90
  for row, end in enumerate((11, 5, 1)):
    ids[row, end], ids[row, end + 1:] = 98, 1
  mask = (np.arange(12)[None] <= np.array([11, 5, 1])[:, None]).astype(np.int64)
  return ids, mask


def _pixels(n, size=42, seed=0):
  return np.random.RandomState(seed).randn(n, size, size, 3).astype(np.float32)


def _close(got, expected):
  got = np.asarray(got)
  assert got.shape == expected.shape
  assert np.abs(got - expected).max() <= TOL, np.abs(got - expected).max()


@pytest.mark.parametrize("scan_layers", [True, False])
def test_clip_model_matches_transformers(hf_clip, scan_layers):
  directory, hf = hf_clip
  cfg, params = convert_clip.load_hf_clip(directory, scan_layers=scan_layers)
  pixels = _pixels(2)
  ids, mask = _legacy_tokens()
  with torch.no_grad():
    expected = hf(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                  pixel_values=torch.tensor(pixels.transpose(0, 3, 1, 2)), output_hidden_states=True)
  model = clip.ClipModel(cfg)
  variables = {"params": params}
  image = model.apply(variables, jnp.asarray(pixels), True, method="encode_image")
  text = model.apply(variables, jnp.asarray(ids), jnp.asarray(mask), True, method="encode_text")
  logits_per_image, image_embeds, text_embeds = model.apply(variables, jnp.asarray(pixels), jnp.asarray(ids),
                                                            jnp.asarray(mask))

  for ours, theirs in ((image, expected.vision_model_output), (text, expected.text_model_output)):
    _close(ours.last_hidden_state, theirs.last_hidden_state.numpy())
    _close(ours.hidden_states, np.stack([h.numpy() for h in theirs.hidden_states]))
    _close(ours.penultimate_hidden_state, theirs.hidden_states[-2].numpy())
  _close(image.embeds, hf.get_image_features(torch.tensor(pixels.transpose(0, 3, 1, 2))).pooler_output.detach().numpy())
  _close(text.embeds, hf.get_text_features(torch.tensor(ids)).pooler_output.detach().numpy())
  _close(image_embeds, expected.image_embeds.numpy())
  _close(text_embeds, expected.text_embeds.numpy())
  _close(logits_per_image, expected.logits_per_image.numpy())
  assert cfg.text.legacy_eos and logits_per_image.shape == (2, 3)


def test_pooled_outputs_and_logit_scale(hf_clip):
  directory, hf = hf_clip
  cfg, params = convert_clip.load_hf_clip(directory)
  assert float(params["logit_scale"]) == pytest.approx(hf.logit_scale.item())
  ids, _ = _legacy_tokens()
  pixels = _pixels(2, seed=1)
  with torch.no_grad():
    text_pooled = hf.text_model(input_ids=torch.tensor(ids)).pooler_output.numpy()
    image_pooled = hf.vision_model(pixel_values=torch.tensor(pixels.transpose(0, 3, 1, 2))).pooler_output.numpy()
  _close(clip.ClipTextTower(cfg.text).apply({"params": params["text"]}, jnp.asarray(ids)).pooled, text_pooled)
  _close(clip.ClipVisionTower(cfg.vision).apply({"params": params["vision"]}, jnp.asarray(pixels)).pooled,
         image_pooled)


def test_text_model_with_projection_as_sdxl_uses_it(hf_text_with_projection):
  directory, hf = hf_text_with_projection
  cfg, params = convert_clip.load_hf_clip_text(directory)
  assert (cfg.eos_token_id, cfg.projection_dim, cfg.activation) == (EOS, 20, "gelu")
  # New-style end token: pooled at its FIRST occurrence, even when padding repeats it.
  ids = np.random.RandomState(2).randint(3, 90, size=(2, 16))
  ids[0, 6:] = EOS
  ids[1, 15] = EOS
  ids[1, 3] = 98  # larger than the end token: a legacy argmax would pick this position
  with torch.no_grad():
    expected = hf(input_ids=torch.tensor(ids), output_hidden_states=True)
  out = clip.ClipTextTower(cfg).apply({"params": params}, jnp.asarray(ids))
  _close(out.embeds, expected.text_embeds.numpy())
  _close(out.last_hidden_state, expected.last_hidden_state.numpy())
  _close(out.penultimate_hidden_state, expected.hidden_states[-2].numpy())
  assert out.hidden_states is None


def test_text_model_without_projection(tmp_path, hf_text_with_projection):
  hf = randomize_(transformers.CLIPTextModel(transformers.CLIPTextConfig(**TINY_TEXT, eos_token_id=EOS)), 2)
  directory, _ = _save(hf, tmp_path)
  cfg, params = convert_clip.load_hf_clip_text(directory)
  assert cfg.projection_dim == 0 and "projection" not in params
  ids = np.full((1, 16), EOS)
  ids[0, :5] = [90, 10, 11, 12, 13]
  with torch.no_grad():
    expected = hf(input_ids=torch.tensor(ids))
  out = clip.ClipTextTower(cfg).apply({"params": params}, jnp.asarray(ids))
  assert out.embeds is None
  _close(out.pooled, expected.pooler_output.numpy())
  _close(out.last_hidden_state, expected.last_hidden_state.numpy())


def test_sd1_text_encoder_layout(tmp_path, hf_text_with_projection):
  # Stable Diffusion 1.x's text_encoder, saved by transformers 4: a CLIPTextModel whose tensors carry the
  # `text_model.` prefix, plus the position_ids buffer HF no longer reads.
  hf = randomize_(transformers.CLIPTextModel(transformers.CLIPTextConfig(**TINY_TEXT, eos_token_id=LEGACY_EOS)), 4)
  hf.save_pretrained(tmp_path / "new")
  reader = CheckpointReader(tmp_path / "new")
  tensors = {f"text_model.{name}": np.array(reader.get(name)) for name in reader.keys()}
  tensors["text_model.embeddings.position_ids"] = np.arange(16)[None]
  (tmp_path / "sd").mkdir()
  write_safetensors(tmp_path / "sd" / "model.safetensors", tensors)
  config = json.loads((tmp_path / "new" / "config.json").read_text())
  (tmp_path / "sd" / "config.json").write_text(json.dumps({**config, "architectures": ["CLIPTextModel"]}))
  cfg, params = convert_clip.load_hf_clip_text(tmp_path / "sd")
  ids, _ = _legacy_tokens()
  with torch.no_grad():
    expected = hf(input_ids=torch.tensor(ids)).pooler_output.numpy()
  _close(clip.ClipTextTower(cfg).apply({"params": params}, jnp.asarray(ids)).pooled, expected)


def test_text_tower_of_a_clip_model(hf_clip):
  directory, hf = hf_clip
  cfg, params = convert_clip.load_hf_clip_text(directory)
  ids, _ = _legacy_tokens()
  expected = hf.get_text_features(torch.tensor(ids)).pooler_output.detach().numpy()
  _close(clip.ClipTextTower(cfg).apply({"params": params}, jnp.asarray(ids)).embeds, expected)


def test_vision_model_with_projection(tmp_path):
  config = transformers.CLIPVisionConfig(**TINY_VISION, projection_dim=12)
  directory, hf = _save(randomize_(transformers.CLIPVisionModelWithProjection(config), 3), tmp_path)
  cfg, params = convert_clip.load_hf_clip_vision(directory, scan_layers=False)
  pixels = _pixels(2, seed=3)
  with torch.no_grad():
    expected = hf(pixel_values=torch.tensor(pixels.transpose(0, 3, 1, 2)))
  out = clip.ClipVisionTower(cfg).apply({"params": params}, jnp.asarray(pixels))
  _close(out.embeds, expected.image_embeds.numpy())
  _close(out.last_hidden_state, expected.last_hidden_state.numpy())


def test_vit_l_14_preset_is_the_openai_release():
  # openai/clip-vit-large-patch14's config.json (the fields that matter; the rest are HF defaults).
  hub = {
      "model_type": "clip", "architectures": ["CLIPModel"], "projection_dim": 768, "logit_scale_init_value": 2.6592,
      "text_config": {"model_type": "clip_text_model", "hidden_size": 768, "intermediate_size": 3072,
                      "num_attention_heads": 12, "num_hidden_layers": 12, "projection_dim": 768,
                      "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1, "dropout": 0.0},
      "vision_config": {"model_type": "clip_vision_model", "hidden_size": 1024, "intermediate_size": 4096,
                        "num_attention_heads": 16, "num_hidden_layers": 24, "patch_size": 14,
                        "projection_dim": 768, "dropout": 0.0},
  }
  cfg = ClipConfig(
      vision=convert_clip.vision_config_from_hf(hub["vision_config"], projection_dim=768),
      text=convert_clip.text_config_from_hf(hub["text_config"], projection_dim=768))
  assert cfg == ClipConfig.preset("vit_l_14")
  with torch.device("meta"):
    hf_config = transformers.CLIPConfig(text_config=hub["text_config"], vision_config=hub["vision_config"],
                                        projection_dim=768)
    hf_count = sum(p.numel() for p in transformers.CLIPModel(hf_config).parameters())
  ours = sum(np.prod(x.shape) for x in jax.tree.leaves(clip.abstract_params(cfg)))
  assert ours == hf_count


def test_config_round_trip_and_errors():
  cfg = ClipConfig.preset("tiny", dtype="bfloat16")
  assert ClipConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
  assert cfg.vision.dtype == cfg.text.dtype == "bfloat16"
  with pytest.raises(ValueError, match=r"unknown clip.text field\(s\) \['width'\]"):
    ClipTextConfig.from_dict({"width": 3})
  with pytest.raises(ValueError, match="clip.vision.activation is 'relu'"):
    ClipVisionConfig(activation="relu")
  with pytest.raises(ValueError, match=r"clip.vision.projection_dim \(8\) and clip.text.projection_dim \(768\)"):
    ClipConfig(vision=ClipVisionConfig(projection_dim=8))
  with pytest.raises(ValueError, match="unknown clip preset 'huge'"):
    ClipConfig.preset("huge")
  with pytest.raises(ValueError, match="text_config.hidden_act 'relu' is not supported"):
    convert_clip.text_config_from_hf({"hidden_act": "relu"})


def test_bad_inputs_are_refused():
  cfg = ClipConfig.preset("tiny")
  params = clip.init_params(cfg, jax.random.key(0))
  with pytest.raises(ValueError, match=r"1 <= length <= 16 \(clip.text.max_positions\), got shape \(1, 17\)"):
    clip.ClipTextTower(cfg.text).apply({"params": params["text"]}, jnp.zeros((1, 17), jnp.int32))
  with pytest.raises(ValueError, match=r"pixels must be NHWC \(batch, 28, 28, 3\), got shape \(1, 3, 28, 28\)"):
    clip.ClipVisionTower(cfg.vision).apply({"params": params["vision"]}, jnp.zeros((1, 3, 28, 28)))


def test_bad_directories_name_the_problem(tmp_path, hf_text_with_projection):
  with pytest.raises(FileNotFoundError, match="config.json not found: point at a Hugging Face CLIPModel directory"):
    convert_clip.load_hf_clip(tmp_path / "nowhere")
  text_dir, _ = hf_text_with_projection
  with pytest.raises(ValueError, match="model_type is 'clip_text_model'.*load_hf_clip reads CLIPModel checkpoints"):
    convert_clip.load_hf_clip(text_dir)
  (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}))
  with pytest.raises(ValueError, match=r"model_type is 'llama', architectures \['LlamaForCausalLM'\]; "
                                       "load_hf_clip_text reads CLIPTextModel"):
    convert_clip.load_hf_clip_text(tmp_path)
  (tmp_path / "config.json").write_text((text_dir / "config.json").read_text())
  with pytest.raises(FileNotFoundError, match="no safetensors weights in"):
    convert_clip.load_hf_clip_text(tmp_path)


def _hf_pixels(processor, image):
  return processor(images=image, return_tensors="np")["pixel_values"][0].transpose(1, 2, 0)


@pytest.mark.parametrize("width,height,mode", [(320, 240, "RGB"), (201, 397, "RGBA"), (224, 224, "L"), (97, 50, "RGB")])
def test_preprocessing_matches_clip_image_processor(width, height, mode):
  rng = np.random.RandomState(width)
  channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
  array = rng.randint(0, 256, size=(height, width, channels), dtype=np.uint8)
  image = Image.fromarray(array[..., 0] if channels == 1 else array, mode)
  if mode == "RGBA":
    # HF composites alpha onto white while our loader drops it (like TextBind); compare on the RGB image.
    image = image.convert("RGB")
  processor = transformers.CLIPImageProcessorPil()
  ours = preprocess_clip_image(image)
  assert ours.shape == (224, 224, 3) and ours.dtype == np.float32
  np.testing.assert_allclose(ours, _hf_pixels(processor, image), atol=1e-6)


def test_config_json_reads_are_bounded(tmp_path, monkeypatch):
  monkeypatch.setattr(json_files, "MAX_JSON_BYTES", 2**20)
  (tmp_path / "config.json").write_text(json.dumps({"model_type": "clip", "padding": "x" * 2**20}))
  with pytest.raises(ValueError, match=r"config.json is over 1 MiB, too big for a checkpoint's JSON file; is it the "
                                       r"right file\? \(point at a Hugging Face CLIPModel directory"):
    convert_clip.load_hf_clip(tmp_path)
  (tmp_path / "config.json").write_text('{"model_type": ')
  with pytest.raises(ValueError, match="config.json is not valid JSON"):
    convert_clip.load_hf_clip(tmp_path)
