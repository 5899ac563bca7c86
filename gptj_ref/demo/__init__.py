"""The built-in models: the trained demo GPT-J shipped with the package, and the random tiny one.

`gptj_ref.load()` with no path, `gptj generate` with no --model and `pipeline("text-generation")` with no
model run the demo model: a small GPT-J trained by this project (`training/train_demo.py`) on the King
James Bible and the World English Bible, stored as the q8 native file next to this module. Its model
card is README.md in this directory.

The random tiny model (config preset "tiny", random weights from seed 0) is asked for by name,
`load("tiny-random")`: it has no file, so it exists wherever the package does, and tests that compare
with transformers on a model with no training use it.
"""

from __future__ import annotations

import os

DEMO_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "demo.gptj")
DEMO_DESCRIPTION = (
    "the built-in demo GPT-J (4 layers, width 128, trained on the King James and World English "
    "Bibles, int8; model card: gptj_ref/demo/README.md)"
)

TINY_RANDOM = "tiny-random"
TINY_RANDOM_DESCRIPTION = (
    "the random tiny GPT-J (2 layers, width 64, random weights from seed 0, real GPT-2 tokenizer): its text is nonsense"
)
