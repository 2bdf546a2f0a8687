"""MIM generation: `<start> … <end>` is replaced by the rendered image exactly
(the cache equals a fresh prefill of the interleaved sequence), turns
interleave text and images in order, limits hold, batches equal single rows."""
import numpy as np
import pytest
import jax
from PIL import Image

from helpers import tiny_mim_config, tiny_mim_tokenizer
from mim_jax.data.conversation import Conversation, Turn
from mim_jax.data.features import FeatureConfig, build_features
from mim_jax.data.images import preprocess_image
from mim_jax.infer import mim_decode
from mim_jax.infer.generate import SamplingConfig
from mim_jax.infer.mim_decode import TurnLimits
from mim_jax.infer.mim_generate import GeneratedImage, MIMGenerator
from mim_jax.infer.renderers import PlaceholderRenderer
from mim_jax.models.mim import init_params

USER_IMAGE = Image.fromarray(np.random.RandomState(0).randint(0, 255, (40, 30, 3), np.uint8))
PROMPT = Conversation((Turn("user", "compare <image> with a photo of cats", ("u.png",), ()),))


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
  return tiny_mim_tokenizer(tmp_path_factory.mktemp("tok"))


def _words(tokenizer):
  """Four distinct text ids (d1, d2, t1, t2), none the prompt's last."""
  last = tokenizer.encode("[/INST]")[-1]
  ids = [i for i in dict.fromkeys(tokenizer.encode("cats sofa dogs chair")) if i != last]
  return ids[:4]


def _last_prompt_token(tokenizer, cfg):
  features = build_features(PROMPT, tokenizer, FeatureConfig(max_len=64, num_image_tokens=cfg.num_image_tokens,
                                                             caption_branches=False))
  return int(features.tokens[features.main_length - 1])


def bigram_params(cfg, tokenizer, seed=0):
  """A random MIM whose next token is (almost only) a function of its input:
  [/INST] → <start> d1 d2 <end>; an image's embeddings → t1 t2 → <start>, or
  </s> when no image is left. Layers still add a little, so attention (and a
  wrong mask) would show in the cache."""
  d1, d2, t1, t2 = _words(tokenizer)
  ids = tokenizer
  chain = {_last_prompt_token(tokenizer, cfg): ids.start_id, ids.start_id: d1, d1: d2, d2: ids.end_id,
           ids.image_id: t1, t1: t2, t2: ids.start_id}
  params = jax.device_get(init_params(cfg, jax.random.key(seed)))
  llm = params["llm"]
  members = sorted(chain)
  basis, _ = np.linalg.qr(np.random.RandomState(seed).randn(cfg.llm.embed_dim, len(members)))
  embedding = np.array(llm["embedding"])
  embedding[members] = basis.T
  head = np.zeros_like(llm["lm_head"])
  for current, following in chain.items():
    head[:, following] += 10 * embedding[current]
  head[:, ids.eos_id] += 5 * embedding[t2]  # second choice after t2
  llm["embedding"], llm["lm_head"] = embedding, head
  for layer, name in (("attn", "o_kernel"), ("mlp", "down_kernel")):
    llm["layers"][layer][name] = 0.03 * llm["layers"][layer][name]
  projection = params["image_encoder"]["projection"]
  projection["kernel"] = 0.03 * projection["kernel"]
  projection["bias"] = embedding[ids.image_id].copy()  # images read as `<image>`, plus a pixel-dependent bit
  return params


def _generator(tokenizer, cfg, params, max_new_tokens=40, **limits):
  sampling = SamplingConfig(max_new_tokens=max_new_tokens, stop_ids=(tokenizer.eos_id,))
  return MIMGenerator(cfg, params, tokenizer, PlaceholderRenderer(), sampling=sampling, limits=TurnLimits(**limits),
                      length_bucket=16)


def test_turn_interleaves_text_and_images_and_cache_equals_fresh_prefill(tokenizer):
  cfg = tiny_mim_config(tokenizer)
  params = bigram_params(cfg, tokenizer)
  generator = _generator(tokenizer, cfg, params, max_images=2)
  state, rendered = generator.decode([PROMPT], [[USER_IMAGE]])
  turn = generator.generate([PROMPT], [[USER_IMAGE]])[0]

  d1, d2, t1, t2 = _words(tokenizer)
  ids = tokenizer
  run = [ids.start_id, d1, d2, ids.end_id, t1, t2]
  assert turn.token_ids == run + run + [ids.eos_id] and turn.finish_reason == "stop"
  description, text = tokenizer.decode([d1, d2]).strip(), tokenizer.decode([t1, t2]).strip()
  expected_image = PlaceholderRenderer()([description])[0]
  assert [p if isinstance(p, str) else p.description for p in turn.parts] == [description, text, description, text]
  assert all(np.array_equal(np.asarray(image.image), np.asarray(expected_image)) for image in turn.images)
  assert turn.text == f"<image> {text} <image> {text}"

  # The same sequence written at once: prompt, image run, t1 t2, image run, t1 t2 </s>.
  k = cfg.num_image_tokens
  features = build_features(PROMPT, tokenizer, FeatureConfig(max_len=64, num_image_tokens=k, caption_branches=False))
  prompt = features.tokens[:features.main_length].tolist()
  sequence = prompt + [ids.image_id] * k + [t1, t2] + [ids.image_id] * k + [t1, t2, ids.eos_id]
  starts = [int(features.image_starts[0]), len(prompt), len(prompt) + k + 2]
  images = [USER_IMAGE] + [image.image for image in rendered[0]]
  pixels = np.stack([preprocess_image(image, cfg.vision.image_size) for image in images])
  t = len(sequence)
  fresh = mim_decode.prefill(
      params, np.asarray([sequence], np.int32), np.arange(t, dtype=np.int32)[None], np.ones((1, t), bool),
      np.asarray([starts], np.int32), np.arange(3, dtype=np.int32)[None], pixels, jax.random.key(0),
      config=cfg, sampling=generator.sampling, cache_slots=t).cache
  valid = np.asarray(state.cache.valid_bs[0])
  assert valid.sum() == t and np.asarray(fresh.valid_bs).all()
  for got, expected in ((state.cache.k_lbskh, fresh.k_lbskh), (state.cache.v_lbskh, fresh.v_lbskh)):
    np.testing.assert_allclose(np.asarray(got)[:, 0, valid], np.asarray(expected)[:, 0], atol=2e-5)
  # A single row is rolled back in place: its valid slots are exactly the first t.
  assert valid[:t].all() and int(state.cache.length) == t
  assert int(state.position_b[0]) == t


@pytest.mark.parametrize("limits, max_new_tokens, expected, reason", [
    (dict(max_images=1), 40, "run eos", "stop"),
    (dict(max_images=2), 6, "run", "length"),
    (dict(max_images=2), 3, "start d1 d2", "length"),  # a cut-off description gives no image
    (dict(max_images=1, max_description_tokens=1), 40, "start d1 end t1 t2 eos", "stop"),
])
def test_limits(tokenizer, limits, max_new_tokens, expected, reason):
  cfg = tiny_mim_config(tokenizer)
  generator = _generator(tokenizer, cfg, bigram_params(cfg, tokenizer), max_new_tokens, **limits)
  turn = generator.generate([PROMPT], [[USER_IMAGE]])[0]
  d1, d2, t1, t2 = _words(tokenizer)
  names = {"start": tokenizer.start_id, "end": tokenizer.end_id, "eos": tokenizer.eos_id, "d1": d1, "d2": d2,
           "t1": t1, "t2": t2}
  words = expected.replace("run", "start d1 d2 end t1 t2").split()
  assert turn.token_ids == [names[w] for w in words] and turn.finish_reason == reason
  assert len(turn.images) == words.count("end") <= limits["max_images"]
  assert len(turn.token_ids) <= max_new_tokens


def test_no_images_allowed_never_opens_one(tokenizer):
  cfg = tiny_mim_config(tokenizer)
  generator = _generator(tokenizer, cfg, bigram_params(cfg, tokenizer), 12, max_images=0)
  turn = generator.generate([PROMPT], [[USER_IMAGE]])[0]
  assert tokenizer.start_id not in turn.token_ids and not turn.images
  assert not {tokenizer.end_id, tokenizer.image_id, tokenizer.bos_id} & set(turn.token_ids)
