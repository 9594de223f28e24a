"""Write a RANDOM-WEIGHT stand-in for the Prismatic base VLM, at any preset's dimensions (real size included).

    python vla-scripts/make_random_base_vlm.py --out_dir /tmp/random-prism-qwen25 --model_preset vla-adapter-pro

What it writes (the layout `prismatic.models.loading.load_base_vlm` reads, i.e. the released
prism-qwen25-extra-dinosiglip-224px-0_5b run directory):

    <out_dir>/checkpoints/step-000000-epoch-00-loss=0.0000.pt   torch.save({"model": {"projector": {...},
                                                                 "llm_backbone": {...}, "vision_backbone": {...}}})
    <out_dir>/tokenizer.json, tokenizer_config.json, ...        a byte-level BPE tokenizer with the Qwen special
                                                                 tokens, sized to the preset's vocabulary
    <out_dir>/README.txt                                        says all of the above is random

It is NOT the released model: the weights are random (seeded) and the tokenizer is the project's small stand-in
(`prismatic.models.processing.build_tiny_tokenizer`: the Qwen special-token ids, a few hundred merges, every id
below the real 151,936-row vocabulary), so prompts tokenise into more pieces than Qwen2.5's tokenizer makes. It
exercises everything a real-size run does -- sizes, memory, speed, the checkpoint layout, the CLI -- without
the 2.5 GB download. Vision weights are included (the released base VLM has none and takes them from timm), so
no hub access is needed. --dtype bfloat16 (default) halves the file, as the released `.pt` is bf16.

Use it with `vla-scripts/finetune.py --model_preset vla-adapter-pro --vlm_path <out_dir>` (see
docs/benchmarks.md, "Real size on CPU").
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

import torch

import prismatic  # noqa: F401
from prismatic.models.config import PRESETS, get_preset
from prismatic.models.native_vlm import DEFAULT_CHECKPOINT_NAME, write_native_base_vlm
from prismatic.models.processing import build_tiny_tokenizer
from prismatic.models.vla import VLAAdapter

CHECKPOINT_NAME = DEFAULT_CHECKPOINT_NAME
DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}
README = """RANDOM-WEIGHT STAND-IN for the Prismatic base VLM (preset {preset}, seed {seed}, {dtype}).
Written by vla-scripts/make_random_base_vlm.py. Not a trained model: use it for sizes, speed, memory and
plumbing checks only. The tokenizer is the project's small byte-level stand-in, not Qwen2.5's.
"""

logger = logging.getLogger("make_random_base_vlm")


def write_random_base_vlm(out_dir: str | Path, preset: str, seed: int = 0, dtype: str = "bfloat16",
                          overwrite: bool = False) -> Path:
    """Write the stand-in directory atomically (temp dir, then rename). Returns `out_dir`."""
    out_dir = Path(out_dir)
    if dtype not in DTYPES:
        raise ValueError(f"--dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"--out_dir {out_dir} exists; pass --overwrite True to replace it")
    config = get_preset(preset)
    torch.manual_seed(seed)
    model = VLAAdapter(config, attn_implementation="sdpa")
    with tempfile.TemporaryDirectory() as tok_dir:
        tokenizer = build_tiny_tokenizer(tok_dir, vocab_size=config.llm.vocab_size)
    write_native_base_vlm(out_dir, model, tokenizer, dtype=DTYPES[dtype], checkpoint_name=CHECKPOINT_NAME,
                          extra_files={"README.txt": README.format(preset=preset, seed=seed, dtype=dtype)})
    logger.info("wrote a random %s base VLM (%s) to %s", preset, dtype, out_dir)
    return out_dir


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out_dir", required=True, help="directory to create (the --vlm_path of a fine-tune)")
    parser.add_argument("--model_preset", default="vla-adapter-pro", choices=PRESETS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", default="bfloat16", choices=sorted(DTYPES))
    parser.add_argument("--overwrite", type=lambda s: {"true": True, "false": False}[s.lower()], default=False,
                        help="True / False: replace an existing --out_dir")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    out = write_random_base_vlm(args.out_dir, args.model_preset, args.seed, args.dtype, args.overwrite)
    print(out)


if __name__ == "__main__":
    main()
