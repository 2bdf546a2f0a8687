"""A MIM export used the way transformers users call it: the chat template gives
build_features' ids, AutoProcessor gives our pixels and ids, and the README's
recipe (run as written) gives our greedy tokens."""
import re
from pathlib import Path

import jax
import jinja2
import numpy as np
import pytest
import transformers
from PIL import Image

from helpers import bigram_mim_params, tiny_mim_config, tiny_mim_tokenizer
from mim_jax.convert.mim import save_hf_mim
from mim_jax.data.conversation import Conversation, Turn
from mim_jax.data.features import FeatureConfig, build_features
from mim_jax.data.images import preprocess_image
from mim_jax.data.tokenizer import Tokenizer
from mim_jax.infer.generate import SamplingConfig
from mim_jax.infer.mim_generate import MIMGenerator
from mim_jax.infer.renderers import PlaceholderRenderer
from mim_jax.models.mim import init_params

README = Path(__file__).parents[1] / "README.md"
README_EXPORT = '"/tmp/mim_stage2_hf"'
PHOTO = Image.fromarray(np.random.RandomState(0).randint(0, 255, (40, 30, 3), np.uint8))

TWO_TURNS = {
    "text": Conversation((Turn("user", "a photo of cats"), Turn("assistant", "dogs on a chair"))),
    "images": Conversation((
        Turn("user", "<image>compare it with  <image> please", ("a.png", "b.png")),
        Turn("assistant", "here is one <image> and one more<image>", ("c.png", "d.png"), ("cats", "dogs")),
    )),
}


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
  return tiny_mim_tokenizer(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def export(tokenizer, tmp_path_factory):
  cfg = tiny_mim_config(tokenizer)
  params = jax.device_get(init_params(cfg, jax.random.key(0)))
  return save_hf_mim(tmp_path_factory.mktemp("export"), cfg, params, tokenizer=tokenizer, dtype="float32"), cfg


def _main_ids(conversation, tokenizer, cfg):
  features = build_features(conversation, tokenizer, FeatureConfig(
      max_len=256, num_image_tokens=cfg.num_image_tokens, caption_branches=False))
  return features.tokens[:features.main_length].tolist()


def _messages(conversation):
  return [{"role": turn.role, "content": turn.content} for turn in conversation.turns]


@pytest.mark.parametrize("name", sorted(TWO_TURNS))
def test_chat_template_ids_equal_build_features(export, tokenizer, name):
  directory, cfg = export
  hf = transformers.AutoTokenizer.from_pretrained(directory)
  conversation = TWO_TURNS[name]
  full = hf.apply_chat_template(_messages(conversation), tokenize=True, return_dict=False)
  assert full == _main_ids(conversation, tokenizer, cfg)

  prompt = Conversation(conversation.turns[:1])
  expected = _main_ids(prompt, tokenizer, cfg)
  assert hf.apply_chat_template(_messages(prompt), add_generation_prompt=True, tokenize=True,
                                return_dict=False) == expected
  assert full[:len(expected)] == expected
  assert full.count(tokenizer.image_id) == cfg.num_image_tokens * len(conversation.images)


def test_chat_template_follows_a_legacy_tokenizer(tokenizer, tmp_path):
  """Llama's legacy tokenizers mark a leading space after every special token,
  new ones only at the start of the text; transformers 5 loads a saved legacy
  one as a new one, and the template must fit what users load."""
  tokenizer.save_pretrained(tmp_path / "tok")
  legacy = Tokenizer(transformers.AutoTokenizer.from_pretrained(tmp_path / "tok", legacy=True), "legacy")
  probe = "<image>x"
  assert legacy.hf(probe, add_special_tokens=False)["input_ids"] != tokenizer.hf(probe, add_special_tokens=False)["input_ids"]
  cfg = tiny_mim_config(legacy)
  directory = save_hf_mim(tmp_path / "export", cfg, jax.device_get(init_params(cfg, jax.random.key(0))),
                          tokenizer=legacy, dtype="float32")
  hf = transformers.AutoTokenizer.from_pretrained(directory)
  conversation = TWO_TURNS["images"]
  assert hf.apply_chat_template(_messages(conversation), tokenize=True, return_dict=False) == _main_ids(
      conversation, legacy, cfg)


def test_processor_gives_our_ids_and_pixels(export, tokenizer):
  directory, cfg = export
  processor = transformers.AutoProcessor.from_pretrained(directory)
  assert type(processor).__name__ == "Blip2Processor" and processor.num_query_tokens == 0
  config = transformers.AutoConfig.from_pretrained(directory)
  assert config.image_token_id == tokenizer.image_id and config.num_query_tokens == cfg.num_image_tokens

  # Typed parts, as multimodal chat messages are written, give the same prompt as <image> markers.
  parts = [{"role": "user", "content": [{"type": "text", "text": "compare "}, {"type": "image"},
                                        {"type": "text", "text": " with this"}, {"type": "image"}]}]
  prompt = processor.tokenizer.apply_chat_template(parts, add_generation_prompt=True, tokenize=False)
  inputs = processor(images=[PHOTO, PHOTO.rotate(90)], text=prompt, add_special_tokens=False, return_tensors="np")
  conversation = Conversation((Turn("user", "compare <image> with this <image>", ("a.png", "b.png")),))
  assert inputs["input_ids"][0].tolist() == _main_ids(conversation, tokenizer, cfg)
  ours = np.stack([preprocess_image(image, cfg.vision.image_size) for image in (PHOTO, PHOTO.rotate(90))])
  np.testing.assert_allclose(inputs["pixel_values"], ours.transpose(0, 3, 1, 2), atol=1e-6)


def test_chat_template_refuses_a_system_prompt(export):
  hf = transformers.AutoTokenizer.from_pretrained(export[0])
  messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
  with pytest.raises(jinja2.TemplateError, match="no system prompt; message 0 has role system"):
    hf.apply_chat_template(messages, tokenize=False)


def _readme_recipe() -> str:
  section = README.read_text().split("### Running a MIM export with transformers", 1)[1]
  code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
  assert len([line for line in code.splitlines() if line.strip()]) <= 10 and code.count(README_EXPORT) == 1
  return code


@pytest.mark.parametrize("model", ["random", "describes"])
def test_readme_recipe_generates_our_greedy_tokens(tokenizer, tmp_path, monkeypatch, model):
  """`random`: a random tiny MIM, where the image and every position matter;
  `describes`: one that answers `<start> d1 d2 <end>`, which transformers
  emits as tokens (ours then renders the image and goes on; compared up to `<end>`)."""
  cfg = tiny_mim_config(tokenizer)
  params = (bigram_mim_params(cfg, tokenizer) if model == "describes"
            else jax.device_get(init_params(cfg, jax.random.key(3))))
  save_hf_mim(tmp_path / "export", cfg, params, tokenizer=tokenizer, dtype="float32")
  PHOTO.save(tmp_path / "photo.png")
  monkeypatch.chdir(tmp_path)
  recipe = {}
  exec(_readme_recipe().replace(README_EXPORT, repr(str(tmp_path / "export"))), recipe)
  theirs = recipe["out"][0, recipe["inputs"]["input_ids"].shape[1]:].tolist()

  prompt = Conversation((Turn("user", "<image> What is in this picture?", ("photo.png",)),))
  sampling = SamplingConfig(max_new_tokens=32, stop_ids=(tokenizer.eos_id,))
  generator = MIMGenerator(cfg, params, tokenizer, PlaceholderRenderer(), sampling=sampling)
  ours = generator.generate([prompt], [[Image.open(tmp_path / "photo.png")]])[0].token_ids
  assert recipe["inputs"]["input_ids"][0].tolist() == _main_ids(prompt, tokenizer, cfg)
  cut = ours.index(tokenizer.end_id) + 1 if tokenizer.end_id in ours else len(ours)
  assert len(ours) >= 4 and theirs[:cut] == ours[:cut]
  if model == "describes":
    assert ours[0] == tokenizer.start_id and cut == 4
