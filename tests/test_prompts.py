import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from sttrl.data.datasets import Question
from sttrl.data.prompts import (
    FAMILIES, GPQA_INSTRUCTIONS, MATH_INSTRUCTIONS, NUM_VARIANTS, encode_prompt, format_prompt, model_family,
    settle_family,
)
from sttrl.errors import UserError

PAPER = "Please reason step by step, and put your final answer within \\boxed{}."
MATH_Q = Question("1", "What is 2 + 3?", "toy", "math")
GPQA_Q = Question("2", "Which one?\n\nA. x\nB. y\nC. z\nD. w", "gpqa_diamond", "gpqa")

# Small chat templates in the style of each family: enough to show where each part lands.
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
LLAMA = ("{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
         "{{ m['content'] }}<|eot_id|>{% endfor %}"
         "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}")


def tiny_tokenizer(chat_template=None, bos=None):
    vocab = {"[UNK]": 0, "<s>": 1, "</s>": 2, "What": 3, "is": 4}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    if bos:
        tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", special_tokens=[(bos, vocab[bos])])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", eos_token="</s>", bos_token=bos)
    if chat_template:
        fast.chat_template = chat_template
    return fast


@pytest.mark.parametrize("name, family", [
    ("Qwen/Qwen2.5-Math-1.5B", "qwen-math"),
    ("/models/qwen2.5-math-7b-instruct", "qwen-math"),
    ("Qwen/Qwen2.5-7B", "qwen"),
    ("Qwen/Qwen2.5-1.5B-Instruct", "default"),
    ("meta-llama/Llama-3.1-8B-Instruct", "llama"),
    ("HuggingFaceTB/SmolLM2-360M-Instruct", "smollm"),
    ("gpt2", "default"),
])
def test_model_family(name, family):
    assert model_family(name) == family


def test_qwen_math_puts_instruction_in_system_prompt():
    text = format_prompt(MATH_Q, tiny_tokenizer(CHATML), "qwen-math")
    assert text == (f"<|im_start|>system\n{PAPER}<|im_end|>\n"
                    "<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n<|im_start|>assistant\n")


def test_qwen_base_is_plain_text_even_with_a_chat_template():
    assert format_prompt(MATH_Q, tiny_tokenizer(CHATML), "qwen") == f"What is 2 + 3?\n{PAPER}\n"
    assert format_prompt(MATH_Q, None, "qwen") == f"What is 2 + 3?\n{PAPER}\n"


@pytest.mark.parametrize("family", ["llama", "smollm", "default"])
def test_user_turn_families(family):
    text = format_prompt(MATH_Q, tiny_tokenizer(LLAMA, bos="<s>"), family)
    assert text == ("<s><|start_header_id|>user<|end_header_id|>\n\n"
                    f"What is 2 + 3?\n{PAPER}<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")


@pytest.mark.parametrize("family", ["qwen-math", "llama", "smollm", "default"])
def test_no_chat_template_falls_back_to_plain_text(family):
    assert format_prompt(MATH_Q, tiny_tokenizer(), family) == f"What is 2 + 3?\n{PAPER}\n"


def test_plain_family_is_plain_text_even_with_a_chat_template():
    assert format_prompt(MATH_Q, tiny_tokenizer(CHATML), "plain") == f"What is 2 + 3?\n{PAPER}\n"


@pytest.mark.parametrize("family", ["qwen-math", "llama", "smollm", "default"])
def test_a_guessed_chat_family_without_chat_template_becomes_plain(family):
    assert settle_family(family, False, False, "m") == "plain"
    assert settle_family(family, False, True, "m") == family  # a template: the guess stands


@pytest.mark.parametrize("family", ["qwen-math", "llama", "smollm"])
def test_a_chat_family_asked_for_without_chat_template_is_refused(family):
    with pytest.raises(UserError, match=f"--prompt_family {family} needs a chat template.*base-1b"):
        settle_family(family, True, False, "base-1b")
    assert settle_family(family, True, True, "m") == family


@pytest.mark.parametrize("family, chosen", [("qwen", False), ("qwen", True), ("plain", True),
                                            ("default", True)])
def test_plain_families_and_an_asked_for_default_need_no_chat_template(family, chosen):
    assert settle_family(family, chosen, False, "m") == family


def test_gpqa_asks_for_the_letter():
    text = format_prompt(GPQA_Q, tiny_tokenizer(CHATML), "smollm")
    assert GPQA_INSTRUCTIONS[0] in text and "letter" in text and "(A, B, C or D)" in text
    assert text.index("D. w") < text.index(GPQA_INSTRUCTIONS[0])


def test_variants():
    assert NUM_VARIANTS >= 4 and len(GPQA_INSTRUCTIONS) == NUM_VARIANTS
    assert MATH_INSTRUCTIONS[0] == PAPER
    tok = tiny_tokenizer(CHATML)
    for q in (MATH_Q, GPQA_Q):
        texts = [format_prompt(q, tok, "qwen-math", variant=v) for v in range(NUM_VARIANTS)]
        assert len(set(texts)) == NUM_VARIANTS  # every wording differs
        assert all("\\boxed{}" in t and q.prompt in t for t in texts)  # and keeps what grading needs


@pytest.mark.parametrize("variant", [-1, NUM_VARIANTS, 1.0, True])
def test_bad_variant(variant):
    with pytest.raises(UserError, match="variant must be an integer from 0 to"):
        format_prompt(MATH_Q, None, "qwen", variant=variant)


def test_unknown_family_lists_known():
    with pytest.raises(UserError) as err:
        format_prompt(MATH_Q, None, "mistral")
    assert all(f in str(err.value) for f in FAMILIES)


def test_encode_prompt_gives_one_bos():
    tok = tiny_tokenizer(LLAMA, bos="<s>")
    chat = format_prompt(MATH_Q, tok, "llama")
    assert encode_prompt(chat, tok).count(1) == 1
    plain = format_prompt(MATH_Q, tok, "qwen")
    ids = encode_prompt(plain, tok)
    assert ids[0] == 1 and ids.count(1) == 1
    no_bos = tiny_tokenizer(CHATML)
    assert 1 not in encode_prompt(format_prompt(MATH_Q, no_bos, "qwen-math"), no_bos)


def test_arith_questions_ask_for_the_boxed_answer_without_step_by_step():
    from sttrl.data import load_dataset
    from sttrl.data.prompts import instruction

    q = load_dataset("ARITH-TTT", arith_n=1)[0].question
    assert "boxed" in instruction(q) and "step by step" not in instruction(q)
    assert len({instruction(q, v) for v in range(4)}) == 4
