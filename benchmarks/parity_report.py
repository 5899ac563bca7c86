"""Measured agreement of the reference with transformers (and of every built backend with the reference).

Prints, for each test geometry, max |Δ logits| and max |Δ| relative to the logit scale. The tolerances the
tests enforce are chosen from these numbers.

    python benchmarks/parity_report.py
"""

from __future__ import annotations

import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
from gptj_ref.config import GPTJConfig  # noqa: E402
from gptj_ref.reference import Reference  # noqa: E402
from helpers import CONFIGS, make_hf_model, state_dict_numpy  # noqa: E402


def backends(config, weights):
    yield Reference(config, weights)
    try:
        from gptj_ref.runtime import CppModel
    except ImportError:
        return
    yield CppModel(config, weights, threads=2)


def main() -> None:
    print(f"{'geometry':<12} {'backend':<10} {'vs':<13} {'max |Δ|':>10} {'max|Δ|/scale':>13} {'scale':>8}")
    for i, (name, kwargs) in enumerate(CONFIGS.items()):
        model = make_hf_model(seed=i, **kwargs)
        config = GPTJConfig.from_hf(model.config.to_dict())
        weights = state_dict_numpy(model)
        ids = np.random.default_rng(1).integers(0, config.vocab_size, size=40)
        with torch.no_grad():
            hf = model(torch.tensor(ids[None])).logits[0].numpy()
        reference = None
        for backend in backends(config, weights):
            logits = backend.forward(ids)
            reference = logits if reference is None else reference
            for label, other in (("transformers", hf), ("reference", reference)):
                if other is logits:
                    continue
                d = float(np.abs(logits - other).max())
                scale = float(np.abs(other).max())
                print(f"{name:<12} {backend.name:<10} {label:<13} {d:10.2e} {d / scale:13.2e} {scale:8.2f}")


if __name__ == "__main__":
    import argparse

    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    main()
