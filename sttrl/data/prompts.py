"""Prompt templates per model family, as the TTRL paper used them, all in one place.

The instruction is "Please reason step by step, and put your final answer within \\boxed{}."
(for GPQA it asks for the option letter instead). Where it goes depends on the family:

  qwen-math  Qwen2.5-Math: chat template, instruction as the system prompt, question as the user turn.
  qwen       Qwen2.5 base: plain text "question\\ninstruction\\n". A base model has seen no chat
             turns in pre-training, so a continuation of plain text is what it handles best.
  llama      Llama-3.1-Instruct: chat template, user turn "question\\ninstruction".
  smollm     SmolLM2: chat template, user turn "question\\ninstruction".
  default    anything else: like llama when the tokenizer has a chat template, else plain text.
  plain      any base model: plain text, as for Qwen2.5 base. A run whose tokenizer has no chat
             template gets this family whatever the model's name (`settle_family`).

A chat family whose tokenizer has no chat template also falls back to plain text here; a run
refuses one asked for by name (`settle_family`).
Chat templates may write special tokens into the text (Llama's <|begin_of_text|>); use
`encode_prompt` to turn the text into ids without doubling them.
"""
from __future__ import annotations

from sttrl.types import Question
from sttrl.errors import UserError

# Variant 0 is the paper's wording; the others say the same thing in other words, for methods
# (MEMO) that need several phrasings of one prompt. Every variant keeps the \boxed{} request
# so the same answer extraction works for all of them.
MATH_INSTRUCTIONS = (
    "Please reason step by step, and put your final answer within \\boxed{}.",
    "Think through the problem carefully, then write your final answer within \\boxed{}.",
    "Solve this one step at a time and give the final answer inside \\boxed{}.",
    "Explain your reasoning step by step. Put the final result in \\boxed{}.",
)
GPQA_INSTRUCTIONS = (
    "Please reason step by step, and put the letter of your final answer (A, B, C or D) within \\boxed{}.",
    "Think through the question carefully, then write the letter of your chosen option (A, B, C or D) within \\boxed{}.",
    "Solve this one step at a time and give the letter of the correct option (A, B, C or D) inside \\boxed{}.",
    "Explain your reasoning step by step. Put the letter of the final answer (A, B, C or D) in \\boxed{}.",
)
# ARITH-TTT (generated arithmetic) asks for the boxed answer with no "reason step by step": a
# one-digit sum needs no reasoning, and the 135M default model's step-by-step text wanders off
# to other numbers: on the first 10 questions pass@1 is 0.275 with the step-by-step wording and
# 0.450 without, maj@8 0.60 vs 0.80 (scripts/prompt_check.py; docs/RESULTS.md).
ARITH_INSTRUCTIONS = (
    "Put your final answer within \\boxed{}.",
    "Write the final answer within \\boxed{}.",
    "Give only the result, inside \\boxed{}.",
    "Answer with the number in \\boxed{}.",
)
NUM_VARIANTS = len(MATH_INSTRUCTIONS)

# family -> where the instruction goes: "system" prompt, appended to the "user" turn, or "plain" text
FAMILIES = {"qwen-math": "system", "qwen": "plain", "llama": "user", "smollm": "user", "default": "user",
            "plain": "plain"}


def model_family(model_name_or_path: str) -> str:
    """Pick the template family from a model id or local path (case-insensitive substrings)."""
    name = str(model_name_or_path).lower()
    if "qwen2.5-math" in name:
        return "qwen-math"
    if "qwen" in name:
        # instruct-tuned Qwen models expect their chat template, so they get the default family
        return "default" if "instruct" in name else "qwen"
    if "llama" in name:
        return "llama"
    if "smollm" in name:
        return "smollm"
    return "default"


def settle_family(family: str, chosen: bool, chat_template: bool, model: str) -> str:
    """The family a run uses once its tokenizer is known. A tokenizer without a chat template
    belongs to a base model, which has seen no chat turns, so a guessed family becomes plain
    text; a chat family asked for by name (`chosen`) is refused rather than silently dropped."""
    if chat_template or FAMILIES.get(family) not in ("system", "user"):  # unknown: format_prompt says
        return family
    if not chosen:
        return "plain"
    if family == "default":  # defined as "a chat template if there is one"
        return family
    raise UserError(f"--prompt_family {family} needs a chat template, and the tokenizer of {model} "
                    "has none (a base model); use --prompt_family plain, or leave it unset")


def instruction(question: Question, variant: int = 0) -> str:
    """The instruction text for a question's task, in the given wording."""
    if isinstance(variant, bool) or not isinstance(variant, int) or not 0 <= variant < NUM_VARIANTS:
        raise UserError(f"prompt variant must be an integer from 0 to {NUM_VARIANTS - 1}, got {variant!r}")
    if question.task == "gpqa":
        return GPQA_INSTRUCTIONS[variant]
    return (ARITH_INSTRUCTIONS if question.source == "arith" else MATH_INSTRUCTIONS)[variant]


def format_prompt(question: Question, tokenizer, family: str, variant: int = 0) -> str:
    """The full text to feed the model, ending where the model's answer should begin."""
    if family not in FAMILIES:
        raise UserError(f"unknown prompt family {family!r}; known: {', '.join(FAMILIES)}")
    text = instruction(question, variant)
    place = FAMILIES[family]
    if place == "plain" or not getattr(tokenizer, "chat_template", None):
        return f"{question.prompt}\n{text}\n"
    if place == "system":
        messages = [{"role": "system", "content": text}, {"role": "user", "content": question.prompt}]
    else:
        messages = [{"role": "user", "content": f"{question.prompt}\n{text}"}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def encode_prompt(text: str, tokenizer) -> list[int]:
    """Token ids for a formatted prompt, with exactly one BOS when the tokenizer uses one.

    Chat templates already write BOS into the text; tokenizing that with special tokens on
    would add a second one, which shifts the model off its training distribution.
    """
    bos = getattr(tokenizer, "bos_token", None)
    has_bos = bool(bos) and text.startswith(bos)
    return list(tokenizer(text, add_special_tokens=not has_bos)["input_ids"])
