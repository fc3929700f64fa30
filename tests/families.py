"""Token facts of current model families, and tokenizers built from them for the template tests.

A real tokenizer is gigabytes of vocabulary away; what Magpie's template handling depends on is smaller: which
markers of the chat template are single added tokens, whether each is flagged ``special`` (DeepSeek's
``<｜User｜>`` is not, which is what made instructions run on), whether the tokenizer adds a BOS itself
(Phi-3.5's does not), and the generation config's eos ids. ``build`` makes a byte-level tokenizer with exactly
those added tokens and flags, the family's real chat template (tests/fixtures/chat_templates) and its
generation config, saved as a model folder that ``load_side`` and ``stage=inspect`` read like any other.

Each entry names the Hugging Face repository whose ``tokenizer_config.json`` / ``generation_config.json`` it
mirrors (added tokens, their ``special`` flags, ``add_bos_token``, eos ids), as published by the model makers.
"""

from __future__ import annotations

import json
from pathlib import Path

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "chat_templates"

S, N = True, False  # added token flagged special / not special
# DeepSeek-R1 and V3.x share their tokens: the turn markers and think tags are added tokens NOT flagged special
DEEPSEEK = {"added": [("<｜begin▁of▁sentence｜>", S), ("<｜end▁of▁sentence｜>", S), ("<｜User｜>", N), ("<｜Assistant｜>", N),
                      ("<think>", N), ("</think>", N)],
            "bos": "<｜begin▁of▁sentence｜>", "eos": "<｜end▁of▁sentence｜>", "add_bos": True,
            "generation_eos": ["<｜end▁of▁sentence｜>"]}

FAMILIES: dict[str, dict] = {
    "qwen3": {"mirrors": "Qwen/Qwen3-8B", "template": "Qwen-Qwen3-0.6B.jinja",
              "added": [("<|endoftext|>", S), ("<|im_start|>", S), ("<|im_end|>", S), ("<think>", N), ("</think>", N),
                        ("<tool_call>", N), ("</tool_call>", N)],
              "bos": None, "eos": "<|im_end|>", "add_bos": False, "generation_eos": ["<|im_end|>", "<|endoftext|>"]},
    "qwen3.5": {"mirrors": "Qwen/Qwen3.5-4B", "template": "Qwen3.5-4B.jinja",
                "added": [("<|endoftext|>", S), ("<|im_start|>", S), ("<|im_end|>", S), ("<think>", N), ("</think>", N),
                          ("<tool_call>", N), ("</tool_call>", N)],
                "bos": None, "eos": "<|im_end|>", "add_bos": False, "generation_eos": ["<|im_end|>", "<|endoftext|>"]},
    "gpt-oss": {"mirrors": "openai/gpt-oss-120b", "template": "openai-gpt-oss-120b.jinja",
                "added": [("<|startoftext|>", S), ("<|endoftext|>", S), ("<|return|>", S), ("<|constrain|>", S),
                          ("<|channel|>", S), ("<|start|>", S), ("<|end|>", S), ("<|message|>", S), ("<|call|>", S)],
                "bos": "<|startoftext|>", "eos": "<|return|>", "add_bos": False,
                "generation_eos": ["<|return|>", "<|endoftext|>", "<|call|>"]},
    "deepseek-r1-distill-llama": {
        "mirrors": "deepseek-ai/DeepSeek-R1-Distill-Llama-8B", "template": "deepseek-ai-DeepSeek-R1-Distill-Llama-8B.jinja",
        **DEEPSEEK},
    "deepseek-r1-distill-qwen": {
        "mirrors": "deepseek-ai/DeepSeek-R1-Distill-Qwen-32B", "template": "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja",
        **DEEPSEEK},
    "deepseek-v3.1": {
        "mirrors": "deepseek-ai/DeepSeek-V3.1", "template": "deepseek-ai-DeepSeek-V3.1.jinja",
        **DEEPSEEK},
    "gemma-4": {"mirrors": "google/gemma-4-31B-it", "template": "google-gemma-4-31B-it.jinja",
                "added": [("<bos>", S), ("<eos>", S), ("<|turn>", S), ("<turn|>", S), ("<|channel>", S), ("<channel|>", S),
                          ("<|think|>", S), ("<|tool>", S), ("<tool|>", S)],
                "bos": "<bos>", "eos": "<turn|>", "add_bos": True, "generation_eos": ["<turn|>", "<eos>"]},
    "llama3.2": {"mirrors": "meta-llama/Llama-3.2-3B-Instruct", "template": "meta-llama-Llama-3.2-3B-Instruct.jinja",
                 "added": [("<|begin_of_text|>", S), ("<|end_of_text|>", S), ("<|start_header_id|>", S),
                           ("<|end_header_id|>", S), ("<|eot_id|>", S), ("<|eom_id|>", S), ("<|python_tag|>", S)],
                 "bos": "<|begin_of_text|>", "eos": "<|eot_id|>", "add_bos": True,
                 "generation_eos": ["<|end_of_text|>", "<|eom_id|>", "<|eot_id|>"]},
    "mistral-small-3.2": {
        "mirrors": "mistralai/Mistral-Small-3.2-24B-Instruct-2506", "template": "Mistral-Small-3.2-24B-Instruct-2506.jinja",
        "added": [("<s>", S), ("</s>", S), ("[INST]", S), ("[/INST]", S), ("[SYSTEM_PROMPT]", S), ("[/SYSTEM_PROMPT]", S),
                  ("[TOOL_CALLS]", S), ("[AVAILABLE_TOOLS]", S), ("[/AVAILABLE_TOOLS]", S)],
        "bos": "<s>", "eos": "</s>", "add_bos": True, "generation_eos": ["</s>"]},
    "granite-4": {"mirrors": "ibm-granite/granite-4.0-h-small", "template": "ibm-granite-granite-4.0.jinja",
                  "added": [("<|end_of_text|>", S), ("<|start_of_role|>", S), ("<|end_of_role|>", S), ("<|tool_call|>", S)],
                  "bos": None, "eos": "<|end_of_text|>", "add_bos": False, "generation_eos": ["<|end_of_text|>"]},
    "smollm3": {"mirrors": "HuggingFaceTB/SmolLM3-3B", "template": "HuggingFaceTB-SmolLM3-3B.jinja",
                "added": [("<|begin_of_text|>", S), ("<|end_of_text|>", S), ("<|im_start|>", S), ("<|im_end|>", S),
                          ("<think>", N), ("</think>", N)],
                "bos": None, "eos": "<|im_end|>", "add_bos": False, "generation_eos": ["<|im_end|>"]},
    "phi3.5": {"mirrors": "microsoft/Phi-3.5-mini-instruct", "template": "microsoft-Phi-3.5-mini-instruct.jinja",
               "added": [("<s>", S), ("</s>", S), ("<|endoftext|>", S), ("<|assistant|>", S), ("<|system|>", S),
                         ("<|end|>", S), ("<|user|>", S)],
               "bos": "<s>", "eos": "<|endoftext|>", "add_bos": False,
               "generation_eos": ["<|end|>", "<|assistant|>", "<|endoftext|>"]},
    "llama3.1": {"mirrors": "meta-llama/Llama-3.1-8B-Instruct", "template": "meta-llama-Llama-3.1-8B-Instruct.jinja",
                 "added": [("<|begin_of_text|>", S), ("<|end_of_text|>", S), ("<|start_header_id|>", S),
                           ("<|end_header_id|>", S), ("<|eot_id|>", S), ("<|eom_id|>", S), ("<|python_tag|>", S)],
                 "bos": "<|begin_of_text|>", "eos": "<|eot_id|>", "add_bos": True,
                 "generation_eos": ["<|end_of_text|>", "<|eom_id|>", "<|eot_id|>"]},
    "hermes-2-pro-tool-use": {
        "mirrors": "NousResearch/Hermes-2-Pro-Llama-3-8B", "template": "NousResearch-Hermes-2-Pro-Llama-3-8B-tool_use.jinja",
        "added": [("<|begin_of_text|>", S), ("<|im_start|>", S), ("<|im_end|>", S), ("<tool_call>", N), ("</tool_call>", N)],
        "bos": "<|begin_of_text|>", "eos": "<|im_end|>", "add_bos": True, "generation_eos": ["<|im_end|>"]},
}


def build(name: str, out: Path) -> Path:
    """A model folder holding a tokenizer with ``name``'s added tokens and flags, chat template and eos ids."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import GenerationConfig, PreTrainedTokenizerFast

    fam = FAMILIES[name]
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    core = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    for text, special in fam["added"]:
        token = AddedToken(text, special=special, normalized=False)
        (core.add_special_tokens if special else core.add_tokens)([token])
    if fam["add_bos"]:
        bos = fam["bos"]
        core.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A $B",
                                                            special_tokens=[(bos, core.token_to_id(bos))])
    tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token=fam["bos"], eos_token=fam["eos"])
    tok.chat_template = (FIXTURES / fam["template"]).read_text()
    folder = out / name
    tok.save_pretrained(str(folder))
    GenerationConfig(eos_token_id=[core.token_to_id(t) for t in fam["generation_eos"]],
                     bos_token_id=core.token_to_id(fam["bos"]) if fam["bos"] else None).save_pretrained(str(folder))
    # a model folder without weights: enough for everything but an engine (config.json says whose tokens these are)
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "mirrors": fam["mirrors"]}))
    return folder
