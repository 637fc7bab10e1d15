"""Train a HyperMLP Hugging Face model with ``transformers.Trainer`` on local text.

    python -m hypermlp.hf.finetune --model runs/hf --out runs/hf-tuned --steps 200
    accelerate launch --num_processes 8 -m hypermlp.hf.finetune --model runs/hf --out runs/hf-tuned --bf16
    accelerate launch --num_processes 8 --use_fsdp --fsdp_version 2 --fsdp_auto_wrap_policy TRANSFORMER_BASED_WRAP \\
        --fsdp_transformer_layer_cls_to_wrap Block -m hypermlp.hf.finetune --model runs/hf --out runs/hf-tuned --bf16

The ecosystem path beside ``hypermlp train`` (torchrun DDP, the built-in one): the model is an
``export-hf`` folder (or any ``HyperMLPForCausalLM`` folder with a tokenizer), the text a UTF-8
file or folder (default: the Python standard library, as for ``hypermlp train``), cut into
non-overlapping windows of ``--seq-len`` tokens by the folder's own tokenizer, with
``labels = input_ids`` (the model shifts them). ``accelerate launch`` decides the processes,
DDP or FSDP (whole ``Block`` s are the FSDP units: ``_no_split_modules``) and mixed precision;
the result is saved with ``save_pretrained`` beside the tokenizer, so it loads, generates and
evaluates like the input folder.
"""

from __future__ import annotations

import argparse
import math
import sys
from typing import List, Optional

import torch

__all__ = ["WindowDataset", "text_windows", "build_trainer", "main"]


class WindowDataset(torch.utils.data.Dataset):
    """(N, T) token windows as Trainer examples: ``input_ids`` and ``labels`` (the same ids)."""

    def __init__(self, windows: torch.Tensor):
        self.windows = windows

    def __len__(self) -> int:
        return self.windows.shape[0]

    def __getitem__(self, i: int) -> dict:
        w = self.windows[i]
        return {"input_ids": w, "labels": w.clone()}


def text_windows(tokenizer, path: Optional[str], seq_len: int, max_bytes: Optional[int] = None):
    """Train and validation windows (N, seq_len) of the text at ``path`` (None: the standard
    library), split by document as ``hypermlp train`` splits it, encoded with ``tokenizer``."""
    from ..data.text import _chunks, load_corpus

    corpus = load_corpus(path, tokenizer="byte", max_bytes=max_bytes)  # the split; bytes decode back to the text
    out = []
    for ids in (corpus.train, corpus.val):
        text = corpus.decode(ids)
        tokens = [i for piece in _chunks(text) for i in tokenizer(piece, add_special_tokens=False, verbose=False)["input_ids"]]
        n = len(tokens) // seq_len
        if n < 1:
            raise ValueError(f"the text gives {len(tokens)} tokens of a split, too few for one window of {seq_len}")
        out.append(torch.tensor(tokens[: n * seq_len], dtype=torch.long).view(n, seq_len))
    return out[0], out[1]


def build_trainer(model, train: torch.Tensor, out: str, steps: int, batch_size: int = 8, lr: float = 1e-3,
                  warmup_steps: int = 0, weight_decay: float = 0.1, seed: int = 0, bf16: bool = False,
                  val: Optional[torch.Tensor] = None, logging_steps: int = 10, use_cpu: bool = False, **args):
    """A ``transformers.Trainer`` for ``model`` on the windows ``train`` (AdamW, cosine schedule,
    gradient clipping 1.0; ``args``: any other ``TrainingArguments``)."""
    from transformers import Trainer, TrainingArguments

    targs = TrainingArguments(
        output_dir=out, max_steps=steps, per_device_train_batch_size=batch_size, per_device_eval_batch_size=batch_size,
        learning_rate=lr, lr_scheduler_type="cosine", warmup_steps=warmup_steps, weight_decay=weight_decay,
        max_grad_norm=1.0, seed=seed, bf16=bf16, logging_steps=logging_steps, save_strategy="no", report_to=[],
        use_cpu=use_cpu, dataloader_num_workers=0, **args,
    )
    return Trainer(model=model, args=targs, train_dataset=WindowDataset(train),
                   eval_dataset=WindowDataset(val) if val is not None else None)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m hypermlp.hf.finetune",
                                description="Train a HyperMLP Hugging Face model with transformers.Trainer.")
    p.add_argument("--model", required=True, help="a Hugging Face folder of ours with its tokenizer (hypermlp export-hf)")
    p.add_argument("--out", required=True, help="where the trained model and its tokenizer are saved")
    p.add_argument("--data", help="a UTF-8 text file or folder (default: the Python standard library sources)")
    p.add_argument("--max-bytes", type=int, help="read at most this much text")
    p.add_argument("--seq-len", type=int, help="window length (default: the model's max_len)")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=8, help="per process")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup-steps", type=int, default=0)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bf16", action="store_true", help="bf16 mixed precision (a GPU that has it)")
    p.add_argument("--cpu", action="store_true", help="train on the CPU even if a GPU is there")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = _parser().parse_args(argv)
    from transformers import AutoModelForCausalLM, AutoTokenizer  # hypermlp.hf is imported: the Auto classes know us

    for name in ("steps", "batch_size"):
        if getattr(args, name) < 1:
            raise SystemExit(f"finetune: --{name.replace('_', '-')} must be >= 1")
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, trust_remote_code=True)
    seq_len = args.seq_len or model.config.max_len
    if not 1 < seq_len <= model.config.max_len:
        raise SystemExit(f"finetune: --seq-len must lie in [2, {model.config.max_len}] (the model's max_len)")
    train, val = text_windows(tokenizer, args.data, seq_len, args.max_bytes)
    trainer = build_trainer(model, train, args.out, args.steps, batch_size=args.batch_size, lr=args.lr,
                            warmup_steps=args.warmup_steps, weight_decay=args.weight_decay, seed=args.seed,
                            bf16=args.bf16, val=val[:64], use_cpu=args.cpu)
    trainer.train()
    metrics = trainer.evaluate()
    trainer.save_model(args.out)
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(args.out)
        loss = metrics.get("eval_loss", float("nan"))
        print(f"finetune: {args.steps} steps | val loss {loss:.4f} nats/token (ppl {math.exp(min(loss, 50)):.1f}) | "
              f"saved to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
