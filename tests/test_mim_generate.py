"""MIM generation: `<start> … <end>` is replaced by the rendered image exactly
(the cache equals a fresh prefill of the interleaved sequence), turns
interleave text and images in order, limits hold, batches equal single rows."""
import numpy as np
import pytest
import jax
from PIL import Image

from helpers import bigram_mim_params, last_prompt_token, text_ids, tiny_mim_config, tiny_mim_tokenizer
from mim_jax.data.conversation import Conversation, Turn
from mim_jax.data.features import FeatureConfig, build_features
from mim_jax.data.images import preprocess_image
from mim_jax.infer import mim_decode
from mim_jax.infer.generate import SamplingConfig
from mim_jax.infer.mim_decode import TurnLimits
from mim_jax.infer.mim_generate import MIMGenerator
from mim_jax.infer.renderers import PlaceholderRenderer

USER_IMAGE = Image.fromarray(np.random.RandomState(0).randint(0, 255, (40, 30, 3), np.uint8))
PROMPT = Conversation((Turn("user", "compare <image> with a photo of cats", ("u.png",), ()),))


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
  return tiny_mim_tokenizer(tmp_path_factory.mktemp("tok"))


def _generator(tokenizer, cfg, params, max_new_tokens=40, **limits):
  sampling = SamplingConfig(max_new_tokens=max_new_tokens, stop_ids=(tokenizer.eos_id,))
  return MIMGenerator(cfg, params, tokenizer, PlaceholderRenderer(), sampling=sampling, limits=TurnLimits(**limits))


def test_turn_interleaves_text_and_images_and_cache_equals_fresh_prefill(tokenizer):
  cfg = tiny_mim_config(tokenizer)
  params = bigram_mim_params(cfg, tokenizer)
  generator = _generator(tokenizer, cfg, params, max_images=2)
  [turn], state = generator.run([PROMPT], [[USER_IMAGE]])

  d1, d2, t1, t2 = text_ids(tokenizer)
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
  images = [USER_IMAGE] + [image.image for image in turn.images]
  pixels = np.stack([preprocess_image(image, cfg.vision.image_size) for image in images])
  t = len(sequence)
  fresh = mim_decode.prefill(
      params, np.asarray([sequence], np.int32), np.arange(t, dtype=np.int32)[None], np.ones((1, t), bool),
      np.asarray([starts], np.int32), np.arange(3, dtype=np.int32)[None], pixels, jax.random.key(0), 2, 75,
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
    (dict(max_images=2), 9, "run start d1 d2", "length"),  # the cut-off description gives no image
    (dict(max_images=1, max_description_tokens=1), 40, "start d1 end t1 t2 eos", "stop"),
])
def test_limits(tokenizer, limits, max_new_tokens, expected, reason):
  cfg = tiny_mim_config(tokenizer)
  generator = _generator(tokenizer, cfg, bigram_mim_params(cfg, tokenizer), max_new_tokens, **limits)
  turn = generator.generate([PROMPT], [[USER_IMAGE]])[0]
  d1, d2, t1, t2 = text_ids(tokenizer)
  names = {"start": tokenizer.start_id, "end": tokenizer.end_id, "eos": tokenizer.eos_id, "d1": d1, "d2": d2,
           "t1": t1, "t2": t2}
  words = expected.replace("run", "start d1 d2 end t1 t2").split()
  assert turn.token_ids == [names[w] for w in words] and turn.finish_reason == reason
  assert len(turn.images) == words.count("end") <= limits["max_images"]
  assert len(turn.token_ids) <= max_new_tokens


def test_no_images_allowed_never_opens_one(tokenizer):
  cfg = tiny_mim_config(tokenizer)
  generator = _generator(tokenizer, cfg, bigram_mim_params(cfg, tokenizer), 9, max_images=0)
  turn = generator.generate([PROMPT], [[USER_IMAGE]])[0]
  assert tokenizer.start_id not in turn.token_ids and not turn.images
  assert not {tokenizer.end_id, tokenizer.image_id, tokenizer.bos_id} & set(turn.token_ids)


def test_batch_equals_rows_when_rows_render_at_different_barriers(tokenizer):
  cfg = tiny_mim_config(tokenizer)
  params = bigram_mim_params(cfg, tokenizer)
  d1, d2, t1, t2 = text_ids(tokenizer)
  # After [/INST], <start> and t1 now tie in the bigram; each prompt's own
  # context (attention) decides, so rows open their images at different steps.
  embedding = params["llm"]["embedding"]
  params["llm"]["lm_head"][:, t1] += 10 * embedding[last_prompt_token(tokenizer, cfg)]
  prompts = [PROMPT, Conversation((Turn("user", "a photo of dogs"),)), Conversation((Turn("user", "birds on a fence"),))]
  images = [[USER_IMAGE], [], []]
  generator = _generator(tokenizer, cfg, params, max_images=2)
  batch, batch_state = generator.run(prompts, images)
  firsts = {turn.token_ids[0] for turn in batch}
  assert firsts == {tokenizer.start_id, t1}  # one row was mid-text (or mid-description) at another's barrier
  for row, (prompt, row_images) in enumerate(zip(prompts, images)):
    [single], single_state = generator.run([prompt], [row_images])
    assert batch[row].token_ids == single.token_ids and len(single.images) == 2
    for a, b in zip(batch[row].images, single.images):
      assert a.description == b.description and np.array_equal(np.asarray(a.image), np.asarray(b.image))
    valid = np.asarray(batch_state.cache.valid_bs[row])
    single_valid = np.asarray(single_state.cache.valid_bs[0])
    assert valid.sum() == single_valid.sum()
    for got, expected in ((batch_state.cache.k_lbskh, single_state.cache.k_lbskh),
                          (batch_state.cache.v_lbskh, single_state.cache.v_lbskh)):
      np.testing.assert_allclose(np.asarray(got)[:, row, valid], np.asarray(expected)[:, 0, single_valid], atol=2e-5)
