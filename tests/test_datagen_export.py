"""Generation resumes without loss or duplication; the export reads back
through TFDS and the released JSON re-imports to the same conversations."""
import csv
import json
import random
import re
import shutil

import tensorflow as tf
import tensorflow_datasets as tfds

from data_gen.__main__ import main
from data_gen.fewshot import SEED_POOL, load_pool
from data_gen.generated import read_generated, record_conversation
from data_gen.llm.backends import make_client
from data_gen.llm.template import compose_dialogue
from data_gen.shards import jsonl_text
from data_gen.splits import split_indices
from data_gen.steps.export import export_step, released_json
from data_gen.steps.generate import generate_step
from data_gen.steps.sample import ImageTuple, round_path, sample_step
from data_gen.steps.tfds import released_tfds
from data_gen.workdir import WorkDir
from datagen_fixtures import encoded, ingested_work
from mim_jax.data.conversation import conversation_from_json, conversation_to_json, read_conversations
from mim_jax.data.schema import conversation_from_record
from mim_jax.llm.client import Completion, LLMConfig


class SameDialogueClient:
  """Replies with one dialogue per caption list, whatever the request id, so
  two tuples of the same images get the same reply (rule 4's case)."""

  def __init__(self):
    self.config = LLMConfig(backend="template", concurrency=1)
    self.requested = []

  async def __aenter__(self):
    return self

  async def __aexit__(self, *exc_info):
    return None

  async def complete(self, request):
    self.requested.append(request.id)
    return Completion(compose_dialogue(request.captions, random.Random(0)), "stop", 1)


def _shards(work):
  return {path.name: path.read_bytes() for path in sorted(work.conversations.iterdir())}


def test_generate_resumes_mid_shard_and_replays_rule_4(tmp_path):
  clean = ingested_work(tmp_path / "clean", pairs=8)
  tuples = [ImageTuple(f"r000-{i:06d}", "0", pairs) for i, pairs in enumerate(
      [("p000000000", "p000000001"), ("p000000002", "p000000003"), ("p000000004", "p000000005"),
       ("p000000000", "p000000001"), ("p000000006", "p000000007")])]
  round_path(clean, 0).parent.mkdir(parents=True)
  round_path(clean, 0).write_text(jsonl_text(t.to_json() for t in tuples))
  tally, _ = generate_step(clean, SameDialogueClient(), load_pool(), shard_size=2)
  assert tally.kept == 4 and dict(tally.skipped) == {"duplicate_response": 1}

  crashed = WorkDir(tmp_path / "crashed")
  shutil.copytree(clean.root, crashed.root)
  second = crashed.conversations / "round-000-shard-00001.jsonl"
  kept_record = second.read_text().splitlines(keepends=True)[0]
  second.unlink()
  (crashed.conversations / "round-000-shard-00002.jsonl").unlink()
  # A kill after the first record of shard 1 was written and mid-way through the second.
  (crashed.conversations / "round-000-shard-00001.jsonl.partial").write_text(kept_record + kept_record[:40])
  # Earlier kill windows: after shard 0 was written but before its log was removed, and mid atomic write.
  (crashed.conversations / "round-000-shard-00000.jsonl.partial").write_text(kept_record)
  (crashed.conversations / ".round-000-shard-00002.jsonl.x1y2.tmp").write_text("{")
  client = SameDialogueClient()
  resumed, notes = generate_step(crashed, client, load_pool(), shard_size=2)
  assert client.requested == ["r000-000003", "r000-000004"]  # nothing asked twice
  assert notes["shards done before this run"] == 1
  assert resumed == tally  # r000-000003 still rejected: shard 0's reply was replayed
  assert _shards(crashed) == _shards(clean)


def test_export_reads_back_through_tfds_and_json(tmp_path):
  work = ingested_work(tmp_path, pairs=40)
  sample_step(work, count=12)
  generate_step(work, make_client({"backend": "template"}), load_pool(), shard_size=5)
  tally, notes = export_step(work)
  generated = [conversation_to_json(record_conversation(r)) for r in read_generated(work) if r["kept"]]
  assert tally.kept == len(generated) == 12
  assert notes == {"train split": 6, "valid split": 3, "test split": 3, "tfds rebuilt": 1}

  out = work.export
  imported = [conversation_to_json(c) for c in read_conversations(out / "conversations.json")]
  assert imported == generated
  splits = split_indices(len(generated))
  for name, indices in splits.items():
    assert [conversation_to_json(c) for c in read_conversations(out / f"{name}.json")] == [
        generated[i] for i in indices]

  builder = tfds.builder("textbind", data_dir=str(out / "tfds"))
  for name, indices in splits.items():
    dataset = builder.as_dataset(split=name, decoders={"images": tfds.decode.SkipDecoding()})
    read = {}
    for example in dataset:
      example = tf.nest.map_structure(lambda t: t.numpy(), example)
      conversation, images = conversation_from_record(example)
      read[example["id"].decode()] = conversation_to_json(conversation)
      assert images == {n: (work.images / n).read_bytes() for n in conversation.images}
    assert read == {f"{name}-{j}": generated[i] for j, i in enumerate(indices)}

  assert export_step(work)[1]["tfds rebuilt"] == 0  # unchanged input: the dataset is kept


def test_released_format_round_trips_unknown_keys():
  record = {"conversation": [
      {"role": "user", "content": "look <image>", "image_list": ["a.png"], "caption_list": ["a cat"],
       "url_list": ["http://x/a.jpg"], "mood": "curious"},
      {"role": "assistant", "content": "a cat", "image_list": [], "caption_list": [], "url_list": []}],
      "source": "released"}
  text = released_json([conversation_from_json(record)])
  assert json.loads(text) == [record]


def test_tfds_drops_conversations_with_missing_images(tmp_path):
  good = {"conversation": [{"role": "user", "content": "<image>", "image_list": ["a.png"]},
                           {"role": "assistant", "content": "ok"}]}
  missing = {"conversation": [{"role": "user", "content": "<image>", "image_list": ["gone.png"]},
                              {"role": "assistant", "content": "ok"}]}
  (tmp_path / "images").mkdir()
  (tmp_path / "images" / "a.png").write_bytes(encoded("PNG"))
  (tmp_path / "conversations.json").write_text(json.dumps([good, missing, {"bad": 1}]))
  tally, notes = released_tfds(tmp_path / "conversations.json", tmp_path / "images", tmp_path / "tfds")
  assert notes == {"train split": 1} and tally.kept == 1
  assert dict(tally.skipped) == {"missing_image": 1, "malformed": 1}


def test_split_sizes():
  assert [len(v) for v in split_indices(1000).values()] == [800, 100, 100]
  assert [len(v) for v in split_indices(12).values()] == [6, 3, 3]
  assert [len(v) for v in split_indices(3).values()] == [3, 0, 0]
  parts = split_indices(1000)
  assert sorted(sum(parts.values(), [])) == list(range(1000)) and parts == split_indices(1000)


def test_released_data_to_tfds_from_the_command_line(tmp_path, capsys):
  images = tmp_path / "released_images"
  images.mkdir()
  records = []
  for i in range(8):
    (images / f"{i}.png").write_bytes(encoded("PNG", color=(i * 30, 0, 0)))
    records.append({"conversation": [
        {"role": "user", "content": f"photo {i} <image>", "image_list": [f"{i}.png"], "caption_list": [],
         "url_list": []},
        {"role": "assistant", "content": f"reply {i}", "image_list": [], "caption_list": [], "url_list": []}]})
  records[3]["conversation"][0]["image_list"] = ["absent.png"]
  (tmp_path / "train.json").write_text(json.dumps(records))
  assert main(["tfds", "--work", str(tmp_path / "out"), "--json", str(tmp_path / "train.json"),
               "--images", str(images)]) == 0
  table = capsys.readouterr().out
  assert re.search(r"skipped: missing_image +1 ", table) and re.search(r"train split +7\n", table)
  dataset = tfds.builder("textbind", data_dir=str(tmp_path / "out" / "tfds")).as_dataset(split="all")
  assert sorted(example["id"].numpy().decode() for example in dataset) == [f"train-{i}" for i in (0, 1, 2, 4, 5, 6, 7)]


def test_annotation_round_trip_from_the_command_line(tmp_path, capsys):
  work = ingested_work(tmp_path, pairs=40)
  sample_step(work, count=4)
  generate_step(work, make_client({"backend": "template"}), load_pool(), shard_size=5)
  assert main(["annotate-export", "--work", str(work.root)]) == 0
  path = work.root / "annotation" / "round-000.csv"
  rows = list(csv.DictReader(path.open(newline="")))
  assert [row["id"] for row in rows] == [f"r000-{i:06d}" for i in range(4)]
  rows[0].update(rating="very good", categories="shapes")
  rows[1].update(rating="good", categories="colors")
  with path.open("w", newline="") as handle:
    writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
  assert main(["annotate-import", "--work", str(work.root), "--out-pool", str(tmp_path / "pool-v2.json")]) == 0
  assert re.search(r"skipped: unrated +2 ", capsys.readouterr().out)
  seed, new = load_pool(SEED_POOL), load_pool(tmp_path / "pool-v2.json")
  assert new.version == seed.version + 1 and len(new.examples) == len(seed.examples) + 2
