"""What the CLI tests share: a small corpus and the arguments of a tiny LM run (the checks that a
folder was left alone and that an error is one line are in tests/helpers.py)."""


TEXT = "".join(f"def f{i}(x):\n    return x * {i} + {i % 7}\n\n" for i in range(400))


def lm_args(corpus, out, *extra):
    return ["train", "--task", "lm", "--data", corpus, "--seq-len", "32", "--d-model", "32", "--steps", "12",
            "--batch-size", "8", "--lr", "3e-3", "--warmup-steps", "2", "--max-len", "64", "--out", str(out),
            "--data-arg", "eval_windows=4", *extra]


