"""The 8 cleaning rules of spec §1 step 3, each broken alone, and the
conversion of a kept dialogue into the released format."""
import random

import pytest

from data_gen.clean import RULES, Cleaner, clean_generation, levenshtein
from data_gen.outcome import Rejection
from mim_jax.data.conversation import Conversation, conversation_from_json, conversation_to_json

DOG = "a brown dog running on the grass"
BALL = "a red ball lying in the park"
IMAGES = [("dog.png", DOG, "http://example.com/dog.jpg"), ("ball.png", BALL, "http://example.com/ball.jpg")]

VALID = (f"Human: Look at my dog! <img0> {DOG} </img0>\n"
         f"Assistant: What a happy dog. A toy it might like: <img1> {BALL} </img1>\n"
         "Human: Great idea, thanks.")

BREAKS = {
    "duplicate_image_tag": VALID + f"\nAssistant: Here it is again <img0> {DOG} </img0>",
    "unknown_image_index": VALID.replace("thanks.", "thanks. <img2> a cat </img2>"),
    "no_image_pair": (f"Human: Look at my dog! <img0> {DOG}\nAssistant: What a happy dog.\n"
                      "Human: Great idea, thanks."),
    "no_human": VALID.replace("Human:", "User:"),
    "too_few_messages": VALID.rsplit("\n", 1)[0],
    "caption_changed": VALID.replace(f"<img0> {DOG} </img0>", "<img0> a black cat running on the grass </img0>"),
}
ROLE_ORDER_BREAKS = {
    "starts with Assistant": VALID.replace("Human: Look", "Assistant: Look", 1),
    "two Human turns in a row": VALID.replace("Assistant: What", "Human: What"),
    "a turn with both markers": VALID.replace("Great idea, thanks.", "Great idea. Assistant: You are welcome."),
    "text before the first marker": "Here is the dialogue you asked for.\n" + VALID,
}


def test_valid_dialogue_is_kept_and_converted_to_the_released_format():
  result = clean_generation(VALID, IMAGES, name="t0")
  assert isinstance(result, Conversation), result
  assert [t.role for t in result.turns] == ["user", "assistant", "user"]
  user, assistant, _ = result.turns
  assert user.content == "Look at my dog! <image>"
  assert (user.image_list, user.caption_list, user.url_list) == (("dog.png",), (DOG,), (IMAGES[0][2],))
  assert assistant.content == "What a happy dog. A toy it might like: <image>"
  assert assistant.image_list == ("ball.png",) and assistant.caption_list == (BALL,)
  assert conversation_from_json(conversation_to_json(result)) == Conversation(result.turns)


@pytest.mark.parametrize("reason", sorted(BREAKS))
def test_each_rule_rejects_a_dialogue_that_breaks_only_it(reason):
  result = clean_generation(BREAKS[reason], IMAGES)
  assert isinstance(result, Rejection) and result.reason == reason, result
  assert result.text == BREAKS[reason]


@pytest.mark.parametrize("case", sorted(ROLE_ORDER_BREAKS))
def test_role_order_rule(case):
  result = clean_generation(ROLE_ORDER_BREAKS[case], IMAGES)
  assert isinstance(result, Rejection) and result.reason == "role_order", result


def test_duplicate_response_rule_remembers_earlier_responses():
  seen = set()
  assert isinstance(clean_generation(VALID, IMAGES, seen=seen), Conversation)
  rewrapped = VALID.replace("\n", "  \n ")
  result = clean_generation(rewrapped, IMAGES, seen=seen)
  assert isinstance(result, Rejection) and result.reason == "duplicate_response"
  assert isinstance(clean_generation(VALID.replace("thanks", "thank you"), IMAGES, seen=seen), Conversation)


def test_the_rules_cover_the_spec_and_the_cleaner_counts_each():
  assert len(RULES) == 8
  cleaner = Cleaner()
  for reason in sorted(BREAKS):
    cleaner(BREAKS[reason], IMAGES)
  cleaner(VALID, IMAGES)
  cleaner(VALID, IMAGES)
  expected = {reason: 1 for reason in BREAKS}
  expected["kept"] = 1
  expected["duplicate_response"] = 1
  assert dict(cleaner.counts) == expected


def test_lines_without_a_marker_join_the_previous_turn():
  text = VALID.replace("What a happy dog.", "What a happy dog.\nDogs love to run.\n")
  result = clean_generation(text, IMAGES)
  assert isinstance(result, Conversation) and len(result.turns) == 3
  assert "What a happy dog.\nDogs love to run." in result.turns[1].content


def test_small_caption_edits_pass_and_the_original_caption_is_kept():
  edited = DOG.replace("brown", "brwn")  # 1 edit in 32 characters
  result = clean_generation(VALID.replace(DOG, edited), IMAGES)
  assert isinstance(result, Conversation), result
  assert result.turns[0].caption_list == (DOG,)


def test_unclosed_opening_tags_are_removed_before_the_caption_rule():
  text = VALID.replace("Great idea, thanks.", "Great idea, <img1> thanks.")
  # <img1> now appears twice as an opening tag, which rule 1 rejects; an unclosed tag
  # for an image not shown elsewhere is just dropped.
  assert clean_generation(text, IMAGES).reason == "duplicate_image_tag"
  three = IMAGES + [("cat.png", "a cat on a sofa", "")]
  result = clean_generation(VALID.replace("Great idea, thanks.", "Great idea, <img2> a sleepy cat thanks."), three)
  assert isinstance(result, Conversation), result
  assert result.turns[2].content == "Great idea, a sleepy cat thanks." and result.turns[2].image_list == ()


def test_tuples_without_urls_give_empty_url_lists():
  images = [(file, caption, "") for file, caption, _ in IMAGES]
  result = clean_generation(VALID, images)
  assert all(turn.url_list == () for turn in result.turns)


def _full_levenshtein(a, b):
  previous = list(range(len(b) + 1))
  for i in range(1, len(a) + 1):
    current = [i]
    for j in range(1, len(b) + 1):
      current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (a[i - 1] != b[j - 1])))
    previous = current
  return previous[-1]


def test_banded_levenshtein_matches_the_full_table_up_to_the_limit():
  rng = random.Random(0)
  for _ in range(400):
    a = "".join(rng.choice("abc ") for _ in range(rng.randint(0, 14)))
    b = "".join(rng.choice("abc ") for _ in range(rng.randint(0, 14)))
    limit = rng.randint(0, 5)
    exact = _full_levenshtein(a, b)
    assert levenshtein(a, b, limit) == (exact if exact <= limit else limit + 1), (a, b, limit)


def test_a_literal_image_placeholder_in_the_reply_is_rejected_not_miscounted():
  result = clean_generation(VALID.replace("Great idea", "Great <image> idea"), IMAGES)
  assert isinstance(result, Rejection) and result.reason == "image_count", result
