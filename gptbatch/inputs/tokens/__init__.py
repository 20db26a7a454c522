"""Prompt-token estimates for Batch API request bodies, per endpoint and model (pure functions).

Shard packing trusts these numbers against the organisation's enqueued-token budget, so every
rule follows a published source, and wherever the source runs out the estimate errs high and
says so in a caveat:

- Chat messages: OpenAI cookbook "How to count tokens with tiktoken", `num_tokens_from_messages`
  (3 tokens per message, plus the tokens of every string field including the role, +1 when
  `name` is present, +3 to prime the reply). Its example_messages are 129 tokens with
  cl100k_base models and 124 with o200k_base ones, as verified there against the API.
- Function/tool definitions: the same cookbook, `num_tokens_for_tools` (func_init, prop_init,
  prop_key, enum_init, enum_item, func_end), whose example is 105 (cl100k) / 101 (o200k) tokens.
- Images: OpenAI "Images and vision" guide, section "Calculating costs"
  (platform.openai.com/docs/guides/images-vision#calculating-costs): 512px tiles for most
  models, 32px patches times a multiplier for gpt-4.1-mini/-nano, gpt-5-mini/-nano, o4-mini.
"""

from gptbatch.inputs.tokens.endpoints import TOKENS_PER_TOOL_CALL, Estimate, estimate_request
from gptbatch.inputs.tokens.images import image_size, image_tokens, max_image_tokens
from gptbatch.inputs.tokens.text import count_text, encoding_name_for_model

__all__ = [
    "TOKENS_PER_TOOL_CALL",
    "Estimate",
    "count_text",
    "encoding_name_for_model",
    "estimate_request",
    "image_size",
    "image_tokens",
    "max_image_tokens",
]
