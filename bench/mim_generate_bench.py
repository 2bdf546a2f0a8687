"""MIM generation: our MIMGenerator (prefill with an image + jitted decode loop)
vs transformers' PyTorch Blip2ForConditionalGeneration.generate, same weights,
same run, on CPU.

  python bench/mim_generate_bench.py            # LLM 512x4, ViT 384x6 on 112px, 32 queries, 128 new tokens
  python bench/mim_generate_bench.py --quick    # tiny widths, 32 new tokens (smoke run)
  python bench/mim_generate_bench.py --unrolled # our LLM with scan_layers=False (see BENCHMARKS.md: the
                                                # scanned stack copies the KV cache every token)

Workload: one user turn with one image, greedy, a fixed number of new tokens
(no stop token; our loop runs with max_images=0 so it writes text only, which
is what HF's generate can do). Ours builds the prompt through build_features
and MIM's image path, exactly as chat does; HF gets the same input ids and
pixels. Prints a markdown row for BENCHMARKS.md: time per turn, tokens/s, ratio.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
from pathlib import Path

os.environ["XLA_FLAGS"] = re.sub(r"--xla_force_host_platform_device_count=\S+", "", os.environ.get("XLA_FLAGS", ""))
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see bench/mim_bench.py
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from PIL import Image  # noqa: E402

from bench.common import machine, measure, ms, row  # noqa: E402
from mim_jax.convert.mim import load_hf_mim, save_hf_mim  # noqa: E402
from mim_jax.data.conversation import Conversation, Turn  # noqa: E402
from mim_jax.data.images import preprocess_image  # noqa: E402
from mim_jax.data.text_windows import read_text_lines  # noqa: E402
from mim_jax.data.tokenizer import Tokenizer, train_sentencepiece  # noqa: E402
from mim_jax.infer.generate import SamplingConfig  # noqa: E402
from mim_jax.infer.mim_decode import TurnLimits  # noqa: E402
from mim_jax.infer.mim_generate import MIMGenerator  # noqa: E402
from mim_jax.infer.renderers import PlaceholderRenderer  # noqa: E402
from mim_jax.models.eva_vit import VisionConfig  # noqa: E402
from mim_jax.models.llama_config import LlamaConfig  # noqa: E402
from mim_jax.models.mim import MIMConfig, init_params  # noqa: E402
from mim_jax.models.qformer import QFormerConfig  # noqa: E402



def build(quick: bool, directory: Path) -> tuple[MIMConfig, Tokenizer]:
  lines = read_text_lines()
  tokenizer = Tokenizer.load(train_sentencepiece(lines, directory / "tok", vocab_size=1000))
  if quick:
    llm = LlamaConfig(vocab_size=tokenizer.vocab_size, embed_dim=64, num_layers=2, num_heads=4, num_kv_heads=4,
                      head_dim=16, mlp_dim=128)
    vision = VisionConfig(image_size=56, embed_dim=64, num_layers=2, num_heads=4, mlp_dim=128)
    qformer = QFormerConfig(num_queries=8, embed_dim=64, num_layers=2, num_heads=4, mlp_dim=128, encoder_dim=64)
  else:
    llm = LlamaConfig(vocab_size=tokenizer.vocab_size, embed_dim=512, num_layers=4, num_heads=8, num_kv_heads=8,
                      head_dim=64, mlp_dim=1376)
    vision = VisionConfig(image_size=112, embed_dim=384, num_layers=6, num_heads=6, mlp_dim=1536)
    qformer = QFormerConfig(num_queries=32, embed_dim=384, num_layers=4, num_heads=6, mlp_dim=1536, encoder_dim=384)
  cfg = MIMConfig(llm, vision, qformer)
  save_hf_mim(directory / "mim", cfg, init_params(cfg, jax.random.key(0)), tokenizer=tokenizer, dtype="float32")
  return cfg, tokenizer


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--quick", action="store_true")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--unrolled", action="store_true", help="our LLM with scan_layers=False")
  args = parser.parse_args()
  new_tokens = 32 if args.quick else 128
  with tempfile.TemporaryDirectory() as tmp:
    cfg, tokenizer = build(args.quick, Path(tmp))
    cfg, params = load_hf_mim(Path(tmp) / "mim", llm_overrides={"scan_layers": not args.unrolled})
    hf = transformers.Blip2ForConditionalGeneration.from_pretrained(Path(tmp) / "mim").float().eval()

  image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 200, 3), np.uint8))
  prompt = Conversation((Turn("user", "describe <image> in detail please", ("photo.png",)),))
  sampling = SamplingConfig(max_new_tokens=new_tokens, stop_ids=(-1,))
  generator = MIMGenerator(cfg, jax.device_put(params), tokenizer, PlaceholderRenderer(), sampling=sampling,
                           limits=TurnLimits(max_images=0))
  ours_tokens = []

  def ours():
    ours_tokens[:] = generator.generate([prompt], [[image]])[0].token_ids

  arrays = generator.prompt_arrays([prompt], [[image]])
  ids = torch.tensor(arrays["tokens"][arrays["valid"]][None].astype(np.int64))
  pixels = torch.tensor(preprocess_image(image, cfg.vision.image_size)[None].transpose(0, 3, 1, 2))
  hf_tokens = []

  def reference():
    with torch.no_grad():
      out = hf.generate(input_ids=ids, pixel_values=pixels, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                        do_sample=False, eos_token_id=None, pad_token_id=0)
    hf_tokens[:] = out[0, -new_tokens:].tolist()

  print(machine())
  timing_ours, timing_hf = measure(ours, args.repeats), measure(reference, args.repeats)
  agree = next((i for i, (a, b) in enumerate(zip(ours_tokens, hf_tokens)) if a != b), len(ours_tokens))
  print(f"greedy tokens agree for the first {agree} of {new_tokens} (ours never samples control tokens)")
  print(row("workload", "ours (JAX)", "transformers (PyTorch)", "ours tokens/s", "speed-up"))
  print(row("---", "---", "---", "---", "---"))
  label = (f"1 turn, 1 image, {new_tokens} new tokens, scan_layers={not args.unrolled}"
           f"{' (quick)' if args.quick else ''}")
  print(row(label, ms(timing_ours.median_s), ms(timing_hf.median_s), f"{new_tokens / timing_ours.median_s:,.0f}",
            f"{timing_hf.median_s / timing_ours.median_s:.2f}x"))
  print(f"first call (compile / warm-up): ours {ms(timing_ours.first_s)}, transformers {ms(timing_hf.first_s)}")


if __name__ == "__main__":
  main()
