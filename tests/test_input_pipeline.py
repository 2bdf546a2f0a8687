"""The tf.data input pipeline and host-side batch packing: determinism, disjoint
reader shards, exact resume from a saved position, mixture weights, bad records
counted, and the packed-image layout for gradient accumulation."""
import json

import numpy as np
import pytest

from mim_jax.data import schema
from mim_jax.data.batches import ReaderGroup, pack_batch
from mim_jax.data.conversation import Conversation, Turn
from mim_jax.data.features import FeatureConfig
from mim_jax.data.pipeline import DataSource, InputPipeline, open_builder
from mim_jax.data.synthetic import caption_records, conversation_records
from mim_jax.data.tfds_writer import write_dataset
from mim_jax.data.tokenizer import Tokenizer, train_sentencepiece
from mim_jax.data.text_windows import read_text_lines

FEATURES = FeatureConfig(max_len=80, max_images=2, num_image_tokens=4)


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
  lines = read_text_lines()
  return Tokenizer.load(train_sentencepiece(lines, tmp_path_factory.mktemp("tok"), vocab_size=300))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  root = tmp_path_factory.mktemp("data")

  def renamed(records, prefix):
    for record in records:
      yield {**record, "id": f"{prefix}-{record['id']}"}

  return {
      "conversations": write_dataset(root, "convs", "conversation", {"train": conversation_records(48, 0)},
                                     num_shards=4, progress=False),
      "a": write_dataset(root, "caps_a", "caption", {"train": renamed(caption_records(40, 1), "a")}, num_shards=2,
                         progress=False),
      "b": write_dataset(root, "caps_b", "caption", {"train": renamed(caption_records(40, 2), "b")}, num_shards=2,
                         progress=False),
  }


def pipeline(sources, tok, **kwargs):
  kwargs = {"batch_size": 4, "seed": 7, "shuffle_buffer": 16, "num_parallel_calls": 2, "image_size": 28, **kwargs}
  return InputPipeline(sources, tok, FEATURES, **kwargs)


def take(iterator, n):
  return [next(iterator) for _ in range(n)]


def assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for key in x:
      np.testing.assert_array_equal(x[key], y[key], err_msg=key)


def test_same_seed_same_stream_and_images_are_real(data, tok):
  sources = [DataSource(str(data["conversations"]))]
  first, second = take(pipeline(sources, tok), 6), take(pipeline(sources, tok), 6)
  assert_batches_equal(first, second)
  other = take(pipeline(sources, tok, seed=8), 6)
  assert any((x["tokens"] != y["tokens"]).any() for x, y in zip(first, other))
  batch = first[0]
  assert batch["tokens"].shape == (4, 80) and batch["mask"].shape == (4, 80, 80)
  assert batch["pixels"].shape == (4, 2, 28, 28, 3) and batch["pixels"].dtype == np.uint8
  assert batch["pixels"][batch["image_valid"]].max() > 0  # decoded images, not zeros
  assert not batch["pixels"][~batch["image_valid"]].any()


def test_resume_continues_exactly(data, tok, tmp_path):
  sources = [DataSource(str(data["a"])), DataSource(str(data["conversations"]))]
  reference = pipeline(sources, tok)
  take(reference, 5)
  reference.save(tmp_path / "state")
  expected = take(reference, 12)  # crosses an epoch of the shorter source
  resumed = pipeline(sources, tok)
  resumed.restore(tmp_path / "state")
  assert_batches_equal(take(resumed, 12), expected)


def ids_of(p, n):
  return [r["id"].numpy().decode() for r in p.records.take(n)]


def test_readers_read_disjoint_parts(data, tok):
  sources = [DataSource(str(data["a"]))]
  parts = [set(ids_of(pipeline(sources, tok, shard_index=i, shard_count=2), 20)) for i in range(2)]
  assert len(parts[0]) == len(parts[1]) == 20  # one epoch of a half is 20 distinct records
  assert not parts[0] & parts[1]
  assert parts[0] | parts[1] == {f"a-caption-{i}" for i in range(40)}


def test_mixture_weights(data, tok):
  sources = [DataSource(str(data["a"]), weight=3.0), DataSource(str(data["b"]), weight=1.0)]
  ids = ids_of(pipeline(sources, tok), 800)
  share = sum(i.startswith("a-") for i in ids) / len(ids)
  assert 0.70 < share < 0.80
  only_b = ids_of(pipeline([DataSource(str(data["a"]), weight=0.0), DataSource(str(data["b"]))], tok), 50)
  assert all(i.startswith("b-") for i in only_b)


def test_bad_records_are_counted_and_skipped(tmp_path, tok):
  good = next(conversation_records(1, 0))
  conversation = Conversation((Turn("user", "look <image>", image_list=("x.png",)), Turn("assistant", "ok")))
  corrupt = schema.conversation_record(conversation, {"x.png": b"\x89PNG not really"}, id="corrupt", source="t")
  malformed = {**good, "id": "malformed", "conversation": json.dumps({"conversation": "nope"})}
  path = write_dataset(tmp_path, "bad", "conversation", {"train": [corrupt, malformed] + [good] * 6}, progress=False)
  p = pipeline([DataSource(str(path))], tok, shuffle_buffer=1)
  take(p, 3)
  assert p.counts["skipped:BadImageError"] >= 1
  assert p.counts["skipped:malformed"] >= 1
  assert p.counts["kept"] >= 12


def test_missing_and_wrong_datasets(tmp_path):
  with pytest.raises(FileNotFoundError, match="does not exist; write it with"):
    open_builder(tmp_path / "nowhere")
  (tmp_path / "empty").mkdir()
  with pytest.raises(FileNotFoundError, match="no prepared TFDS dataset"):
    open_builder(tmp_path / "empty")


def test_pack_batch_layout_for_accumulation():
  rng = np.random.default_rng(0)
  valid = np.array([[1, 1], [1, 0], [0, 0], [1, 0], [1, 1], [0, 1]], bool)
  pixels = rng.integers(0, 255, (6, 2, 3, 3, 3), dtype=np.uint8)
  batch = {"tokens": np.zeros((6, 5), np.int32), "weights": np.ones((6, 5), np.float32), "image_valid": valid,
           "pixels": pixels}
  out, dropped = pack_batch(batch, budget=8, accum_steps=2, shard_index=1)
  assert dropped == 0
  rows, images = out["image_rows"], out["images"].reshape(4, 2, 3, 3, 3)
  for b, m in zip(*np.nonzero(valid)):
    # microbatch b % 2 sees column b % 2; rows index the global array, after shard 0's 4 slots per microbatch
    np.testing.assert_array_equal(images[rows[b, m] - 4, b % 2], pixels[b, m])
  assert (rows[~valid] == -1).all()


def test_pack_batch_over_budget_zero_weights_whole_examples():
  valid = np.array([[1, 1], [1, 1], [1, 0]], bool)
  batch = {"tokens": np.zeros((3, 4), np.int32), "weights": np.ones((3, 4), np.float32), "image_valid": valid,
           "pixels": np.ones((3, 2, 2, 2, 3), np.uint8)}
  out, dropped = pack_batch(batch, budget=3)
  assert dropped == 1
  assert out["weights"][1].sum() == 0 and (out["image_rows"][1] == -1).all()
  assert out["weights"][[0, 2]].all() and out["image_rows"][2, 0] == 2


def test_reader_group_is_the_same_stream_for_any_process_split(data, tok, tmp_path):
  sources = [DataSource(str(data["conversations"]))]

  def make(index, count):
    return pipeline(sources, tok, batch_size=8 // count, shard_index=index, shard_count=count)

  group = ReaderGroup(make, readers=2, budget=8, accum_steps=1)
  batch, _ = group.next_batch()
  halves = [pack_batch(next(make(i, 2)), budget=4, shard_index=i)[0] for i in range(2)]
  for key in batch:
    np.testing.assert_array_equal(batch[key], np.concatenate([h[key] for h in halves]), err_msg=key)
  group.save(tmp_path)
  assert sorted(p.name for p in tmp_path.iterdir()) == ["reader_0-of-2", "reader_1-of-2"]

