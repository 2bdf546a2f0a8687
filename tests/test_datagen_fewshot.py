"""The rated few-shot pool, the prompt's structure, the template backend and
the determinism of generate_conversations."""
import dataclasses
import itertools
import random
from collections import Counter

import pytest

from data_gen import prompt as prompt_module
from data_gen.clean import clean_generation
from data_gen.fewshot import (
  SEED_POOL,
  Example,
  Pool,
  PoolError,
  load_pool,
  pool_from_json,
  pool_to_json,
  save_pool,
  select_examples,
)
from data_gen.generation import generate_conversations
from data_gen.llm import template as template_backend
from data_gen.llm.backends import make_client
from data_gen.prompt import build_prompt
from mim_jax.data.conversation import Conversation


def _distinct_representatives(examples):
  return any(len(set(choice)) == 3 for choice in itertools.product(*(e.categories for e in examples)))


def test_seed_pool_is_large_and_varied_enough():
  pool = load_pool()
  assert pool.version == 1 and len(pool.examples) >= 6
  assert len({c for e in pool.examples if e.rating > 0 for c in e.categories}) >= 3
  assert len(pool.rated(2)) >= 2 and len(pool.rated(1)) >= 1


def test_selection_takes_two_very_good_and_one_good_from_three_categories():
  pool = load_pool()
  chosen = [select_examples(pool, random.Random(seed)) for seed in range(200)]
  for examples in chosen:
    assert sorted(e.rating for e in examples) == [1, 2, 2]
    assert len({e.id for e in examples}) == 3
    assert _distinct_representatives(examples), [e.id for e in examples]
  assert select_examples(pool, random.Random(7)) == chosen[7]
  assert len({tuple(e.id for e in examples) for examples in chosen}) > 10
  used = Counter(e.id for examples in chosen for e in examples)
  assert set(used) == {e.id for e in pool.examples if e.rating > 0}  # every usable example gets used
  assert Counter(examples[-1].rating for examples in chosen)[2] > 0  # the rated-1 example is not always last


def _example(id, rating, categories):
  seed = load_pool().examples[0]
  return dataclasses.replace(seed, id=id, rating=rating, categories=tuple(categories))


def test_a_pool_that_cannot_satisfy_the_rule_is_refused_with_a_reason():
  same_category = Pool(2, [_example("a", 2, ["x"]), _example("b", 2, ["x"]), _example("c", 1, ["y"])])
  with pytest.raises(PoolError, match="three different categories"):
    same_category.check_selectable()
  with pytest.raises(PoolError, match="three different categories"):
    select_examples(same_category, random.Random(0))
  no_good = Pool(2, [_example("a", 2, ["x"]), _example("b", 2, ["y"]), _example("c", 0, ["z"])])
  with pytest.raises(PoolError):
    no_good.check_selectable()
  # Multi-category examples count when one category per example can be told apart.
  Pool(2, [_example("a", 2, ["x", "y"]), _example("b", 2, ["x"]), _example("c", 1, ["x", "z"])]).check_selectable()


def test_invalid_examples_are_named():
  with pytest.raises(PoolError, match="'bad'.*rating 5"):
    Pool(1, [_example("bad", 5, ["x"])])
  broken = dataclasses.replace(_example("typo", 2, ["x"]), dialogue="Human: no images here\nAssistant: ok\nHuman: ok")
  with pytest.raises(PoolError, match="'typo'.*no_image_pair"):
    Pool(1, [broken])
  with pytest.raises(PoolError, match="more than one"):
    Pool(1, [_example("twice", 2, ["x"]), _example("twice", 1, ["y"])])


def test_pool_json_round_trip_and_versions_are_never_overwritten(tmp_path):
  pool = load_pool()
  assert pool_from_json(pool_to_json(pool)) == pool
  path = save_pool(dataclasses.replace(pool, version=2), tmp_path / "pool_v2.json")
  assert load_pool(path).version == 2
  with pytest.raises(FileExistsError):
    save_pool(pool, path)
  with pytest.raises(PoolError, match="exactly the keys"):
    pool_from_json({"version": 1, "examples": [{"id": "x"}]})


def test_prompt_sections_come_in_the_spec_order():
  pool = load_pool()
  examples = select_examples(pool, random.Random(0))
  captions = ["a lighthouse on a rocky coast", "a bowl of clam chowder"]
  text = build_prompt(captions, examples)
  order = [prompt_module.TASK, prompt_module.NOTATION, prompt_module.IMAGES_HEADER,
           prompt_module.ASSISTANT_ABILITIES, prompt_module.HUMAN_BEHAVIOUR, prompt_module.QUALITY,
           prompt_module.EXAMPLES_HEADER, examples[0].dialogue, examples[1].dialogue, examples[2].dialogue,
           prompt_module.CONSTRAINTS, prompt_module.REMINDER]
  positions = [text.index(section) for section in order]
  assert positions == sorted(positions)
  allowed = text[text.index(prompt_module.IMAGES_HEADER):text.index(prompt_module.ASSISTANT_ABILITIES)]
  assert "<img0> a lighthouse on a rocky coast </img0>\n<img1> a bowl of clam chowder </img1>" in allowed
  assert "fewer than 6 turns" in text and "the first image" in text
  assert text.count("Input images:") == 3 and text.count("Output conversation:") == 3


@pytest.mark.parametrize("count", [2, 3])
def test_template_backend_output_passes_cleaning(count):
  assert "NOT a language model" in template_backend.__doc__
  assert "NOT a language model" in template_backend.TemplateClient.__doc__
  captions = ["A man fishing from a small boat.", "a heron standing in shallow water", "sunrise over a misty lake"]
  images = [(f"{i}.png", caption, "") for i, caption in enumerate(captions[:count])]
  for seed in range(20):
    text = template_backend.compose_dialogue([c for _, c, _ in images], random.Random(seed))
    result = clean_generation(text, images)
    assert isinstance(result, Conversation), result
    assert len(result.turns) < 6 and len(result.images) == count


def _tuples(count):
  return [(f"t{i}", [(f"{i}{j}.png", f"picture {j} of set {i}: a {('cat', 'boat', 'tree')[j]} in the rain", "")
                     for j in range(2 + i % 2)]) for i in range(count)]


def test_generation_is_deterministic_given_the_seed():
  pool, client = load_pool(), make_client({"backend": "template", "concurrency": 4})
  first = generate_conversations(_tuples(12), pool, client, seed=5)
  again = generate_conversations(list(reversed(_tuples(12))), pool, client, seed=5)
  other = generate_conversations(_tuples(12), pool, client, seed=6)
  assert all(first[i] == again[i] for i in first)  # by id, whatever the order of the tuples
  assert any(first[i].example_ids != other[i].example_ids for i in first)
  assert all(o.kept for o in first.values())
  with pytest.raises(ValueError, match="unique"):
    generate_conversations(_tuples(2) + _tuples(1), pool, client, seed=5)


def test_the_seed_pool_file_is_the_default():
  assert load_pool(SEED_POOL) == load_pool()
  assert isinstance(load_pool().examples[0], Example)
