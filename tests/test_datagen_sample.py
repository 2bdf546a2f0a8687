"""Topic-aware sampling (spec §1 step 1) and the dataset statistics."""
from collections import Counter

import pytest

from data_gen.shards import atomic_write_json
from data_gen.steps.sample import read_round, sample_step, sample_tuples, tuple_key
from data_gen.steps.stats import dataset_stats, diversity, tokenize
from data_gen.workdir import WorkDir
from mim_jax.data.conversation import Conversation, Turn

CLUSTERS = {"0": [f"a{i:03d}" for i in range(40)], "1": [f"b{i:03d}" for i in range(320)],
            "2": [f"c{i:03d}" for i in range(31)]}


def test_tuples_come_from_one_eligible_cluster_with_2_or_3_distinct_images():
  tuples, notes = sample_tuples(CLUSTERS, 400, used=set())
  assert len(tuples) == 400 and len({tuple_key(t.pairs) for t in tuples}) == 400
  for t in tuples:
    assert len(t.pairs) in (2, 3) and len(set(t.pairs)) == len(t.pairs)
    assert set(t.pairs) <= set(CLUSTERS[t.cluster])
  sizes, clusters = Counter(len(t.pairs) for t in tuples), Counter(t.cluster for t in tuples)
  assert 150 < sizes[2] < 250 and 150 < sizes[3] < 250  # uniform over {2, 3}
  # Uniform over clusters, not proportional to their size; the 31-image cluster is never used.
  assert set(clusters) == {"0", "1"} and 150 < clusters["0"] < 250
  assert notes["clusters under 32 images"] == 1


def test_sampling_is_deterministic_in_the_seed():
  first, _ = sample_tuples(CLUSTERS, 20, used=set())
  again, _ = sample_tuples(CLUSTERS, 20, used=set())
  other, _ = sample_tuples(CLUSTERS, 20, used=set(), seed=1)
  assert first == again and first != other


def test_used_tuples_are_never_drawn_again_and_exhaustion_stops():
  small = {"0": ["x", "y", "z"]}  # 3 pairs + 1 triple = 4 distinct tuples
  used = {tuple_key(("y", "x"))}
  tuples, notes = sample_tuples(small, 10, used=used, min_cluster_size=3)
  assert sorted(tuple_key(t.pairs) for t in tuples) == [("x", "y", "z"), ("x", "z"), ("y", "z")]
  assert notes["stopped: every draw was a used tuple"] == 3 and len(used) == 4


def test_no_eligible_cluster_is_an_error_that_names_the_fix():
  with pytest.raises(ValueError, match="lower --min-cluster-size"):
    sample_tuples({"0": ["x", "y"]}, 1, used=set())


def test_rounds_persist_the_used_set_across_reruns(tmp_path):
  work = WorkDir(tmp_path)
  atomic_write_json(work.clusters, {"clusters": {"0": [f"p{i}" for i in range(32)]}})
  sample_step(work, count=300)
  sample_step(work, count=300, round_index=1)
  first, second = read_round(work, 0), read_round(work, 1)
  keys = [tuple_key(t.pairs) for t in first + second]
  assert len(keys) == 600 and len(set(keys)) == 600
  assert second[0].id == "r001-000000"
  tally, notes = sample_step(work, count=5)  # round 0 again: already sampled, unchanged
  assert notes == {"round already sampled": 1} and tally.kept == 300 and read_round(work, 0) == first


def test_tokens_and_hand_checked_statistics():
  assert tokenize("Hello, world! <image>") == ["Hello", ",", "world", "!"]
  a = Conversation((Turn("user", "a b c <image>", image_list=("1.png",)), Turn("assistant", "a b c d")))
  b = Conversation((Turn("user", "a b c"), Turn("assistant", "x y <image>", image_list=("2.png",),
                                                caption_list=("two",)), Turn("user", "hi")))
  # Position 0: "a b c" twice → distinct-2 2/4, distinct-3 1/2, no 4-grams: 1.0.
  # Position 1: "a b c d" and "x y" → every n-gram distinct: 3.0. Position 2: "hi", no n-grams: 0.
  assert diversity([a, b]) == pytest.approx(4 / 3)
  assert dataset_stats([a, b]) == {
      "conversations": 2, "turns": 5, "turns_per_conversation": 2.5, "images": 2, "images_per_conversation": 1.0,
      "images_in_user_turns": 1, "images_in_assistant_turns": 1, "words": 13, "words_per_turn": 2.6,
      "diversity": pytest.approx(4 / 3)}
