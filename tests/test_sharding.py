"""Sharded forward/backward equals unsharded on 8 emulated devices; params
carry the shardings the rules say; meshes are checked."""
import ml_collections
import numpy as np
import pytest
import jax
from jax.sharding import PartitionSpec as P

from configs import common
from mim_jax.models.llama import Llama, boxed_init_fn, init_params
from mim_jax.models.llama_config import LlamaConfig
from mim_jax.nn.sharding import DEFAULT_RULES, activation_sharding, create_mesh, create_mesh_devices, logical_to_spec, sharded_init
from mim_jax.train.loss import lm_loss
from mim_jax.train.state import batch_sharding

CFG = LlamaConfig(vocab_size=259, embed_dim=64, num_layers=2, num_heads=8, num_kv_heads=4, head_dim=8, mlp_dim=128,
                  init_std=0.2)


def _mesh(data, fsdp, tensor):
  return create_mesh(common.mesh(ici_data=data, ici_fsdp=fsdp, ici_tensor=tensor))


def _loss_and_grads(params, batch, mesh=None):
  fn = jax.value_and_grad(lambda p: lm_loss(Llama(CFG), p, batch)[0])
  if mesh is None:
    return jax.jit(fn)(params)

  def traced(p):
    with activation_sharding(mesh, DEFAULT_RULES):
      return fn(p)

  return jax.jit(traced)(params)


@pytest.fixture(scope="module")
def reference():
  rng = np.random.RandomState(0)
  tokens = rng.randint(0, CFG.vocab_size, (8, 17))
  batch = {"tokens": tokens[:, :-1], "targets": tokens[:, 1:], "weights": rng.rand(8, 16).astype(np.float32)}
  params = init_params(CFG, jax.random.key(0))
  return batch, params, _loss_and_grads(params, batch)


@pytest.mark.parametrize("shape", [(8, 1, 1), (1, 8, 1), (2, 2, 2)])
def test_sharded_forward_backward_equals_unsharded(reference, shape):
  batch, _, (loss, grads) = reference
  mesh = _mesh(*shape)
  params, shardings = sharded_init(boxed_init_fn(CFG), jax.random.key(0), mesh, DEFAULT_RULES)
  batch = jax.device_put(batch, batch_sharding(mesh, DEFAULT_RULES))
  sharded_loss, sharded_grads = _loss_and_grads(params, batch, mesh)
  np.testing.assert_allclose(sharded_loss, loss, rtol=1e-6)
  for path, got in jax.tree_util.tree_leaves_with_path(sharded_grads):
    want = reference[2][1]
    for key in path:
      want = want[key.key]
    np.testing.assert_allclose(got, want, atol=2e-6, err_msg=jax.tree_util.keystr(path))
  # Params live where the rules put them.
  data, fsdp, tensor = shape
  q_spec = params["layers"]["attn"]["q_kernel"].sharding.spec
  assert q_spec == P(None, "fsdp" if fsdp > 1 else None, "tensor" if tensor > 1 else None, None)
  # 259 (vocab) divides by nothing: that dimension stays replicated, embed still shards.
  assert params["embedding"].sharding.spec == P(None, "fsdp" if fsdp > 1 else None)
  assert shardings["layers"]["mlp"]["down_kernel"].spec == P(None, "tensor" if tensor > 1 else None,
                                                              "fsdp" if fsdp > 1 else None)


def test_logical_to_spec_drops_used_and_non_dividing_axes():
  mesh = _mesh(2, 2, 2)
  assert logical_to_spec(("batch", "length", "act_embed"), (8, 4, 64), mesh, DEFAULT_RULES) == P(("data", "fsdp"), None, None)
  assert logical_to_spec(("batch",), (6,), mesh, DEFAULT_RULES) == P("data")  # 6 % 4 != 0: keep data only
  with pytest.raises(KeyError, match="no rule"):
    logical_to_spec(("nonsense",), (8,), mesh, DEFAULT_RULES)


def test_mesh_fill_and_errors():
  assert dict(_mesh(2, -1, 2).shape) == {"data": 2, "fsdp": 2, "tensor": 2}
  with pytest.raises(ValueError, match=r"ici_data\(2\)\*ici_fsdp\(2\)\*ici_tensor\(1\) = 4 does not match 3"):
    create_mesh(common.mesh(ici_data=2, ici_fsdp=2, ici_tensor=1), jax.devices()[:3])
  with pytest.raises(ValueError, match="at most one may be -1"):
    create_mesh(common.mesh(ici_data=-1, ici_fsdp=-1))
  with pytest.raises(ValueError, match="not a multiple"):
    create_mesh(common.mesh(ici_data=3, ici_fsdp=-1))


class FakeSliceDevice:
  """A CPU device that claims a TPU slice index (multislice without TPUs)."""

  def __init__(self, device, slice_index):
    self.device, self.slice_index = device, slice_index
    self.id, self.process_index, self.platform = device.id, device.process_index, device.platform

  def __getattr__(self, name):
    return getattr(self.device, name)


def test_multislice_mesh_puts_dcn_axis_across_slices():
  # Fake two slices of 4 devices each: the data axis (dcn_data=2) must split them.
  slice_of = {d.id: i // 4 for i, d in enumerate(jax.devices())}
  devices = [FakeSliceDevice(d, slice_of[d.id]) for d in jax.devices()]
  config = ml_collections.ConfigDict(dict(ici_data=1, ici_fsdp=4, ici_tensor=1, dcn_data=2, dcn_fsdp=1, dcn_tensor=1))
  mesh_devices = create_mesh_devices(config, devices)
  grid = np.vectorize(lambda d: d.slice_index)(mesh_devices)
  assert mesh_devices.shape == (2, 4, 1)
  assert (grid[0] == 0).all() and (grid[1] == 1).all()
