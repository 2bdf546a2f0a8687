"""MIM composition: HF Blip2 export parity on a multi-image conversation, both
checkpoint formats both ways, stage freezing, sharded == unsharded."""
import numpy as np
import optax
import pytest
import torch
import transformers
import jax
import jax.numpy as jnp

from configs import common
from mim_jax.convert.mim import load_hf_mim, load_textbind, save_hf_mim, save_textbind
from mim_jax.data.conversation import Conversation, Turn
from mim_jax.data.features import FeatureConfig, build_features
from mim_jax.data.tokenizer import Tokenizer, train_sentencepiece
from mim_jax.models.eva_vit import VisionConfig
from mim_jax.models.llama_config import LlamaConfig
from mim_jax.models.mim import MIM, MIMConfig, boxed_init_fn, init_params, pack_images
from mim_jax.models.qformer import QFormerConfig
from mim_jax.nn.sharding import DEFAULT_RULES, activation_sharding, create_mesh, sharded_init
from mim_jax.train.freeze import STAGE_TRAINABLE, trainable_mask
from mim_jax.train.loss import cross_entropy
from mim_jax.train.optimizer import make_optimizer

TEXT = [f"a photo of {n} {a} on a {b} and here is one more" for n in range(30)
        for a, b in [("cats", "sofa"), ("dogs", "chair"), ("birds", "fence")]]

CONVERSATION = Conversation((
    Turn("user", "compare <image> with <image> please", ("a.png", "b.png"), ("cats on a sofa", "dogs on a chair")),
    Turn("assistant", "the cats look calm. here is another <image> for you", ("c.png",), ("birds on a fence",)),
    Turn("user", "and one more <image>", ("d.png",), ("a photo of dogs",)),
    Turn("assistant", "that photo has dogs", (), ()),
))


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
  return Tokenizer.load(train_sentencepiece(TEXT, tmp_path_factory.mktemp("tok"), vocab_size=300))


def _config(tokenizer):
  llm = LlamaConfig(vocab_size=tokenizer.vocab_size, embed_dim=24, num_layers=2, num_heads=4, num_kv_heads=2,
                    head_dim=6, mlp_dim=48, init_std=0.3)
  return MIMConfig(llm, VisionConfig.preset("tiny"), QFormerConfig.preset("tiny", init_std=0.3))


def _params(cfg, seed=0):
  params = init_params(cfg, jax.random.key(seed))
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
  # Perturb norms and biases too, so a swapped or ignored one cannot pass.
  return jax.tree.unflatten(tree, [x + 0.1 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])


def _inputs(cfg, tokenizer, branches):
  features = build_features(CONVERSATION, tokenizer, FeatureConfig(
      max_len=160, max_images=4, num_image_tokens=cfg.num_image_tokens, caption_branches=branches))
  arrays = features.arrays()
  rows, _ = pack_images(arrays["image_valid"][None])
  size = cfg.vision.image_size
  pixels = np.random.RandomState(0).randn(int(arrays["image_valid"].sum()), size, size, 3).astype(np.float32)
  return features, arrays, rows, pixels


def _forward(cfg, params, arrays, rows, pixels, **kw):
  return MIM(cfg).apply({"params": params}, arrays["tokens"][None], arrays["positions"][None], arrays["mask"][None],
                        arrays["image_starts"][None], rows, images=pixels, **kw)


def test_logits_match_exported_hf_blip2_with_images_in_both_roles(tmp_path, tokenizer):
  cfg = _config(tokenizer)
  params = _params(cfg)
  features, arrays, rows, pixels = _inputs(cfg, tokenizer, branches=False)
  assert arrays["image_valid"].sum() == 4 and features.main_length > 4 * cfg.num_image_tokens
  ours = np.asarray(_forward(cfg, params, arrays, rows, pixels))[0, : features.main_length]

  save_hf_mim(tmp_path, cfg, params, tokenizer=tokenizer, dtype="float32")
  model = transformers.Blip2ForConditionalGeneration.from_pretrained(tmp_path).eval()
  input_ids = torch.tensor(arrays["tokens"][None, : features.main_length].astype(np.int64))
  with torch.no_grad():
    expected = model(pixel_values=torch.tensor(pixels.transpose(0, 3, 1, 2)), input_ids=input_ids).logits[0].numpy()
  assert np.abs(ours - expected).max() <= 1e-4

  cfg_back, params_back = load_hf_mim(tmp_path)
  assert cfg_back == cfg
  jax.tree.map(np.testing.assert_array_equal, params_back, jax.device_get(params))


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_textbind_state_dict_round_trip(tmp_path, tokenizer, suffix):
  cfg = _config(tokenizer)
  params = jax.device_get(_params(cfg))
  save_textbind(tmp_path / f"mim{suffix}", cfg, params, vision_path=tmp_path / f"vit{suffix}", dtype="float32")
  if suffix == ".pt":
    state = torch.load(tmp_path / "mim.pt")
    assert {"query_tokens", "qformer_projection.weight", "language_model.lm_head.weight"} <= set(state)
    assert not any(k.startswith("vision_model") for k in state)
  back = load_textbind(tmp_path / f"mim{suffix}", cfg, vision_path=tmp_path / f"vit{suffix}")
  jax.tree.map(np.testing.assert_array_equal, back, params)


def test_stages_train_only_what_they_should(tokenizer):
  cfg = _config(tokenizer)
  params = _params(cfg)
  _, arrays, rows, pixels = _inputs(cfg, tokenizer, branches=True)

  def loss(p):
    logits = _forward(cfg, p, arrays, rows, pixels)
    return cross_entropy(logits, arrays["targets"][None], arrays["weights"][None])[0]

  grads = jax.grad(loss)(params)
  norm = lambda tree: float(optax.global_norm(tree))
  assert norm(grads["image_encoder"]["vision"]) == 0.0  # frozen ViT: no gradient flows into it
  assert norm(grads["image_encoder"]["qformer"]) > 0 and norm(grads["llm"]) > 0

  for stage, llm_trains in [("stage1", False), ("stage2", True)]:
    mask = trainable_mask(params, STAGE_TRAINABLE[stage])
    optimizer = make_optimizer(common.optimizer(learning_rate=1e-2, warmup_steps=0), 100,
                               trainable=STAGE_TRAINABLE[stage])
    state = optimizer.init(params)
    updates, state = optimizer.update(grads, state, params)
    new = optax.apply_updates(params, updates)
    changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), new, params)
    assert not any(jax.tree.leaves(changed["image_encoder"]["vision"]))
    assert all(jax.tree.leaves(changed["image_encoder"]["qformer"]))
    assert changed["image_encoder"]["projection"]["kernel"] and changed["image_encoder"]["query_tokens"]
    assert all(jax.tree.leaves(changed["llm"])) == llm_trains and any(jax.tree.leaves(changed["llm"])) == llm_trains
    # Frozen params keep no Adam moments.
    state_size = sum(x.size for x in jax.tree.leaves(state))
    trainable = sum(x.size for x, m in zip(jax.tree.leaves(params), jax.tree.leaves(mask)) if m)
    assert state_size <= 2 * trainable + 8


def test_sharded_forward_backward_equals_unsharded(tokenizer):
  cfg = _config(tokenizer)
  _, arrays, rows, pixels = _inputs(cfg, tokenizer, branches=True)
  batch = {k: np.stack([v, v]) for k, v in arrays.items()}
  rows2, _ = pack_images(batch["image_valid"])
  pixels2 = np.concatenate([pixels, pixels[::-1]])

  def loss(p):
    logits = MIM(cfg).apply({"params": p}, batch["tokens"], batch["positions"], batch["mask"],
                            batch["image_starts"], rows2, images=pixels2)
    return cross_entropy(logits, batch["targets"], batch["weights"])[0]

  params = init_params(cfg, jax.random.key(0))
  expected_loss, expected_grads = jax.jit(jax.value_and_grad(loss))(params)
  mesh = create_mesh(common.mesh(ici_data=2, ici_fsdp=2, ici_tensor=2))
  sharded, _ = sharded_init(boxed_init_fn(cfg), jax.random.key(0), mesh, DEFAULT_RULES)

  def traced(p):
    with activation_sharding(mesh, DEFAULT_RULES):
      return jax.value_and_grad(loss)(p)

  got_loss, got_grads = jax.jit(traced)(sharded)
  np.testing.assert_allclose(got_loss, expected_loss, rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=2e-6), got_grads, expected_grads)
  assert any(leaf.sharding.spec != jax.sharding.PartitionSpec() for leaf in jax.tree.leaves(sharded))
