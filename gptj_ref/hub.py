"""Hub-style model names ("EleutherAI/gpt-j-6B") resolved in the local Hugging Face cache, never the network.

huggingface_hub keeps downloaded repositories as

    $HF_HUB_CACHE (default $HF_HOME/hub, HF_HOME defaulting to ~/.cache/huggingface)
        models--EleutherAI--gpt-j-6B/
            refs/main                 the commit hash that "main" pointed to when it was downloaded
            snapshots/<commit>/       config.json, the weights, the tokenizer (links into blobs/)

`find_in_cache("EleutherAI/gpt-j-6B")` returns that snapshot directory (refs/main's commit, or the only
snapshot there is), or None. `revision` picks another ref or a commit hash.
"""

from __future__ import annotations

import os
import re
from typing import Optional

from .errors import CheckpointError

HUB_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


def looks_like_hub_name(path: str) -> bool:
    """ "org/name" that is not an existing path: what a user means by a Hugging Face Hub name."""
    return bool(HUB_NAME.match(path)) and not os.path.exists(path)


def hub_cache_dir() -> str:
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "huggingface"
    )
    return os.path.join(home, "hub")


def find_in_cache(name: str, revision: str = "main") -> Optional[str]:
    """The snapshot directory of `name` in the local Hugging Face cache, or None."""
    repo = os.path.join(hub_cache_dir(), "models--" + name.replace("/", "--"))
    snapshots = os.path.join(repo, "snapshots")
    ref = os.path.join(repo, "refs", revision)
    commit = revision
    if os.path.isfile(ref):
        with open(ref) as f:
            commit = f.read().strip()
    candidate = os.path.join(snapshots, commit)
    if commit and os.path.isdir(candidate) and os.path.isfile(os.path.join(candidate, "config.json")):
        return candidate
    if revision == "main" and os.path.isdir(snapshots):
        found = [d for d in sorted(os.listdir(snapshots)) if os.path.isfile(os.path.join(snapshots, d, "config.json"))]
        if len(found) == 1:
            return os.path.join(snapshots, found[0])
    return None


def resolve(name: str) -> str:
    """The local directory for a Hub name, or CheckpointError saying how to get it (nothing is downloaded)."""
    found = find_in_cache(name)
    if found is None:
        raise CheckpointError(
            f"no model at {name!r}: it is not a file or directory here, and the Hub name {name!r} is not in the "
            f"local Hugging Face cache ({hub_cache_dir()}); gptj_ref never downloads. Fetch it with "
            f"`huggingface-cli download {name}` (or `git clone https://huggingface.co/{name}`) and pass "
            "the directory, or set HF_HOME / HF_HUB_CACHE to the cache that holds it"
        )
    return found


def local_or_hub(path: str) -> str:
    """`path` when it exists; else the cached snapshot of the Hub name (org/name) it spells; else
    CheckpointError saying what a model path can be."""
    if os.path.exists(path):
        return path
    if not looks_like_hub_name(path):
        raise CheckpointError(
            f"no model at {path!r}: give a Hugging Face GPT-J directory, a native .gptj file "
            "or a Hub name (org/name) in the local Hugging Face cache"
        )
    return resolve(path)
