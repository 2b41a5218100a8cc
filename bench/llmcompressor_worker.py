"""Run one llm-compressor pruning recipe; executed inside llm-compressor's own venv by compare_llmcompressor.py.

Reads the calibration token blocks TaskPrune used (safetensors, key ``input_ids``),
prunes every decoder linear (``lm_head`` excluded: it is tied to the embeddings in
SmolLM2), times ``oneshot`` alone (model loading and saving excluded), and saves a
dense safetensors checkpoint that the main venv evaluates. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--tokens", required=True)
    parser.add_argument("--method", choices=["wanda", "sparsegpt"], required=True)
    parser.add_argument("--sparsity", type=float, required=True)
    parser.add_argument("--mask-structure", default="0:0", help="N:M such as 2:4, or 0:0 for unstructured")
    parser.add_argument("--batch-size", type=int, required=True)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.pruning import WandaPruningModifier
    from llmcompressor.modifiers.pruning.sparsegpt import SparseGPTModifier
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    ids = load_file(args.tokens)["input_ids"]
    dataset = Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": torch.ones_like(ids).tolist()})
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    common = dict(sparsity=args.sparsity, mask_structure=args.mask_structure,
                  targets=[r"re:.*layers\.\d+\.(self_attn|mlp)\..*proj$"], ignore=["lm_head"])
    recipe = (WandaPruningModifier(**common) if args.method == "wanda"
              else SparseGPTModifier(block_size=128, dampening_frac=0.01, **common))
    started = time.perf_counter()
    oneshot(model=model, dataset=dataset, recipe=recipe, num_calibration_samples=ids.shape[0],
            max_seq_length=ids.shape[1], batch_size=args.batch_size, shuffle_calibration_samples=False)
    seconds = time.perf_counter() - started
    model.save_pretrained(args.out, save_compressed=False)
    print(json.dumps({"seconds": round(seconds, 2), "threads": torch.get_num_threads(),
                      "samples": ids.shape[0], "seq_len": ids.shape[1]}))


if __name__ == "__main__":
    main()
