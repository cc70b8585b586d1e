"""How the instruction wording changes the embedded model's accuracy on ARITH-TTT.

    python scripts/prompt_check.py [--questions 10] [--samples 8] [--max_new_tokens 128]

For each instruction: pass@1 and majority-vote accuracy over the first N ARITH-TTT questions,
samples at temperature 0.6 / top-p 0.95 with the SmolLM2 chat template. No training.
"""
import argparse

from sttrl.data import load_dataset
from sttrl.data.prompts import ARITH_INSTRUCTIONS, MATH_INSTRUCTIONS
from sttrl.config import Config, resolve
from sttrl.engines.local import LocalEngine
from sttrl.engines.models import resolve_model
from sttrl.parts import parts
from sttrl.rewards import extract_answer, grade, vote

parser = argparse.ArgumentParser()
parser.add_argument("--questions", type=int, default=10)
parser.add_argument("--samples", type=int, default=8)
parser.add_argument("--max_new_tokens", type=int, default=128)
args = parser.parse_args()

engine = LocalEngine(parts(resolve(Config(device="cpu"), on_gpu=False)).engine, resolve_model(None))
examples = load_dataset("ARITH-TTT", arith_n=args.questions)
print("| instruction | pass@1 | maj@%d |" % args.samples)
print("|---|---|---|")
for instruction in (MATH_INSTRUCTIONS[0], ARITH_INSTRUCTIONS[0]):
    correct, majority = 0.0, 0.0
    for i, ex in enumerate(examples):
        messages = [{"role": "user", "content": f"{ex.question.prompt}\n{instruction}"}]
        prompt = engine.tokenizer.apply_chat_template(messages, tokenize=False,
                                                      add_generation_prompt=True)
        samples = engine.generate(prompt, args.samples, 0.6, 0.95, args.max_new_tokens, seed=i)
        answers = [extract_answer(s.text, "math") for s in samples]
        correct += sum(grade(a, ex.answer) for a in answers) / len(answers)
        majority += grade(vote(answers)[0], ex.answer)
    n = len(examples)
    print(f"| {instruction} | {correct / n:.3f} | {majority / n:.2f} |")
