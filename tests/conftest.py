"""Shared test fixtures: small random GPT-J models made and saved by transformers."""

from __future__ import annotations

import pytest

from helpers import CONFIGS, make_hf_model, state_dict_numpy


@pytest.fixture(scope="session")
def hf_models():
    """name -> (transformers model, gptj_ref config, fp32 weights) for every geometry in CONFIGS."""
    from gptj_ref.config import GPTJConfig

    models = {}
    for i, (name, kwargs) in enumerate(CONFIGS.items()):
        model = make_hf_model(seed=i, **kwargs)
        models[name] = (model, GPTJConfig.from_hf(model.config.to_dict()), state_dict_numpy(model))
    return models


@pytest.fixture(scope="session")
def hf_checkpoint_dir(tmp_path_factory):
    """A transformers `save_pretrained` directory (safetensors) of the 'rot-lt-head' geometry."""
    model = make_hf_model(seed=7, **CONFIGS["rot-lt-head"])
    path = tmp_path_factory.mktemp("hf-ckpt")
    model.save_pretrained(path)
    return path
