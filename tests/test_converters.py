"""Each converter on a tiny hand-written file in its public format → TFDS →
read back: turns, roles, `<image>` placement and image bytes exact, bad
records counted by reason."""
import io
import json
import tarfile

import numpy as np
import pyarrow
import pyarrow.parquet
import pytest
from PIL import Image

from mim_jax.data import convert_datasets, schema, tfds_writer
from mim_jax.data.conversation import ConversationError
from mim_jax.data.problems import ProblemCounts
from mim_jax.data.converters import (caption_tsv, common, llava, minigpt4, multiinstruct, platypus, shikra, textbind,
                                     webdataset)
from record_helpers import encoded_image, read_split


def _noise_jpeg(size=(64, 48)) -> bytes:
  pixels = np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
  buffer = io.BytesIO()
  Image.fromarray(pixels).save(buffer, "JPEG")
  return buffer.getvalue()


JPEG, PNG = _noise_jpeg(), encoded_image("PNG", "green", (200, 100))
TRUNCATED = JPEG[: len(JPEG) // 2]


def _images(folder, files: dict[str, bytes]):
  for name, data in files.items():
    (folder / name).parent.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(data)
  return folder


def _write_json(path, value, lines=False):
  path.write_text("\n".join(json.dumps(v) for v in value) if lines else json.dumps(value))
  return path


def _round_trip(tmp_path, module, input, images, kind="conversation"):
  """Converts, writes a TFDS dataset, reads it back: (records, counts)."""
  counts = ProblemCounts()
  path = tfds_writer.write_dataset(tmp_path / "data", "unit", kind,
                                   {"train": module.records(input, images, counts, "unit")}, progress=False)
  back = read_split(path, "train")
  if kind == "conversation":
    back = [(r["id"].decode(), *schema.conversation_from_record(r)) for r in back]
  return back, counts


def _roles_and_text(conversation):
  return [(t.role, t.content, t.image_list) for t in conversation.turns]


def test_llava(tmp_path):
  images = _images(tmp_path / "coco", {"a.jpg": JPEG, "bad.jpg": TRUNCATED})
  turns = [{"from": "human", "value": "<image>\nWhat is this?"}, {"from": "gpt", "value": "Noise."},
           {"from": "human", "value": "Sure?"}, {"from": "gpt", "value": "Yes."}]
  input = _write_json(tmp_path / "llava.json", [
      {"id": "1", "image": "a.jpg", "conversations": turns},
      {"id": "2", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]},
      {"id": "3", "image": "gone.jpg", "conversations": turns},
      {"id": "4", "image": "bad.jpg", "conversations": turns},
      {"id": "5", "image": "a.jpg", "conversations": turns[1:]},
      {"id": "6", "image": "a.jpg", "conversations": [{"from": "system", "value": "x"}]},
      {"id": "7", "image": "a.jpg", "conversations": turns[2:]},
      {"id": "8"},
  ])
  back, counts = _round_trip(tmp_path, llava, input, images)
  assert [b[0] for b in back] == ["1", "2"]
  _, conversation, image_bytes = back[0]
  assert _roles_and_text(conversation) == [("user", "<image>\nWhat is this?", ("a.jpg",)),
                                           ("assistant", "Noise.", ()), ("user", "Sure?", ()),
                                           ("assistant", "Yes.", ())]
  assert image_bytes == {"a.jpg": JPEG}
  assert _roles_and_text(back[1][1]) == [("user", "Hi", ()), ("assistant", "Hello", ())] and back[1][2] == {}
  assert counts.kept == 2
  assert dict(counts.skipped) == {"missing_image": 1, "bad_image": 1, "role_order": 1, "bad_role": 1,
                                  "image_count": 1, "malformed": 1}


def test_minigpt4_detail_instruction_is_seeded_by_image(tmp_path):
  _images(tmp_path / "image", {"2.jpg": JPEG, "7.jpg": JPEG})
  input = _write_json(tmp_path / "filter_cap.json", {"annotations": [
      {"image_id": "2", "caption": "A long description."}, {"image_id": "7", "caption": "Another one."},
      {"image_id": "9", "caption": "No file."}, {"image_id": "7", "caption": "  "}]})
  back, counts = _round_trip(tmp_path, minigpt4, input, None)
  assert dict(counts.skipped) == {"missing_image": 1, "empty_text": 1}
  texts = []
  for record_id, conversation, image_bytes in back:
    user, assistant = conversation.turns
    instruction = user.content.replace("<image>", "").strip()
    assert instruction in minigpt4.DETAIL_INSTRUCTIONS
    assert user.content.startswith("<image> ") or user.content.endswith(" <image>")
    assert user.image_list == (f"{record_id}.jpg",) and image_bytes == {f"{record_id}.jpg": JPEG}
    texts.append(user.content)
  assert [c.turns[1].content for _, c, _ in back] == ["A long description.", "Another one."]
  again, _ = _round_trip(tmp_path / "again", minigpt4, input, None)
  assert [c.turns[0].content for _, c, _ in again] == texts


def test_shikra_boxes_become_normalized_text(tmp_path):
  images = _images(tmp_path / "flickr", {"p.png": PNG})  # 200 x 100
  lines = [
      {"id": "s1", "img_path": "p.png", "boxes": [[20, 20, 100, 90], [0, 0, 200, 100]],
       "question": "What is <ph_st>the man<ph_ed> doing?", "question_boxes_seq": [[0]],
       "cot_with_ans": "<ph_st>The man<ph_ed> flies <ph_st>kites<ph_ed>. So the answer is flying.",
       "answer_boxes_seq": [[0], [0, 1]], "answer": "flying"},
      {"id": "s2", "img_path": "p.png", "boxes": [[0, 0, 10, 10]], "question": "Where?", "answer": "Here."},
      {"id": "s3", "img_path": "p.png", "boxes": [], "question": "<ph_st>a<ph_ed>", "question_boxes_seq": [],
       "answer": "x"},
      {"id": "s4", "img_path": "p.png", "boxes": [], "question": "<ph_st>a<ph_ed>", "question_boxes_seq": [[3]],
       "answer": "x"},
  ]
  input = tmp_path / "GPT4GEN_BoxCoT_train.jsonl"
  input.write_text("\n".join(json.dumps(line) for line in lines) + "\n{not json\n")
  back, counts = _round_trip(tmp_path, shikra, input, images)
  assert dict(counts.skipped) == {"malformed": 3}
  (_, first, image_bytes), (_, second, _) = back
  assert _roles_and_text(first) == [
      ("user", "<image>\nWhat is the man[0.100,0.200,0.500,0.900] doing?", ("p.png",)),
      ("assistant", "The man[0.100,0.200,0.500,0.900] flies kites[0.100,0.200,0.500,0.900;0.000,0.000,1.000,1.000]."
                    " So the answer is flying.", ())]
  assert image_bytes == {"p.png": PNG}
  assert second.turns[1].content == "Here."


def test_multiinstruct(tmp_path):
  images = _images(tmp_path, {"raw_datasets/coco/x.jpg": JPEG})
  prompt = "Are there any couches in the photo?\n\n[Options]: no||||yes"
  input = _write_json(tmp_path / "train.jsonl", [
      {"unique_id": "u1", "task_name": "VQA_object_presence", "image_path": "./raw_datasets/coco/x.jpg",
       "prompt": prompt, "target": "no", "target_txt": "no", "options": ["no", "yes"]},
      {"unique_id": "u2", "task_name": "t", "image_path": "raw_datasets/coco/x.jpg", "prompt": "Caption it.",
       "target_txt": "A cat."},
      {"unique_id": "u3", "task_name": "t", "image_path": "raw_datasets/coco/x.jpg", "prompt": "No target."},
  ], lines=True)
  back, counts = _round_trip(tmp_path, multiinstruct, input, images)
  assert dict(counts.skipped) == {"malformed": 1}
  assert [b[0] for b in back] == ["VQA_object_presence/u1", "t/u2"]
  assert _roles_and_text(back[0][1]) == [("user", f"<image>\n{prompt}", ("raw_datasets/coco/x.jpg",)),
                                         ("assistant", "no", ())]
  assert back[1][1].turns[1].content == "A cat." and back[1][2] == {"raw_datasets/coco/x.jpg": JPEG}


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl"])
def test_platypus_text_only(tmp_path, suffix):
  rows = [{"instruction": "Add 2 and 3.", "input": "", "output": "5", "data_source": "math"},
          {"instruction": "Translate.", "input": "Bonjour", "output": "Hello", "data_source": "mt"},
          {"instruction": "Nothing.", "input": "", "output": " ", "data_source": "x"}]
  input = tmp_path / f"open_platypus{suffix}"
  if suffix == ".parquet":
    pyarrow.parquet.write_table(pyarrow.Table.from_pylist(rows), input)
  else:
    _write_json(input, rows, lines=True)
  back, counts = _round_trip(tmp_path, platypus, input, None)
  assert dict(counts.skipped) == {"empty_text": 1}
  assert [b[0] for b in back] == ["math/0", "mt/1"]
  assert _roles_and_text(back[1][1]) == [("user", "Translate.\n\nBonjour", ()), ("assistant", "Hello", ())]
  assert back[0][2] == {}


def test_textbind_released_format(tmp_path):
  images = _images(tmp_path / "images", {"0.png": PNG, "1.jpg": JPEG})
  good = {"conversation": [
      {"role": "user", "content": "Show me a cat. <image>", "image_list": ["0.png"], "caption_list": ["green"],
       "url_list": ["http://x/0.png"]},
      {"role": "assistant", "content": "Here: <image>", "image_list": ["1.jpg"], "caption_list": ["noise"]},
      {"role": "user", "content": "And the first one?", "image_list": [], "caption_list": []}], "id": 42}
  missing = {"conversation": [{"role": "user", "content": "<image>", "image_list": ["2.png"]}]}
  uncaptioned = {"conversation": [{"role": "user", "content": "hi"},
                                  {"role": "assistant", "content": "<image>", "image_list": ["1.jpg"]}]}
  input = _write_json(tmp_path / "train.json", [good, missing, uncaptioned, {"turns": []}])
  back, counts = _round_trip(tmp_path, textbind, input, images)
  assert dict(counts.skipped) == {"missing_image": 1, "caption_count": 1, "malformed": 1}
  ((record_id, conversation, image_bytes),) = back
  assert record_id == "42" and conversation.extra == {"id": 42}
  assert conversation.turns[1].caption_list == ("noise",) and conversation.turns[0].url_list == ("http://x/0.png",)
  assert image_bytes == {"0.png": PNG, "1.jpg": JPEG}


def test_caption_tsv_either_column_order(tmp_path):
  images = _images(tmp_path / "img", {"a.jpg": JPEG, "4385058960_b0f2.jpg": PNG, "bad.jpg": TRUNCATED})
  input = tmp_path / "cc.tsv"
  input.write_text("caption\turl\n"
                   "a noisy picture\ta.jpg\n"
                   "http://static.flickr.com/2723/4385058960_b0f2.jpg\ta green field\n"
                   "nothing here\tmissing.jpg\n"
                   "broken\tbad.jpg\n"
                   "three\tfields\there\n"
                   "no image\tat all\n")
  back, counts = _round_trip(tmp_path, caption_tsv, input, images, kind="caption")
  assert [(r["caption"].decode(), r["image"]) for r in back] == [("a noisy picture", JPEG), ("a green field", PNG)]
  assert dict(counts.skipped) == {"missing_image": 1, "bad_image": 1, "malformed": 2}
  assert counts.notes["header line skipped"] == 1


def _tar(path, members: list[tuple[str, bytes]], cut_inside: str | None = None):
  """A tar of `members`; with `cut_inside`, the file ends 100 bytes into that member's data."""
  buffer = io.BytesIO()
  with tarfile.open(fileobj=buffer, mode="w") as tar:
    for name, data in members:
      info = tarfile.TarInfo(name)
      info.size = len(data)
      tar.addfile(info, io.BytesIO(data))
  data = buffer.getvalue()
  if cut_inside:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
      data = data[:tar.getmember(cut_inside).offset_data + 100]
  path.write_bytes(data)


def test_webdataset_shards(tmp_path):
  shards = tmp_path / "shards"
  shards.mkdir()
  _tar(shards / "00000.tar", [
      ("000000000.jpg", JPEG), ("000000000.txt", b"a noisy picture"), ("000000000.json", b"{}"),
      ("000000001.png", PNG), ("000000001.json", json.dumps({"caption": "green", "url": "u"}).encode()),
      ("000000002.txt", b"no image"),
      ("000000003.jpg", TRUNCATED), ("000000003.txt", b"broken"),
      ("000000004.jpg", JPEG)])
  _tar(shards / "00001.tar", [("000010000.jpg", JPEG), ("000010000.txt", b"kept before the cut"),
                              ("000010001.jpg", JPEG), ("000010001.txt", b"lost")], cut_inside="000010001.jpg")
  back, counts = _round_trip(tmp_path, webdataset, shards, None, kind="caption")
  assert [(r["id"].decode(), r["caption"].decode(), r["image"]) for r in back] == [
      ("00000.tar:000000000", "a noisy picture", JPEG), ("00000.tar:000000001", "green", PNG),
      ("00001.tar:000010000", "kept before the cut", JPEG)]
  assert dict(counts.skipped) == {"missing_image": 1, "bad_image": 1, "missing_caption": 1, "bad_shard": 1}


def test_cli_end_to_end(tmp_path, capsys):
  images = _images(tmp_path / "coco", {"a.jpg": JPEG})
  record = {"id": "1", "image": "a.jpg", "conversations": [{"from": "human", "value": "<image>\nWhat?"},
                                                          {"from": "gpt", "value": "Noise."}]}
  train = _write_json(tmp_path / "train.json", [record, {**record, "image": "x.jpg"}, {**record, "id": "2"},
                                                {**record, "id": "3"}])
  test = _write_json(tmp_path / "test.json", [{**record, "id": "t"}])
  argv = ["llava", "--input", f"train={train}", "--input", f"test={test}", "--images", str(images),
          "--out", str(tmp_path / "data"), "--max-records", "2", "--num-shards", "2"]
  assert convert_datasets.main(argv) == 0
  output = capsys.readouterr().out
  assert "[train] kept 2, skipped 1" in output and "missing_image" in output
  path = tmp_path / "data" / "llava_instruct" / "1.0.0"
  assert [r["id"] for r in read_split(path, "train")] == [b"1", b"2"]
  assert [r["id"] for r in read_split(path, "test")] == [b"t"]
  assert convert_datasets.main(argv) == 2  # exists; --overwrite needed
  assert "overwrite" in capsys.readouterr().err
  assert convert_datasets.main(["llava", "--input", str(train), "--images", str(tmp_path / "nowhere"),
                                "--out", str(tmp_path / "data"), "--name", "other"]) == 2
  assert "--images" in capsys.readouterr().err


def test_oversized_image_is_a_bad_image(monkeypatch):
  monkeypatch.setattr(common, "MAX_PIXELS", 100)
  with pytest.raises(ConversationError, match="64x48 is over 100 pixels") as error:
    common.check_image_bytes(JPEG, "x.jpg")
  assert error.value.reason == "bad_image"


def test_threads_keep_order_and_counts(tmp_path):
  images = _images(tmp_path / "img", {f"{i}.jpg": JPEG for i in range(0, 40, 3)})
  input = tmp_path / "pairs.tsv"
  input.write_text("".join(f"caption {i}\t{i}.jpg\n" for i in range(40)))
  serial, parallel = ProblemCounts(), ProblemCounts()
  expected = [r["caption"] for r in caption_tsv.records(input, images, serial, "unit")]
  assert [r["caption"] for r in caption_tsv.records(input, images, parallel, "unit", workers=4)] == expected
  assert expected == [f"caption {i}" for i in range(0, 40, 3)]
  assert (parallel.kept, parallel.skipped) == (serial.kept, serial.skipped) == (14, {"missing_image": 26})
