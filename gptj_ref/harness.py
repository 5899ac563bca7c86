"""lm-evaluation-harness adapter: gptj_ref as the lm-eval model "gptj_ref".

Importing this module registers the model (it needs the `eval` extra: `pip install ".[eval]"`):

    import lm_eval
    import gptj_ref.harness  # noqa: F401  (registers "gptj_ref")
    results = lm_eval.simple_evaluate(model="gptj_ref", model_args="pretrained=gpt-j-6B.gptj,backend=cpp",
                                      tasks=["lambada_openai"])

model_args: pretrained (a Hugging Face GPT-J directory or a native .gptj file; none = the built-in demo
model), backend (auto | reference | cpp), threads, kv_dtype. The context is the model's (n_positions).

The framing is that of lm-eval's `hf` model, so the same checkpoint gives the same numbers: pairs are
tokenized by lm-eval's own TemplateLM code, a pair longer than the context keeps its last max_length + 1
tokens, rolling log-likelihoods use lm-eval's disjoint windows after <|endoftext|>, and generation is
greedy unless the task asks to sample, cut at the task's stop strings.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import lm_eval.models  # noqa: F401  (registers lm-eval's own models first: get_model only does so for an empty registry)
from lm_eval import utils as lm_utils
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import (
    handle_stop_sequences,
    normalize_gen_kwargs,
    postprocess_generated_text,
)
from tqdm import tqdm

from .api import load
from .scoring import score_pairs, sum_scores

NAME = "gptj_ref"
DEFAULT_MAX_GEN_TOKENS = 256  # as lm-eval's hf model


@register_model(NAME)
class GPTJRefLM(TemplateLM):
    """A gptj_ref model (any backend) behind lm-eval's LM interface."""

    def __init__(
        self,
        pretrained: Optional[str] = None,
        backend: str = "auto",
        threads: Optional[int] = None,
        kv_dtype: Optional[str] = None,
        batch_size=None,
        model=None,
        **unused,
    ):
        """`model` may be an already loaded gptj_ref.Model (then pretrained/backend/threads are unused).
        batch_size is accepted for lm-eval's command line and ignored: pairs that share a context are
        batched by the scorer itself."""
        super().__init__()
        self.model = (
            model
            if model is not None
            else load(pretrained, backend=backend, threads=None if threads is None else int(threads), kv_dtype=kv_dtype)
        )
        self._max_length = self.model.config.n_positions

    # The pieces TemplateLM needs -----------------------------------------------------------------------
    @property
    def eot_token_id(self) -> int:
        return self.model.tokenizer.eos_token_id

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def tokenizer_name(self) -> str:
        return f"gptj_ref:{self.model.description}"

    def tok_encode(self, string: str, add_special_tokens=None, **kwargs) -> List[int]:
        return self.model.tokenizer.encode(string)

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> List[Tuple[float, bool]]:
        """requests: ((context, continuation), context ids, continuation ids) -> (log-likelihood, is_greedy)."""
        pairs = [(ctx, cont) for _, ctx, cont in requests]  # cut to the context by score_pairs, as hf cuts
        with tqdm(total=len(pairs), disable=disable_tqdm or None, desc="gptj_ref loglikelihood") as bar:
            results = sum_scores(score_pairs(self.model.backend, pairs, progress=bar.update))
        for (texts, _, _), result in zip(requests, results):
            if texts is not None:
                self.cache_hook.add_partial("loglikelihood", texts, result)
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> List[float]:
        """Log-likelihood of each whole text after <|endoftext|>, in lm-eval's disjoint windows."""
        out = []
        for request in tqdm(requests, disable=disable_tqdm or None, desc="gptj_ref loglikelihood_rolling"):
            (text,) = request.args
            windows = [
                lm_utils.make_disjoint_window(w)
                for w in lm_utils.get_rolling_token_windows(
                    token_list=self.tok_encode(text),
                    prefix_token=self.prefix_token_id,
                    max_seq_len=self._max_length,
                    context_len=1,
                )
            ]
            total = sum(ll for ll, _ in sum_scores(score_pairs(self.model.backend, windows))) if windows else 0.0
            self.cache_hook.add_partial("loglikelihood_rolling", (text,), total)
            out.append(total)
        return out

    def generate_until(self, requests, disable_tqdm: bool = False) -> List[str]:
        out = []
        eos_text = self.model.tokenizer.decode([self.eot_token_id])
        for request in tqdm(requests, disable=disable_tqdm or None, desc="gptj_ref generate_until"):
            context, gen_kwargs = request.args
            kwargs = normalize_gen_kwargs(dict(gen_kwargs), DEFAULT_MAX_GEN_TOKENS)
            until = handle_stop_sequences(kwargs.pop("until", None), eos=eos_text)
            max_new = int(kwargs.pop("max_gen_toks"))
            ids = self.tok_encode(context)[-max(1, self._max_length - max_new) :]
            settings = dict(max_new_tokens=max_new, stop=tuple(u for u in until if u))
            if kwargs.get("do_sample"):
                settings.update(
                    do_sample=True,
                    temperature=float(kwargs.get("temperature") or 1.0),
                    top_k=int(kwargs.get("top_k", 0) or 0),
                    top_p=float(kwargs.get("top_p", 1.0) or 1.0),
                )
            new = self.model.generate_ids(ids, **settings)
            text = postprocess_generated_text(self.model.tokenizer.decode(new), until, None)
            self.cache_hook.add_partial("generate_until", (context, gen_kwargs), text)
            out.append(text)
        return out
