"""Pull the final answer out of a model response.

Order for task="math": the last \\boxed{...} (or \\fbox{...}, or the brace-less `\\boxed 5`), else
the text after the last "final answer is", else the last number. For task="gpqa" the same three
steps look for a letter A-D: a boxed letter, else "answer is (B)", else the last standalone letter.
When a response has a \\boxed at all, the last one decides: an unclosed box (a truncated
generation) or an empty one gives None rather than a guess from the fallbacks.

Responses are untrusted and may be huge, so every step is a linear scan: no regex here can
backtrack more than a bounded window, and brace matching stops after MAX_ANSWER_CHARS.
An answer longer than MAX_ANSWER_CHARS is returned as None, never truncated: a cut-off
string is a different answer and could match something by accident.
"""
from __future__ import annotations

import re

from sttrl.errors import UserError

MAX_ANSWER_CHARS = 1000
TASKS = ("math", "gpqa")

_BOX = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
_FINAL = re.compile(r"final answer(?: is)?\s*:?", re.IGNORECASE)
_INLINE_MATH = re.compile(r"\$([^$]+)\$")
_SENTENCE_END = re.compile(r"\.(?:\s|$)")  # "5. Check..." ends at the period; "3.5" does not
# The minus sign and the first digit may not follow a word character, so "x2" and "3-4" do not
# yield "2" and "-4"; commas only count as thousands separators in groups of three.
_NUMBER = re.compile(r"(?<!\w)-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+)?|(?<!\w)-?\.\d+")
_ANSWER_WORD = re.compile(r"answer", re.IGNORECASE)
# Applied only to a short window after "answer", so its adjacent optional parts cannot blow up.
_LETTER_AFTER_ANSWER = re.compile(r"(?:\s+is)?[\s:*$]*(?:\\text(?:bf)?\{)?\(?([A-D])(?:\)|(?![A-Za-z0-9]))")
_STANDALONE_LETTER = re.compile(r"(?<![A-Za-z0-9_\\])([A-D])(?![A-Za-z0-9_])")
_LEADING_LETTER = re.compile(r"\(?([A-Da-d])(?:\)|(?![A-Za-z0-9]))")
_LATEX_NOISE = re.compile(r"\\[A-Za-z]+|[{}$\s]")


def check_task(task: str) -> None:
    if task not in TASKS:
        raise UserError(f"unknown task {task!r}; allowed: {', '.join(TASKS)}")


def extract_answer(text: str | None, task: str = "math", boxed: bool = True,
                   final_answer: bool = True, last_number: bool = True) -> str | None:
    """The answer a response commits to, or None. For gpqa, last_number switches the
    last-standalone-letter fallback and the result is always one upper-case letter."""
    check_task(task)
    if not text:
        return None
    if boxed:
        found, content = _last_boxed(text)
        if found:
            return content if task == "math" or content is None else letter_of(content)
    if task == "gpqa":
        if final_answer:
            letter = _answer_is_letter(text)
            if letter:
                return letter
        if last_number:
            m = _last_match(_STANDALONE_LETTER, text)
            return m.group(1) if m else None
        return None
    if final_answer:
        answer = _final_answer(text)
        if answer:
            return answer
    if last_number:
        m = _last_match(_NUMBER, text)
        if m and len(m.group(0)) <= MAX_ANSWER_CHARS:
            return m.group(0).replace(",", "")
    return None


def letter_of(s: str) -> str | None:
    """The choice letter in a short answer like "C", "(c)", "\\text{(C)}" or "C) 3 GeV"; never
    the first letter of a word ("Deuterium")."""
    m = _LEADING_LETTER.match(_LATEX_NOISE.sub("", s[:MAX_ANSWER_CHARS]))
    return m.group(1).upper() if m else None


def _last_match(pattern: re.Pattern, text: str) -> re.Match | None:
    m = None
    for m in pattern.finditer(text):
        pass
    return m


def _last_boxed(text: str) -> tuple[bool, str | None]:
    """(whether there is a box, its stripped content or None if unclosed, empty or too long)."""
    m = _last_match(_BOX, text)
    if m is None:
        return False, None
    i = m.end()
    while i < len(text) and text[i] in " \t":
        i += 1
    if i < len(text) and text[i] == "{":
        content = _braced(text, i)
    else:  # `\boxed 5$`: the box holds one token
        token = re.match(r"[^\s$]*", text[i:i + MAX_ANSWER_CHARS + 1]).group(0)
        content = token if len(token) <= MAX_ANSWER_CHARS else None
    content = content.strip() if content else None
    return True, content or None


def _braced(text: str, start: int) -> str | None:
    """Content of the brace group opening at text[start], honouring nesting and escapes like
    \\{ and \\}; None when it does not close within MAX_ANSWER_CHARS."""
    depth = 0
    i = start
    end = min(len(text), start + MAX_ANSWER_CHARS + 2)
    while i < end:
        ch = text[i]
        if ch == "\\":
            i += 2
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return text[start + 1:i]
        i += 1
    return None


def _final_answer(text: str) -> str | None:
    m = _last_match(_FINAL, text)
    if m is None:
        return None
    rest = text[m.end():m.end() + MAX_ANSWER_CHARS + 8].lstrip(" \t\n*")
    for open_, close in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if rest.startswith(open_):
            end = rest.find(close, len(open_))
            answer = rest[len(open_):end] if end > 0 else ""
            break
    else:
        sentence = _SENTENCE_END.split(rest.split("\n", 1)[0], maxsplit=1)[0]
        inline = _INLINE_MATH.search(sentence)  # "is therefore $5$ apples"
        answer = inline.group(1) if inline else sentence.strip("* ")
    answer = answer.strip()
    return answer if 0 < len(answer) <= MAX_ANSWER_CHARS else None


def _answer_is_letter(text: str) -> str | None:
    # Scan "answer" occurrences from the last one back: "The answer is (B). This answer is final."
    starts = [m.end() for m in _ANSWER_WORD.finditer(text)]
    for start in reversed(starts):
        m = _LETTER_AFTER_ANSWER.match(text, start, start + 64)
        if m:
            return m.group(1)
    return None
