"""The TFDS writer: datasets read back exactly through both TFDS entry points,
shards are what was asked for, and a failed write leaves nothing half done."""
import pytest
import tensorflow_datasets as tfds

from mim_jax.data import schema, tfds_writer
from mim_jax.data.conversation import Conversation, Turn
from record_helpers import encoded_image, read_split

PNG, JPEG = encoded_image("PNG", "blue"), encoded_image("JPEG", "red")


def _conversation_records(count: int) -> list[dict]:
  records = []
  for index in range(count):
    conversation = Conversation((
        Turn("user", f"look <image> #{index}", image_list=("a.png",)),
        Turn("assistant", "here: <image>", image_list=(f"b{index}.jpg",), caption_list=(f"cap {index}",)),
        Turn("user", "thanks"),
    ), name=f"c{index}")
    records.append(schema.conversation_record(conversation, {"a.png": PNG, f"b{index}.jpg": JPEG},
                                              id=f"c{index}", source="unit"))
  return records


def _caption_records(count: int) -> list[dict]:
  return [{"id": f"p{i}", "source": "unit", "caption": f"caption {i}", "image": JPEG if i % 2 else PNG}
          for i in range(count)]


def test_conversations_round_trip_through_both_readers(tmp_path):
  records = _conversation_records(5)
  path = tfds_writer.write_dataset(tmp_path, "unit_conversations", "conversation",
                                   {"train": records[:4], "validation": records[4:]}, num_shards=3,
                                   description="unit test", progress=False)
  assert path == tmp_path / "unit_conversations" / "1.0.0"
  info = tfds.builder_from_directory(path).info
  assert info.splits["train"].shard_lengths == [2, 1, 1]  # round-robin over 3 files
  assert info.splits["validation"].shard_lengths == [1]  # the two empty round-robin files are dropped
  back = read_split(path, "train")
  assert [r["id"].decode() for r in back] == ["c0", "c3", "c1", "c2"]  # shard by shard, file order
  for record in back:
    conversation, images = schema.conversation_from_record(record)
    expected = schema.conversation_from_record(records[int(record["id"][1:])])
    assert conversation == expected[0]
    assert images == expected[1]  # the stored bytes, exactly
  by_name = tfds.builder("unit_conversations", data_dir=tmp_path)
  assert by_name.info.splits["validation"].num_examples == 1
  assert by_name.info.description == "unit test"


def test_caption_shards_of_fixed_size(tmp_path):
  records = _caption_records(5)
  path = tfds_writer.write_dataset(tmp_path, "unit_captions", "caption", {"train": iter(records)}, shard_size=2,
                                   progress=False)
  assert tfds.builder_from_directory(path).info.splits["train"].shard_lengths == [2, 2, 1]
  back = read_split(path, "train")
  assert [(r["caption"].decode(), r["image"]) for r in back] == [(r["caption"], r["image"]) for r in records]


def test_byte_limit_starts_new_shards(tmp_path):
  path = tfds_writer.write_dataset(tmp_path, "unit_captions", "caption", {"train": _caption_records(4)},
                                   max_shard_bytes=1, progress=False)
  assert tfds.builder_from_directory(path).info.splits["train"].shard_lengths == [1, 1, 1, 1]


def test_failed_write_leaves_previous_version_intact(tmp_path):
  tfds_writer.write_dataset(tmp_path, "unit_captions", "caption", {"train": _caption_records(3)}, progress=False)

  def crashing():
    yield from _caption_records(2)
    raise RuntimeError("source went away")

  with pytest.raises(RuntimeError, match="source went away"):
    tfds_writer.write_dataset(tmp_path, "unit_captions", "caption", {"train": crashing()}, overwrite=True,
                              progress=False)
  assert [p.name for p in (tmp_path / "unit_captions").iterdir()] == ["1.0.0"]  # no staging left behind
  assert len(read_split(tmp_path / "unit_captions" / "1.0.0", "train")) == 3


def test_overwrite_replaces_and_refuses_without_flag(tmp_path):
  tfds_writer.write_dataset(tmp_path, "unit_captions", "caption", {"train": _caption_records(3)}, progress=False)
  with pytest.raises(FileExistsError, match="overwrite=True"):
    tfds_writer.write_dataset(tmp_path, "unit_captions", "caption", {"train": _caption_records(1)}, progress=False)
  path = tfds_writer.write_dataset(tmp_path, "unit_captions", "caption", {"train": _caption_records(1)},
                                   overwrite=True, progress=False)
  assert len(read_split(path, "train")) == 1
  assert sorted(p.name for p in (tmp_path / "unit_captions").iterdir()) == ["1.0.0"]


@pytest.mark.parametrize("kwargs, message", [
    (dict(name="Bad-Name"), "not a TFDS name"),
    (dict(name="coco_captions"), "registered TFDS dataset"),
    (dict(version="1.0"), "MAJOR.MINOR.PATCH"),
    (dict(splits={}), "no splits"),
    (dict(splits={"train": []}), "has no records"),
    (dict(shard_size=2, num_shards=2), "not both"),
    (dict(num_shards=0), "at least 1"),
    (dict(kind="video"), "unknown record kind"),
])
def test_bad_arguments_are_named(tmp_path, kwargs, message):
  arguments = dict(name="unit_captions", kind="caption", splits={"train": _caption_records(1)}) | kwargs
  with pytest.raises(ValueError, match=message):
    tfds_writer.write_dataset(tmp_path, arguments.pop("name"), arguments.pop("kind"), arguments.pop("splits"),
                              progress=False, **arguments)
  assert not (tmp_path / "unit_captions").exists() or not any((tmp_path / "unit_captions").iterdir())
