"""Train the built-in demo GPT-J on the King James Bible, on a CPU.

    apt-get install bible-kjv                   # Debian's KJV text (bible-kjv-text) and its reader
    pip install ".[train]"                      # torch (CPU) and transformers, training only
    python training/train_demo.py --out runs/demo --threads 1     # 32 min here; see gptj_ref/demo/README.md
    gptj convert runs/demo/hf gptj_ref/demo/demo.gptj

The model is transformers' GPTJForCausalLM (GPT-J's exact architecture) at a small width and depth, with
GPT-J's real 50400-row vocabulary and the project's own tokenizer. Everything that varies is seeded: the
initial weights come from torch's generator seeded with --seed, and batch `step` is drawn by a NumPy
generator seeded with (seed, step), so a run stopped and resumed draws the same batches as one that was not.

Files under --out:
    corpus/train.txt, corpus/heldout.txt   the split text (chapter i of the Bible is held out when i % 20 == 10)
    state.pt         model + optimizer + step, written atomically every --checkpoint-every steps; a rerun
                     with the same --out resumes from it
    loss.tsv         step, tokens seen, train loss, held-out loss (every --eval-every steps), elapsed seconds
    hf/              the final Hugging Face checkpoint (config.json + model.safetensors), written atomically

The corpus: the King James Version (1611; out of copyright, the Debian package's copyright file says so and
allows unrestricted use of the text files). Preprocessing: each chapter becomes one paragraph (verse
numbers dropped, the verses joined with spaces, the printed line breaks undone), chapters are separated by
a blank line, chapter headings ("Genesis 1") are dropped.
"""

from __future__ import annotations

import argparse
import collections
import math
import os
import re
import subprocess
import sys
import time

import numpy as np

# Books held out of training in both translations (whole books, so that no held-out chapter is trained on
# in the other translation's words).
HELDOUT_BOOKS = ("Ruth", "Jonah", "Mark", "Philippians", "James")
DEFAULT_SIZES = dict(n_embd=128, n_layer=4, n_head=4, rotary_dim=16, n_positions=256)


# -------------------------------------------------------------------------------------------------
# Corpus
# -------------------------------------------------------------------------------------------------


def _run(command: list, package: str) -> str:
    try:
        return subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=True).stdout
    except FileNotFoundError:
        sys.exit(f"the `{command[0]}` command is missing: apt-get install {package}")


def kjv_chapters() -> list:
    """The King James Version (Debian bible-kjv-text, read with its `bible` command) as (book, text) chapters."""
    raw = _run(["bible", "-m", "8192", "gen1:1-rev22:21"], "bible-kjv")
    chapters, book, verses = [], None, []
    for line in raw.splitlines():
        heading = re.fullmatch(r"((?:[1-3] )?[A-Z][A-Za-z ]+?) \d+", line.strip())  # "Genesis 1", "1 Kings 3"
        if heading:
            if verses:
                chapters.append((book, " ".join(verses)))
            book, verses = heading.group(1), []
        elif re.match(r"\s+\d+ ", line):  # "  12 And the ..."
            verses.append(line.strip().split(" ", 1)[1])
        elif line.strip():  # a verse's wrapped line
            verses[-1] += " " + line.strip()
    if verses:
        chapters.append((book, " ".join(verses)))
    return chapters


def web_chapters() -> list:
    """The World English Bible with Deuterocanon (Debian sword-text-web, read with `diatheke`) as (book,
    text) chapters, footnotes removed. Markup the plain filter leaves in a few lines is removed, so are psalm
    titles repeated on lines that are not theirs; over-long "verses" (the glossary the module appends to the
    last verse) are dropped."""
    raw = _run(
        ["diatheke", "-b", "engWEB2015eb", "-f", "plain", "-o", "f", "-k", "Genesis 1:1-Revelation 22:21"],
        "diatheke sword-text-web",
    )
    raw = re.sub(r"\s*\[\d+:\d+ [^\]]*\]\s*", " ", raw)  # footnotes, shown so that words around them keep their space
    lines = [re.sub(r"<[^>]*>", " ", line).strip() for line in raw.splitlines()]
    # The module repeats psalm titles on thousands of lines that are not theirs: a line that is not a verse
    # and occurs 40 or more times is such a title and is dropped.
    common = {line for line, n in collections.Counter(lines).items() if n >= 40}
    chapters, key, verses = [], None, []
    for line in lines:
        m = re.search(r"((?:[1-4] )?[A-Z][A-Za-z ()]+?) (\d+):\d+: ?(.*)", line)
        if m:
            if (m.group(1), m.group(2)) != key:
                if verses:
                    chapters.append((key[0], verses))
                key, verses = (m.group(1), m.group(2)), []
            verses.append(m.group(3))
        elif line and line not in common and verses and not line.startswith("(engWEB"):  # a poetry line
            verses[-1] += " " + line
    if verses:
        chapters.append((key[0], verses))
    return [(book, " ".join(v for v in verses if len(v) < 1500)) for book, verses in chapters]


def prepare_corpus(out: str):
    """Write corpus/train.txt and corpus/heldout.txt (once) and return their token ids."""
    from gptj_ref.tokenizer import END_OF_TEXT_ID, default_tokenizer

    corpus = os.path.join(out, "corpus")
    os.makedirs(corpus, exist_ok=True)
    paths = {split: os.path.join(corpus, f"{split}.txt") for split in ("train", "heldout")}
    if not all(os.path.exists(p) for p in paths.values()):
        split = {"train": [], "heldout": []}
        for book, text in kjv_chapters() + web_chapters():
            text = re.sub(r"\s+", " ", text).strip()
            if text:
                split["heldout" if book in HELDOUT_BOOKS else "train"].append(text)
        for name, path in paths.items():
            with open(path + ".tmp", "w", encoding="utf-8") as f:
                f.write("\n\n".join(split[name]) + "\n")
            os.replace(path + ".tmp", path)
    tokenizer = default_tokenizer()
    ids = {}
    for name, path in paths.items():
        with open(path, encoding="utf-8") as f:
            paragraphs = f.read().strip().split("\n\n")
        stream = []
        for p in paragraphs:  # chapters are separate documents: <|endoftext|> between them
            stream.extend(tokenizer.encode(p))
            stream.append(END_OF_TEXT_ID)
        ids[name] = np.asarray(stream, dtype=np.int64)
    return ids["train"], ids["heldout"]


def batch(tokens: np.ndarray, seed: int, step: int, batch_size: int, seq_len: int) -> np.ndarray:
    """Batch `step`: batch_size random windows of seq_len + 1 tokens, drawn from a generator seeded by (seed, step)."""
    rng = np.random.default_rng([seed, step])
    starts = rng.integers(0, len(tokens) - seq_len - 1, size=batch_size)
    return np.stack([tokens[s : s + seq_len + 1] for s in starts])


# -------------------------------------------------------------------------------------------------
# Training
# -------------------------------------------------------------------------------------------------


def build_model(args):
    import torch
    from transformers import GPTJConfig as HFConfig
    from transformers import GPTJForCausalLM

    from gptj_ref.config import GPTJConfig

    config = GPTJConfig(
        n_embd=args.n_embd,
        n_layer=args.n_layer,
        n_head=args.n_head,
        rotary_dim=args.rotary_dim,
        n_positions=args.seq_len,
    )
    torch.manual_seed(args.seed)
    hf = HFConfig(**{k: v for k, v in config.to_hf().items() if k != "architectures"})
    return GPTJForCausalLM(hf), config


class CorpusHead:
    """GPT-J's full 50400-way softmax, computed over the tokens the training text uses.

    About 14 k of the 50400 tokens occur in the training text. The rows of the others are tied for the
    whole run to one shape: weight 0 and one shared, learned bias `c` (their logit is c everywhere). The
    full softmax then has a closed form: logsumexp over the vocabulary = logsumexp(used logits,
    c + log(n_unused)), so the loss below is the exact cross-entropy of the full 50400-row model while the
    lm_head matmul costs a quarter of the full one. `finalize` writes those rows into lm_head, and the
    shipped model computes exactly the distribution that was trained.
    """

    def __init__(self, model, used_ids: np.ndarray):
        import torch

        vocab = model.lm_head.weight.shape[0]
        self.used = torch.from_numpy(np.asarray(used_ids, dtype=np.int64))
        self.n_unused = vocab - len(used_ids)
        self.index = torch.full((vocab,), len(used_ids), dtype=torch.int64)  # unused ids -> the "other" class
        self.index[self.used] = torch.arange(len(used_ids))
        self.c = torch.nn.Parameter(torch.zeros(()))
        self.model = model

    def loss(self, hidden, targets, reduction="mean"):
        """-log p(target) under the full-vocabulary softmax, from the last hidden states."""
        import torch

        head = self.model.lm_head
        used_logits = torch.nn.functional.linear(hidden, head.weight[self.used], head.bias[self.used]).float()
        other = (self.c + math.log(self.n_unused)).expand(used_logits.shape[:-1] + (1,))
        logits = torch.cat([used_logits, other], dim=-1)
        t = self.index[targets]
        nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), t.reshape(-1), reduction="none")
        # a target outside the training vocabulary has logit c, not c + log(n_unused)
        nll = nll + (t.reshape(-1) == len(self.used)).float() * math.log(self.n_unused)
        return nll.mean() if reduction == "mean" else nll.sum()

    def finalize(self) -> None:
        import torch

        with torch.no_grad():
            unused = torch.ones(self.index.shape[0], dtype=torch.bool)
            unused[self.used] = False
            self.model.lm_head.weight[unused] = 0.0
            self.model.lm_head.bias[unused] = float(self.c)


def lr_at(step: int, args) -> float:
    """Linear warm-up, then cosine decay to 10% of the peak at --steps."""
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    progress = min(1.0, (step - args.warmup) / max(1, args.steps - args.warmup))
    return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def mean_loss(model, head, tokens: np.ndarray, args, max_windows: int) -> float:
    """Mean next-token cross-entropy over non-overlapping windows of seq_len tokens (the held-out measure)."""
    import torch

    n = min(max_windows, (len(tokens) - 1) // args.seq_len)
    total, count = 0.0, 0
    model.eval()
    with torch.no_grad(), autocast(args):
        for start in range(0, n, args.batch_size):
            rows = range(start, min(n, start + args.batch_size))
            x = torch.from_numpy(np.stack([tokens[r * args.seq_len : (r + 1) * args.seq_len + 1] for r in rows]))
            hidden = model.transformer(input_ids=x[:, :-1]).last_hidden_state
            total += float(head.loss(hidden, x[:, 1:], reduction="sum"))
            count += x[:, 1:].numel()
    model.train()
    return total / count


def autocast(args):
    import contextlib

    import torch

    if args.bf16:
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def save_atomic(obj, path: str) -> None:
    import torch

    torch.save(obj, path + ".tmp")
    os.replace(path + ".tmp", path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="run directory (created; a rerun resumes from its state.pt)")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--steps", type=int, default=2000, help="length of the learning-rate schedule")
    p.add_argument("--stop-at", type=int, default=None, help="stop at this step (default: --steps)")
    p.add_argument("--minutes", type=float, default=None, help="stop after this much wall time in this process")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=DEFAULT_SIZES["n_positions"], help="also the model's n_positions")
    for name in ("n_embd", "n_layer", "n_head", "rotary_dim"):
        p.add_argument("--" + name.replace("_", "-"), type=int, default=DEFAULT_SIZES[name])
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast (AMX on Sapphire Rapids)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--eval-windows", type=int, default=32, help="held-out windows scored at each evaluation")
    p.add_argument("--checkpoint-every", type=int, default=100)
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)

    import torch
    from tqdm import tqdm

    if args.threads:
        torch.set_num_threads(args.threads)
    # (CPU kernels are deterministic for a fixed thread count; use_deterministic_algorithms only slows the
    # embedding backward)
    os.makedirs(args.out, exist_ok=True)
    train_ids, heldout_ids = prepare_corpus(args.out)
    print(f"corpus: {len(train_ids):,} training tokens, {len(heldout_ids):,} held-out tokens", file=sys.stderr)

    model, config = build_model(args)
    head = CorpusHead(model, np.unique(train_ids))
    decay = [p for n, p in model.named_parameters() if p.ndim == 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2] + [head.c]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.95),
    )
    n_params = sum(p.numel() for p in model.parameters())
    print(
        f"model: {config.n_layer} layers, width {config.n_embd}, {config.n_head} heads, rotary {config.rotary_dim}, "
        f"{n_params:,} parameters",
        file=sys.stderr,
    )

    state_path = os.path.join(args.out, "state.pt")
    loss_path = os.path.join(args.out, "loss.tsv")
    step, elapsed_before = 0, 0.0
    if os.path.exists(state_path):
        state = torch.load(state_path, weights_only=True)
        model.load_state_dict(state["model"])
        head.c.data.copy_(state["c"])
        optimizer.load_state_dict(state["optimizer"])
        step, elapsed_before = state["step"], state["elapsed"]
        print(f"resumed at step {step} ({elapsed_before:.0f} s trained before)", file=sys.stderr)
    # The loss log keeps exactly the rows of the steps the state holds.
    rows = []
    if os.path.exists(loss_path):
        with open(loss_path) as f:
            rows = [line for line in f.read().splitlines()[1:] if int(line.split("\t")[0]) < step]
    with open(loss_path + ".tmp", "w") as f:
        f.write("step\ttokens\ttrain_loss\theldout_loss\telapsed_s\n" + "".join(r + "\n" for r in rows))
    os.replace(loss_path + ".tmp", loss_path)

    stop_at = min(args.stop_at or args.steps, args.steps)
    tokens_per_step = args.batch_size * args.seq_len
    started = time.monotonic()
    bar = tqdm(total=stop_at, initial=step, disable=args.no_progress, unit="step", dynamic_ncols=True)

    def checkpoint():
        save_atomic(
            {
                "model": model.state_dict(),
                "c": head.c.detach(),
                "optimizer": optimizer.state_dict(),
                "step": step,
                "elapsed": elapsed_before + time.monotonic() - started,
            },
            state_path,
        )

    model.train()
    with open(loss_path, "a") as log:
        while step < stop_at:
            if args.minutes is not None and time.monotonic() - started > args.minutes * 60:
                print(f"\nwall budget of {args.minutes} min reached at step {step}", file=sys.stderr)
                break
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, args)
            x = torch.from_numpy(batch(train_ids, args.seed, step, args.batch_size, args.seq_len))
            with autocast(args):
                loss = head.loss(model.transformer(input_ids=x[:, :-1]).last_hidden_state, x[:, 1:])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(list(model.parameters()) + [head.c], 1.0)
            optimizer.step()
            step += 1
            heldout = ""
            if step % args.eval_every == 0 or step == args.steps:
                heldout = f"{mean_loss(model, head, heldout_ids, args, args.eval_windows):.4f}"
            elapsed = elapsed_before + time.monotonic() - started
            log.write(f"{step - 1}\t{step * tokens_per_step}\t{float(loss.detach()):.4f}\t{heldout}\t{elapsed:.1f}\n")
            log.flush()
            bar.set_postfix(loss=f"{float(loss.detach()):.3f}", heldout=heldout or "-", refresh=False)
            bar.update(1)
            if step % args.checkpoint_every == 0:
                checkpoint()
    bar.close()
    checkpoint()

    head.finalize()
    hf_dir = os.path.join(args.out, "hf")
    tmp = hf_dir + ".tmp"
    model.save_pretrained(tmp, safe_serialization=True)
    if os.path.exists(hf_dir):
        import shutil

        shutil.rmtree(hf_dir)
    os.replace(tmp, hf_dir)
    print(f"step {step}: wrote {hf_dir}; convert with: gptj convert {hf_dir} demo.gptj", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
