"""ChatSession (history, saved images, limits, user errors) and the chat CLI
on a tiny checkpoint saved in Hugging Face format, with the placeholder renderer."""
import io
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import diffusion_helpers
from helpers import bigram_mim_params, text_ids, tiny_mim_config, tiny_mim_tokenizer
from mim_jax import chat as chat_cli
from mim_jax.convert.mim import save_hf_mim
from mim_jax.infer.chat import ChatError, ChatSession
from mim_jax.infer.generate import SamplingConfig
from mim_jax.infer.mim_decode import TurnLimits
from mim_jax.infer.mim_generate import MIMGenerator
from mim_jax.infer.renderers import PlaceholderRenderer
from mim_jax.infer.sd_pipeline import StableDiffusion


@pytest.fixture(scope="module")
def model(tmp_path_factory):
  tokenizer = tiny_mim_tokenizer(tmp_path_factory.mktemp("tok"))
  cfg = tiny_mim_config(tokenizer)
  return tokenizer, cfg, bigram_mim_params(cfg, tokenizer)


@pytest.fixture
def photo(tmp_path):
  path = tmp_path / "photo.png"
  Image.fromarray(np.random.RandomState(1).randint(0, 255, (30, 20, 3), np.uint8)).save(path)
  return path


def _session(model, output_dir):
  tokenizer, cfg, params = model
  # The same shapes as test_mim_generate's, so the compiled programs are shared.
  sampling = SamplingConfig(max_new_tokens=40, stop_ids=(tokenizer.eos_id,))
  generator = MIMGenerator(cfg, params, tokenizer, PlaceholderRenderer(), sampling=sampling,
                           limits=TurnLimits(max_images=1))
  return ChatSession(generator, output_dir)


def test_session_keeps_history_and_saves_images_in_order(model, tmp_path, photo):
  tokenizer = model[0]
  session = _session(model, tmp_path / "out")
  reply = session.send("what is in <image> ?", [photo])
  d1, d2, t1, t2 = text_ids(tokenizer)
  description, text = tokenizer.decode([d1, d2]).strip(), tokenizer.decode([t1, t2]).strip()
  assert len(reply.parts) == 2 and reply.parts[1] == text
  saved = reply.parts[0]
  assert saved == tmp_path / "out" / "image_0001.png"
  assert np.array_equal(np.asarray(Image.open(saved)), np.asarray(PlaceholderRenderer()([description])[0]))
  user, assistant = session.turns
  assert user.image_list == (str(photo),) and assistant.content == f"<image> {text}"
  assert assistant.image_list == (str(saved),) and assistant.caption_list == (description,)

  # The second turn sees the whole history, the generated image included, and saves under a new name.
  second = session.send("and another one")
  assert second.parts[0] == tmp_path / "out" / "image_0002.png" and len(session.turns) == 4
  assert len(session.images) == 3
  session.reset()
  assert session.turns == [] and session.images == []


@pytest.mark.parametrize("content, count, message", [
    ("<image> " * 5, 5, "at most 4"),
    ("word " * 651, 0, "651 words"),
    ("two <image> <image>", 1, "2 <image> markers but 1 images"),
])
def test_limits_are_refused_before_generating(model, tmp_path, photo, content, count, message):
  session = _session(model, tmp_path)
  with pytest.raises(ChatError, match=message):
    session.send(content, [photo] * count)
  assert session.turns == []


def test_bad_images_are_clear_errors_and_keep_history(model, tmp_path):
  session = _session(model, tmp_path)
  with pytest.raises(ChatError, match="does not exist"):
    session.send("see <image>", [tmp_path / "missing.png"])
  broken = tmp_path / "broken.png"
  broken.write_bytes(b"\x89PNG not really")
  with pytest.raises(ChatError, match="cannot be decoded"):
    session.send("see <image>", [broken])
  with pytest.raises(ChatError, match="<start>"):
    session.send("typing <start> as text")
  assert session.turns == []


def test_cli_chats_over_stdin_with_a_saved_checkpoint(model, tmp_path, photo):
  tokenizer, cfg, params = model
  save_hf_mim(tmp_path / "ckpt", cfg, params, tokenizer=tokenizer, dtype="float32")
  stdin = io.StringIO(f"/image {photo}\nwhat is this\n/image {tmp_path / 'nope.png'}\nhello\n/reset\nhi\n/quit\nignored\n")
  stdout = io.StringIO()
  code = chat_cli.main(["--checkpoint", str(tmp_path / "ckpt"), "--renderer=placeholder", "--output",
                        str(tmp_path / "out"), "--max-new-tokens", "40", "--images-per-turn", "1"], stdin, stdout)
  lines = stdout.getvalue().splitlines()
  assert code == 0
  images = [line for line in lines if line.startswith("[image: ")]
  assert images == [f"[image: {tmp_path / 'out' / f'image_000{k}.png'}]" for k in (1, 2)]
  assert sum("nope.png does not exist" in line for line in lines) == 1
  assert "(new conversation)" in lines
  assert len(list((tmp_path / "out").iterdir())) == 2


def test_cli_help_and_startup_errors(tmp_path):
  help_text = subprocess.run([sys.executable, "-m", "mim_jax.chat", "--help"], capture_output=True, text=True,
                             check=True).stdout
  assert "NOT a diffusion model" in help_text
  with pytest.raises(SystemExit):
    chat_cli.parse_args(["--checkpoint", str(tmp_path)])  # the sd renderer needs --sd
  stderr = io.StringIO()
  sys_stderr, sys.stderr = sys.stderr, stderr
  try:
    code = chat_cli.main(["--checkpoint", str(tmp_path / "absent"), "--renderer=placeholder"], io.StringIO(), io.StringIO())
  finally:
    sys.stderr = sys_stderr
  assert code == 2 and "absent/config.json not found" in stderr.getvalue()


@pytest.mark.slow
def test_cli_renders_with_stable_diffusion(model, tmp_path):
  """The real renderer: a tiny random SD 1.x pipeline, loaded by our diffusion code."""
  tokenizer, cfg, params = model
  save_hf_mim(tmp_path / "ckpt", cfg, params, tokenizer=tokenizer, dtype="float32")
  diffusion_helpers.sd_pipeline(tmp_path / "sd")
  stdout = io.StringIO()
  code = chat_cli.main(["--checkpoint", str(tmp_path / "ckpt"), "--sd", str(tmp_path / "sd"), "--sd-steps", "2",
                        "--sd-dtype", "float32", "--output", str(tmp_path / "out"), "--max-new-tokens", "40",
                        "--images-per-turn", "1"], io.StringIO("draw something\n"), stdout)
  assert code == 0 and f"[image: {tmp_path / 'out' / 'image_0001.png'}]" in stdout.getvalue()
  d1, d2, _, _ = text_ids(tokenizer)
  expected = StableDiffusion.load(tmp_path / "sd").render([tokenizer.decode([d1, d2]).strip()], seed=42, steps=2)[0]
  assert np.array_equal(np.asarray(Image.open(tmp_path / "out" / "image_0001.png")), np.asarray(expected))
