"""vLLM V1 logits processor that bans chosen tokens at the first generated position only.

vLLM V1 dropped per-request ``SamplingParams.logits_processors``; a processor class is now given to the engine
(``LLM(logits_processors=[FirstTokenBan])`` or ``vllm serve --logits-processors
magpie_exp.engines.logits:FirstTokenBan``) and reads its per-request setting from
``SamplingParams.extra_args["ban_first_token_ids"]``. Magpie uses it for Llama-3.1, whose sampled instructions
otherwise often open with a markdown header (the official ``de_md_logits_processor_for_llama3_1``).
"""

from __future__ import annotations

from typing import Any

import torch
from vllm.v1.sample.logits_processor import AdapterLogitsProcessor

EXTRA_ARG = "ban_first_token_ids"


class FirstTokenBan(AdapterLogitsProcessor):
    """Set the logits of ``extra_args['ban_first_token_ids']`` to -inf while no token has been generated."""

    def is_argmax_invariant(self) -> bool:
        return False  # it changes which token is the argmax, so greedy requests need it too

    def new_req_logits_processor(self, params: Any) -> Any:
        banned = list((params.extra_args or {}).get(EXTRA_ARG) or [])
        if not banned:
            return None

        def ban_first(output_ids: list[int], logits: torch.Tensor) -> torch.Tensor:
            if len(output_ids) == 0:
                logits[banned] = float("-inf")
            return logits

        return ban_first
