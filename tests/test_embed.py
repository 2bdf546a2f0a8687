"""mim_jax.infer.clip_scores: CLIP scores and image embeddings equal transformers', sharded or not."""
import jax
import numpy as np
import pytest
import torch
import transformers
from PIL import Image

from clip_helpers import tiny_hf_clip
from mim_jax.data.clip_images import preprocess_clip_image
from mim_jax.infer.clip_scores import ClipScorer

CAPTIONS = ["the cat", "a dog and the cat", "zebra", "the quick brown fox jumps over the lazy dog and cat", "",
            "red and blue", "x", "the end", "an apple", "sky"]


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
  directory = tmp_path_factory.mktemp("clip")
  return directory, tiny_hf_clip(directory)


def _images(n, seed=0):
  rng = np.random.RandomState(seed)
  sizes = [(60, 45), (42, 90), (50, 50), (120, 80)]
  return [Image.fromarray(rng.randint(0, 256, (*sizes[i % 4][::-1], 3), dtype=np.uint8)) for i in range(n)]


def _hf_reference(hf, directory, images, captions):
  """transformers' scores (100 × cosine) and unit image embeddings through its own processor and tokenizer."""
  processor = transformers.CLIPImageProcessorPil(size={"shortest_edge": 42}, crop_size={"height": 42, "width": 42})
  tokenizer = transformers.AutoTokenizer.from_pretrained(directory)
  text = tokenizer(captions, padding="max_length", max_length=16, truncation=True, return_tensors="pt")
  pixels = processor(images=images, return_tensors="pt")["pixel_values"]
  with torch.no_grad():
    out = hf(pixel_values=pixels, **text)
    cosine = (out.logits_per_image / hf.logit_scale.exp()).diagonal().numpy()
  return 100 * cosine, out.image_embeds.numpy()


def test_scores_and_embeddings_match_transformers(hf_dir):
  directory, hf = hf_dir
  images = _images(len(CAPTIONS))
  expected_scores, expected_embeds = _hf_reference(hf, directory, images, CAPTIONS)
  # A threshold between the scores (random tiny models score far below TextBind's 30), so both sides occur.
  threshold = float(np.median(expected_scores))
  scorer = ClipScorer.from_pretrained(directory, batch_size=4, min_score=threshold)
  result = scorer.score_pairs(zip(images, CAPTIONS))
  np.testing.assert_allclose(result.scores, expected_scores, atol=1e-4)
  np.testing.assert_allclose(result.image_embeds, expected_embeds, atol=1e-5)
  np.testing.assert_array_equal(result.keep, expected_scores >= threshold)
  assert 0 < result.keep.sum() < len(CAPTIONS)
  assert result.truncated_captions == 1 and not result.problems
  # batch_size 4 rounds up to the 8 devices; 10 pairs make two batches of one shape: one compilation.
  assert scorer.batch_size == 8 and scorer._score._cache_size() == 1


def test_sharded_equals_one_device(hf_dir):
  directory, _ = hf_dir
  pairs = list(zip(_images(10, seed=1), CAPTIONS))
  sharded = ClipScorer.from_pretrained(directory, batch_size=8).score_pairs(pairs)
  single = ClipScorer.from_pretrained(directory, batch_size=8, devices=jax.devices()[:1]).score_pairs(pairs)
  assert sharded.image_embeds.shape == (10, 16)
  np.testing.assert_allclose(sharded.scores, single.scores, atol=1e-5)
  np.testing.assert_allclose(sharded.image_embeds, single.image_embeds, atol=1e-6)
  embeds, usable, problems = ClipScorer.from_pretrained(directory, batch_size=8).embed_images([p[0] for p in pairs])
  np.testing.assert_allclose(embeds, single.image_embeds, atol=1e-6)
  assert usable.all() and not problems


def test_bad_records_are_counted_and_skipped(hf_dir, tmp_path):
  directory, _ = hf_dir
  corrupt = tmp_path / "corrupt.jpg"
  corrupt.write_bytes(b"\xff\xd8\xff not really a jpeg")
  good = _images(3, seed=2)
  saved = tmp_path / "good.png"
  good[2].save(saved)
  pairs = [(good[0], "the cat"), (tmp_path / "missing.jpg", "a dog"), (corrupt, "a fox"),
           (np.zeros((5, 5), np.float32), "wrong shape"), (good[1], None), (saved, "an apple"), (None, "no image")]
  scorer = ClipScorer.from_pretrained(directory, batch_size=8, min_score=-100.0)
  result = scorer.score_pairs(pairs)
  assert dict(result.problems) == {"image file missing": 1, "image not decodable": 1, "image unusable": 2,
                                   "caption not text": 1}
  assert result.keep.tolist() == [True, False, False, False, False, True, False]
  assert np.isnan(result.scores[1:5]).all() and np.isnan(result.image_embeds[1:5]).all()
  clean = scorer.score_pairs([pairs[0], (good[2], "an apple")])
  np.testing.assert_allclose(result.scores[[0, 5]], clean.scores, atol=1e-5)
  assert "2 kept" in result.summary() and "1 caption not text" in result.summary()


def test_preprocessed_arrays_are_taken_as_is(hf_dir):
  directory, _ = hf_dir
  images = _images(2, seed=3)
  scorer = ClipScorer.from_pretrained(directory, batch_size=8)
  from_pil = scorer.score_pairs(zip(images, ["the cat", "sky"]))
  from_arrays = scorer.score_pairs(zip([preprocess_clip_image(im, 42) for im in images], ["the cat", "sky"]))
  np.testing.assert_array_equal(from_pil.scores, from_arrays.scores)
