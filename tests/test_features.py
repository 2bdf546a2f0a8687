"""Conversations → features: the released format, the chat template, caption
branches, masks, positions and truncation (spec §1–§3). Pure numpy."""
import json
import random

import numpy as np
import pytest

from mim_jax.data.conversation import (Conversation, ConversationError, Turn, conversation_from_json,
                                       read_conversations, write_conversations)
from mim_jax.data.problems import ProblemCounts
from mim_jax.data.features import FeatureConfig, FeatureError, build_features, iter_features, stack_features
from mim_jax.data.instructions import CAPTION_INSTRUCTIONS, caption_sample
from mim_jax.data.tokenizer import Tokenizer, train_sentencepiece

WORDS = ("the a bus red blue green park street near on cat dog sits big small old photo of city river "
         "here is another one what shown it tree house man woman").split()
SENTENCES = [
    "[INST] What is shown here? [/INST]", "It is a bus. Here is another one.", "a red bus on a street",
    "a blue bus near a park", "the old city river photo", "a small dog sits near the big tree",
]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
  rng = random.Random(0)
  texts = SENTENCES * 5 + [" ".join(rng.choice(WORDS) for _ in range(8)) for _ in range(200)]
  return Tokenizer.load(train_sentencepiece(texts, tmp_path_factory.mktemp("tok"), vocab_size=300))


def two_turns(assistant_text="It is a bus. <image> Here is another one."):
  return Conversation((
      Turn("user", "<image> What is shown here?", ["bus.png"], ["a red bus on a street"]),
      Turn("assistant", assistant_text, ["blue.png"], ["a blue bus near a park"]),
  ), name="two-turns")


def test_hand_checked_two_turn_conversation(tok):
  n = 4
  u0, u1 = tok.encode("[INST]"), tok.encode("What is shown here? [/INST]")
  a0, a1, cap = tok.encode("It is a bus."), tok.encode("Here is another one."), tok.encode("a blue bus near a park")
  img, bos, eos, start, end = [tok.image_id] * n, tok.bos_id, tok.eos_id, tok.start_id, tok.end_id
  main = [bos] + u0 + img + u1 + a0 + img + a1 + [eos]
  user_image, main_len = 1 + len(u0), len(main)
  asst_image = user_image + n + len(u1) + len(a0)
  branch = [start] + cap + [end]
  pad = 3
  t = main_len + len(branch) + pad
  config = FeatureConfig(max_len=t, max_images=3, num_image_tokens=n)
  f = build_features(two_turns(), tok, config)

  np.testing.assert_array_equal(f.tokens, main + branch + [0] * pad)
  targets = main[1:] + [0] + branch[1:] + [0] + [0] * pad
  targets[asst_image - 1] = start
  np.testing.assert_array_equal(f.targets, targets)
  weights = ([0] * (1 + len(u0))  # BOS and [INST] predict user tokens
             + [0] * n  # the user image
             + [0] * (len(u1) - 1) + [1]  # the last user token predicts the reply's first token
             + [1] * len(a0)  # reply text; its last token predicts <start>
             + [0, 0, 0, 1]  # assistant image: only its last token predicts (the next text)
             + [1] * len(a1)  # …the last predicts </s>
             + [0]  # </s> has nothing after it
             + [1] * (len(cap) + 1) + [0]  # branch: <start>→c1 … cn→<end>, <end> untrained
             + [0] * pad)
  np.testing.assert_array_equal(f.weights, weights)
  np.testing.assert_array_equal(f.positions, list(range(main_len)) + [asst_image + k for k in range(len(branch))]
                                + [0] * pad)
  mask = np.zeros((t, t), bool)
  mask[:main_len, :main_len] = np.tril(np.ones((main_len, main_len), bool))
  b0, b1 = main_len, main_len + len(branch)
  mask[b0:b1, :asst_image] = True
  mask[b0:b1, b0:b1] = np.tril(np.ones((len(branch), len(branch)), bool))
  for p in range(b1, t):
    mask[p, p] = True
  np.testing.assert_array_equal(f.mask, mask)
  np.testing.assert_array_equal(f.valid, [True] * b1 + [False] * pad)
  np.testing.assert_array_equal(f.image_starts, [user_image, asst_image, 0])
  np.testing.assert_array_equal(f.image_ids, [0, 1, -1])
  np.testing.assert_array_equal(f.image_valid, [True, True, False])
  assert f.image_files == ("bus.png", "blue.png")
  assert (f.main_length, f.length, dict(f.stats)) == (main_len, b1, {})
  for name, dtype in (("tokens", np.int32), ("targets", np.int32), ("weights", np.float32),
                      ("positions", np.int32), ("mask", np.bool_), ("image_starts", np.int32)):
    assert getattr(f, name).dtype == dtype, name

  # Whitespace around <image> does not change the ids.
  for text in ("It is a bus.<image>Here is another one.", "  It is a bus.\n\n<image>   Here is another one.\n"):
    np.testing.assert_array_equal(build_features(two_turns(text), tok, config).tokens, f.tokens)


def test_qformer_medium_branch_replaces_the_caption_branch(tok):
  """With the qformer medium an assistant image gets `[<start>, pad × N]` at
  the image's positions, untrained, and its caption becomes the target text."""
  n, prompts = 4, 3
  caption = FeatureConfig(max_len=80, max_images=3, num_image_tokens=n)
  medium = FeatureConfig(max_len=80, max_images=3, num_image_tokens=n, medium_prompt_tokens=prompts, pad_id=0)
  c, f = build_features(two_turns(), tok, caption), build_features(two_turns(), tok, medium)
  main, asst_image = c.main_length, c.image_starts[1]
  branch = slice(main, main + 1 + prompts)
  # The main sequence is the language medium's, `<start>` target included.
  for name in ("tokens", "targets", "weights", "positions"):
    np.testing.assert_array_equal(getattr(f, name)[:main], getattr(c, name)[:main])
  np.testing.assert_array_equal(f.mask[:main, :main], c.mask[:main, :main])
  np.testing.assert_array_equal(f.tokens[branch], [tok.start_id] + [0] * prompts)
  np.testing.assert_array_equal(f.positions[branch], asst_image + np.arange(1 + prompts))
  assert not f.weights[main:].any()  # nothing in a medium branch is predicted
  np.testing.assert_array_equal(f.mask[branch, :main], np.arange(main)[None, :].repeat(1 + prompts, 0) < asst_image)
  np.testing.assert_array_equal(f.mask[branch, branch], np.tri(1 + prompts, dtype=bool))
  assert f.length == main + 1 + prompts
  np.testing.assert_array_equal(f.medium_starts, [0, main + 1, 0])
  np.testing.assert_array_equal(f.medium_valid, [False, True, False])
  assert f.medium_captions == ("", "a blue bus near a park", "")
  assert not c.medium_valid.any()


def test_hand_checked_truncation(tok):
  n = 4
  u0, u1, a0 = tok.encode("[INST]"), tok.encode("What is shown here? [/INST]"), tok.encode("It is a bus.")
  cap = tok.encode("a blue bus near a park")
  asst_image = 1 + len(u0) + n + len(u1) + len(a0)
  full = build_features(two_turns(), tok, FeatureConfig(max_len=200, num_image_tokens=n))

  # A cut inside the assistant image run moves back to its start: the image and its branch go.
  f = build_features(two_turns(), tok, FeatureConfig(max_len=asst_image + 2, num_image_tokens=n))
  assert (f.main_length, f.length) == (asst_image, asst_image)
  np.testing.assert_array_equal(f.tokens[:asst_image], full.tokens[:asst_image])
  assert f.weights[asst_image - 1] == 0  # nothing after the last kept token
  np.testing.assert_array_equal(f.weights[:asst_image - 1], full.weights[:asst_image - 1])
  np.testing.assert_array_equal(f.image_valid, [True] + [False] * 7)
  assert f.image_files == ("bus.png",)
  assert f.stats == {"main_tokens_truncated": full.main_length - asst_image, "images_truncated": 1,
                     "branches_truncated": 1}
  assert f.mask[asst_image:, asst_image:].sum() == 2  # the two padding rows see only themselves

  # The main sequence fits but the branch does not: the branch is dropped and counted, <start> still trained.
  f = build_features(two_turns(), tok, FeatureConfig(max_len=full.main_length + len(cap) + 1, num_image_tokens=n))
  assert (f.main_length, f.length) == (full.main_length, full.main_length)
  assert f.stats == {"branches_over_length": 1}
  assert (f.targets[asst_image - 1], f.weights[asst_image - 1]) == (tok.start_id, 1)
  np.testing.assert_array_equal(f.image_valid[:2], [True, True])


# --- randomized properties -------------------------------------------------------------------------------------


def random_text(rng, low, high):
  return " ".join(rng.choice(WORDS) for _ in range(rng.randint(low, high)))


def random_conversation(rng, name):
  turns, count = [], 0
  for index in range(rng.randint(1, 6)):
    role = ("user", "assistant")[index % 2]
    images = rng.choice([0, 0, 1, 1, 2, 3])
    content = random_text(rng, 0, 6)
    for _ in range(images):
      content += rng.choice([" <image> ", "<image>", "\n<image>  "]) + random_text(rng, 0, 6)
    files = [f"img{count + k}.png" for k in range(images)]
    count += images
    captions = [random_text(rng, 0, 14) for _ in range(images)]
    if role == "user" and rng.random() < 0.5:
      captions = []
    turns.append(Turn(role, content, files, captions))
  return Conversation(tuple(turns), name=name)


def image_roles(conversation):
  return [(turn.role, turn.caption_list[k] if turn.role == "assistant" else None)
          for turn in conversation.turns for k in range(len(turn.image_list))]


def check_features(conversation, f, tok, config):
  t, n, m = config.max_len, config.num_image_tokens, config.max_images
  assert f.tokens.shape == f.targets.shape == f.weights.shape == f.positions.shape == f.valid.shape == (t,)
  assert f.mask.shape == (t, t) and f.image_starts.shape == f.image_ids.shape == f.image_valid.shape == (m,)
  main, length = f.main_length, f.length
  assert 1 <= main <= length <= t
  np.testing.assert_array_equal(f.valid, np.arange(t) < length)
  np.testing.assert_array_equal(f.positions[:main], np.arange(main))
  assert f.tokens[0] == tok.bos_id

  # Image slots: a prefix of the conversation's images, each a whole run; no other image tokens.
  kept = int(f.image_valid.sum())
  np.testing.assert_array_equal(f.image_valid, np.arange(m) < kept)
  np.testing.assert_array_equal(f.image_ids, np.where(np.arange(m) < kept, np.arange(m), -1))
  assert f.image_files == conversation.images[:kept]
  starts = f.image_starts[:kept]
  assert np.all(np.diff(starts) >= n)
  run_tokens = {s + q for s in starts.tolist() for q in range(n)}
  assert set(np.flatnonzero(f.tokens[:main] == tok.image_id).tolist()) == run_tokens
  assert max(run_tokens, default=-1) < main
  roles = image_roles(conversation)
  assistant_starts = [int(s) for s, (role, _) in zip(starts, roles) if role == "assistant"]

  # Main targets: the next main token, except <start> before an assistant image.
  for j in np.flatnonzero(f.weights[:main]).tolist():
    assert j + 1 < main
    if f.targets[j] == tok.start_id:
      assert j + 1 in assistant_starts
    else:
      assert f.targets[j] == f.tokens[j + 1] and f.tokens[j + 1] != tok.image_id
  for s in assistant_starts:
    assert (f.targets[s - 1], f.weights[s - 1]) == (tok.start_id, 1)
  for s in starts.tolist():
    assert not f.weights[s:s + n - 1].any()
  for j in range(main - 1):
    if f.tokens[j + 1] == tok.bos_id:
      assert f.weights[j] == 0
    if f.tokens[j + 1] == tok.eos_id:
      assert f.weights[j] == 1
  assert f.weights[main - 1] == 0

  # Branches: one per kept assistant image, in order, a prefix of them if space ran out.
  branch_starts = (main + np.flatnonzero(f.tokens[main:length] == tok.start_id)).tolist()
  assert branch_starts[0] == main if length > main else not branch_starts
  bounds = list(zip(branch_starts, branch_starts[1:] + [length]))
  assistant_captions = [(int(s), caption) for s, (role, caption) in zip(starts, roles) if role == "assistant"]
  assert len(bounds) <= len(assistant_captions)
  if not config.caption_branches:
    assert not bounds
  elif len(bounds) < len(assistant_captions):
    _, next_caption = assistant_captions[len(bounds)]
    assert length + len(tok.encode(next_caption.strip())) + 2 > t
    assert f.stats["branches_over_length"] == len(assistant_captions) - len(bounds)
  for (b0, b1), (image_start, caption) in zip(bounds, assistant_captions):
    np.testing.assert_array_equal(f.tokens[b0:b1], [tok.start_id, *tok.encode(caption.strip()), tok.end_id])
    np.testing.assert_array_equal(f.positions[b0:b1], image_start + np.arange(b1 - b0))
    np.testing.assert_array_equal(f.targets[b0:b1 - 1], f.tokens[b0 + 1:b1])
    np.testing.assert_array_equal(f.weights[b0:b1], [1] * (b1 - b0 - 1) + [0])
    for r in range(b0, b1):
      row = f.mask[r]
      assert row[:image_start].all() and not row[image_start:main].any()
      np.testing.assert_array_equal(row[b0:b1], np.arange(b0, b1) <= r)
      assert row[main:b0].all() if config.branches_see_earlier_branches else not row[main:b0].any()
      assert not row[b1:].any()

  # Main rows are causal and never see a branch; padding sees only itself.
  np.testing.assert_array_equal(f.mask[:main], np.arange(t)[None, :] <= np.arange(main)[:, None])
  np.testing.assert_array_equal(f.mask[length:], np.eye(t, dtype=bool)[length:])
  assert not f.weights[length:].any() and (f.tokens[length:] == config.pad_id).all()

  # What a causal model sees is consistent: within main and within one branch, keys come at earlier positions;
  # with the strict tree mask that holds for every valid query.
  for r in range(length):
    keys = np.flatnonzero(f.mask[r])
    keys = keys[keys != r]
    if config.branches_see_earlier_branches and r >= main:
      own_start = max(b for b in branch_starts if b <= r)
      keys = keys[(keys < main) | (keys >= own_start)]
    assert (f.positions[keys] < f.positions[r]).all(), (r, keys)


def test_random_conversations(tok):
  rng = random.Random(1234)
  skipped = 0
  for case in range(200):
    conversation = random_conversation(rng, f"random-{case}")
    config = FeatureConfig(max_len=rng.choice([12, 48, 128, 300, 600, 600]), max_images=rng.choice([3, 8]),
                           num_image_tokens=rng.choice([2, 4, 8]), caption_branches=rng.random() < 0.85,
                           branches_see_earlier_branches=rng.random() < 0.5)
    try:
      f = build_features(conversation, tok, config)
    except FeatureError as error:
      assert error.reason == "too_many_images" and "max_images" in str(error)
      skipped += 1
      continue
    check_features(conversation, f, tok, config)

    # Truncation keeps a prefix of the untruncated main sequence and cuts only at a run boundary.
    full = build_features(conversation, tok, FeatureConfig(
        max_len=4000, max_images=32, num_image_tokens=config.num_image_tokens))
    main = f.main_length
    np.testing.assert_array_equal(f.tokens[:main], full.tokens[:main])
    np.testing.assert_array_equal(f.weights[:main - 1], full.weights[:main - 1])
    np.testing.assert_array_equal(f.targets[:main - 1], full.targets[:main - 1])
    full_starts = full.image_starts[full.image_valid].tolist()
    if main < full.main_length:
      assert main == config.max_len or main in full_starts
      assert f.stats["main_tokens_truncated"] == full.main_length - main
      assert f.stats["images_truncated"] == len(full_starts) - int(f.image_valid.sum())
    else:
      assert "main_tokens_truncated" not in f.stats

    # Loss lands on every reply token and </s> once, plus one <start> per assistant image.
    replies = [turn for turn in conversation.turns if turn.role == "assistant"]
    expected = sum(sum(len(tok.encode(piece.strip())) for piece in turn.content.split("<image>"))
                   + 1 + len(turn.image_list) for turn in replies)
    assert full.weights[:full.main_length].sum() == expected
  assert 0 < skipped < 100


# --- released format -----------------------------------------------------------------------------------------


RELEASED = [
    {"conversation": [
        {"role": "user", "content": "Look at these: <image> and <image>. Which is older?",
         "image_list": ["a.png", "b.png"], "caption_list": ["an old café façade", "a new tower"],
         "url_list": ["http://x/a.jpg", "http://x/b.jpg"]},
        {"role": "assistant", "content": "The first one. Here is a similar one: <image>",
         "image_list": ["c.png"], "caption_list": ["a historic street — 漢字"], "url_list": ["http://x/c.jpg"]},
    ]},
    {"conversation": [
        {"role": "user", "content": "Hello", "image_list": [], "caption_list": [], "url_list": [],
         "turn_note": {"kept": True}},
    ], "id": 17},
]


@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
def test_released_format_round_trip(tmp_path, suffix):
  source = tmp_path / "source.json"
  source.write_text(json.dumps(RELEASED, ensure_ascii=False), encoding="utf-8")
  first = list(read_conversations(source))
  assert [c.name for c in first] == ["source.json[0]", "source.json[1]"]
  assert first[0].images == ("a.png", "b.png", "c.png")
  assert first[1].extra == {"id": 17} and first[1].turns[0].extra == {"turn_note": {"kept": True}}
  copy = tmp_path / f"copy{suffix}"
  assert write_conversations(first, copy) == 2
  again = list(read_conversations(copy))
  assert [c.turns for c in again] == [c.turns for c in first] and [c.extra for c in again] == [c.extra for c in first]
  if suffix == ".json":
    assert json.loads(copy.read_text(encoding="utf-8")) == RELEASED


# --- bad input --------------------------------------------------------------------------------------------------


def record(*turns):
  return {"conversation": [dict(role=r, content=c, image_list=i, caption_list=k) for r, c, i, k in turns]}


@pytest.mark.parametrize("bad, reason, message", [
    (record(("system", "hi", [], [])), "bad_role", r"turn 0: role 'system' is not one of"),
    (record(("user", "<image> <image>", ["a.png"], [])), "image_count",
     r"conv turn 0 \(user\): content has 2 <image> placeholders but image_list has 1"),
    (record(("user", "hi", [], []), ("assistant", "look <image>", ["a.png"], [])), "caption_count",
     r"conv turn 1 \(assistant\): caption_list has 0 captions for 1 images"),
    (record(("user", "<image>", ["a.png"], ["x", "y"])), "caption_count", "caption_list has 2 captions for 1"),
    (record(("assistant", "hi", [], [])), "role_order",
     "turn 0: role is 'assistant' .* must be 'user'; drop the leading"),
    (record(("user", "hi", [], []), ("user", "again", [], [])), "role_order",
     "turn 1: role is 'user' .* must be 'assistant'; merge"),
    ({"conversation": []}, "empty", "has no turns"),
    ({"turns": []}, "malformed", "expected an object with a 'conversation' list"),
    (record(("user", "hi", "a.png", [])), "malformed", "image_list is str, expected a list"),
])
def test_bad_conversations(bad, reason, message):
  with pytest.raises(ConversationError, match=message) as error:
    conversation_from_json(bad, name="conv")
  assert error.value.reason == reason


def test_reader_skips_and_counts_bad_records(tmp_path):
  good = record(("user", "hi", [], []), ("assistant", "hello", [], []))
  records = [good, record(("bot", "hi", [], [])), "not a record", good,
             record(("user", "<image>", [], [])), record(("assistant", "x", [], []))]
  path = tmp_path / "mixed.json"
  path.write_text(json.dumps(records))
  counts = ProblemCounts()
  kept = list(read_conversations(path, counts))
  assert [c.name for c in kept] == ["mixed.json[0]", "mixed.json[3]"]
  assert counts.kept == 2
  assert counts.skipped == {"bad_role": 1, "malformed": 1, "image_count": 1, "role_order": 1}
  assert "mixed.json[4] turn 0 (user)" in counts.first_message["image_count"]
  assert "skipped 4" in counts.summary()

  with pytest.raises(ValueError, match="top level is dict"):
    (tmp_path / "obj.json").write_text("{}")
    list(read_conversations(tmp_path / "obj.json"))
  with pytest.raises(FileNotFoundError, match="nowhere.json not found"):
    list(read_conversations(tmp_path / "nowhere.json"))
  (tmp_path / "lines.jsonl").write_text(json.dumps(good) + "\n{broken\n")
  counts = ProblemCounts()
  assert len(list(read_conversations(tmp_path / "lines.jsonl", counts))) == 1
  assert counts.skipped == {"malformed": 1} and "line 2" in counts.first_message["malformed"]


def test_feature_errors_are_counted(tok):
  many = Conversation((Turn("user", "<image> " * 3, ["a", "b", "c"]),), name="many")
  control = Conversation((Turn("user", "hi"), Turn("assistant", "bye </s> now")), name="control")
  bad_caption = Conversation((Turn("user", "hi"), Turn("assistant", "<image>", ["a"], ["x <end> y"])), name="cap")
  config = FeatureConfig(max_len=64, max_images=2, num_image_tokens=4)
  with pytest.raises(FeatureError, match=r"many: 3 images .* FeatureConfig.max_images is 2"):
    build_features(many, tok, config)
  with pytest.raises(FeatureError, match=r"control turn 1 \(assistant\): .*</s>"):
    build_features(control, tok, config)
  with pytest.raises(FeatureError, match=r"cap image 0 \(a\) caption.*<end>"):
    build_features(bad_caption, tok, config)
  counts = ProblemCounts()
  kept = list(iter_features([many, two_turns(), control, bad_caption], tok, config, counts))
  assert len(kept) == 1 and counts.kept == 1
  assert counts.skipped == {"too_many_images": 1, "control_token_in_text": 2}
  batch = stack_features(kept * 3)
  assert batch["mask"].shape == (3, 64, 64) and batch["tokens"].shape == (3, 64)
  with pytest.raises(ValueError, match="max_len is 0"):
    FeatureConfig(max_len=0)


# --- stage 1 ----------------------------------------------------------------------------------------------------


def test_caption_samples(tok):
  assert len(set(CAPTION_INSTRUCTIONS)) == 20
  samples = [caption_sample("x.png", "a red bus on a street", random.Random(seed)) for seed in range(40)]
  assert samples[:5] == [caption_sample("x.png", "a red bus on a street", random.Random(s)) for s in range(5)]
  contents = [s.turns[0].content for s in samples]
  assert any(c.startswith("<image> ") for c in contents) and any(c.endswith(" <image>") for c in contents)
  assert all(c.replace("<image>", "").strip() in CAPTION_INSTRUCTIONS for c in contents)
  f = build_features(samples[0], tok, FeatureConfig(max_len=128, num_image_tokens=4))
  assert f.length == f.main_length  # the image is an input: no branch
  assert f.weights.sum() == len(tok.encode("a red bus on a street")) + 1  # the caption and </s>
  assert f.image_files == ("x.png",) and not (f.targets == tok.start_id).any()
