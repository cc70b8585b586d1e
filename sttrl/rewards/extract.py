"""Pull the final answer out of a model response.

Order for task="math": the last \\boxed{...} (or \\fbox{...}, or the brace-less `\\boxed 5`), else
the value the last "final answer is" sentence commits to, else the last number (the whole math
span when that number sits inside one: `$\\frac{5}{6}$` gives `\\frac{5}{6}`, not `6`). For
task="gpqa" the same three steps look for a letter A-D: a boxed letter, else "answer is (B)",
else the last standalone letter. When a response has a \\boxed at all, the last one decides: an
unclosed box (a truncated generation) or an empty one gives None rather than a guess from the
fallbacks. Task names: TASKS, plus the aliases in TASK_ALIASES (gsm8k grades as math).

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
TASK_ALIASES = {"gsm8k": "math"}  # dataset names accepted as a task; they grade as the task named

_BOX = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
_FINAL = re.compile(r"final answer(?: is)?\s*:?", re.IGNORECASE)
_SENTENCE_END = re.compile(r"\.(?:\s|$)")  # "5. Check..." ends at the period; "3.5" does not
# The minus sign and the first digit may not follow a word character, so "x2" and "3-4" do not
# yield "2" and "-4"; commas only count as thousands separators in groups of three.
_NUMBER_RE = r"(?<!\w)-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+)?|(?<!\w)-?\.\d+"
_NUMBER = re.compile(_NUMBER_RE)
# A whitespace-delimited token of a final-answer sentence that is just a number ("34", "50%", "\$5").
_NUMBER_TOKEN = re.compile(r"(?:\\\$)?(?:" + _NUMBER_RE + r")(?:\\?%)?")
# Math delimiters, scanned left to right (finditer: linear). An escaped dollar is money, not math.
_MATH_DELIM = re.compile(r"\\\$|\$\$|\$|\\\(|\\\)|\\\[|\\\]")
_CLOSER = {"$$": "$$", "$": "$", "\\(": "\\)", "\\[": "\\]"}
# What a sentence commits to: the value after "is" or "=" (not <=, >=, !=, ==, \=).
_COMMIT = re.compile(r"(?<![A-Za-z])is(?![A-Za-z])|(?<![<>!=\\])=(?!=)")
# Inside one math span, the relations that separate a value from what it is equal to.
_SPAN_RELATION = re.compile(r"(?<![<>!=\\])=(?!=)|\\approx(?![A-Za-z])")
_PROSE_WORD = re.compile(r"(?<![\\A-Za-z])[A-Za-z]{2,}")  # not a LaTeX command like \sqrt
_TOKEN = re.compile(r"\S+")
_ANSWER_WORD = re.compile(r"answer", re.IGNORECASE)
# Applied only to a short window after "answer", so its adjacent optional parts cannot blow up.
_LETTER_AFTER_ANSWER = re.compile(r"(?:\s+is)?[\s:*$]*(?:\\text(?:bf)?\{)?\(?([A-D])(?:\)|(?![A-Za-z0-9]))")
_STANDALONE_LETTER = re.compile(r"(?<![A-Za-z0-9_\\])([A-D])(?![A-Za-z0-9_])")
_LEADING_LETTER = re.compile(r"\(?([A-Da-d])(?:\)|(?![A-Za-z0-9]))")
_LATEX_NOISE = re.compile(r"\\[A-Za-z]+|[{}$\s]")


def check_task(task: str) -> str:
    """The task a name grades as ("gsm8k" -> "math"); UserError for an unknown name."""
    if isinstance(task, str):
        if task in TASKS:
            return task
        if task in TASK_ALIASES:
            return TASK_ALIASES[task]
    raise UserError(f"unknown task {task!r}; allowed: {', '.join(TASKS + tuple(TASK_ALIASES))}")


def extract_answer(text: str | None, task: str = "math", boxed: bool = True,
                   final_answer: bool = True, last_number: bool = True) -> str | None:
    """The answer a response commits to, or None. For gpqa, last_number switches the
    last-standalone-letter fallback and the result is always one upper-case letter."""
    task = check_task(task)
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
            return _number_in_context(text, m)
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


def _math_spans(text: str, start: int = 0, end: int | None = None):
    """(open_start, content_start, content_end, close_end) of each closed $...$, $$...$$,
    \\(...\\) or \\[...\\] span in text[start:end], in order. One linear pass; an unclosed span
    yields nothing, and other openers inside a span are ignored."""
    open_, open_start, content_start = None, 0, 0
    for m in _MATH_DELIM.finditer(text, start, len(text) if end is None else end):
        d = m.group(0)
        if d == "\\$":
            continue
        if open_ is None:
            if d in _CLOSER:
                open_, open_start, content_start = d, m.start(), m.end()
        elif d == _CLOSER[open_]:
            yield open_start, content_start, m.start(), m.end()
            open_ = None
        elif open_ == "$" and d == "$$":  # "$a$$b$": close one span, open the next
            yield open_start, content_start, m.start(), m.start() + 1
            open_start, content_start = m.start() + 1, m.end()


def _number_in_context(text: str, m: re.Match) -> str:
    """The last-number fallback's answer: the number, or when it sits inside a math span, the
    span's content ("$\\frac{5}{6}$" -> "\\frac{5}{6}", "$10^3$" -> "10^3"); in a span holding a
    relation, only the part around the number ("$x = \\frac{5}{6}$" -> "\\frac{5}{6}")."""
    number = m.group(0).replace(",", "")
    for _, cs, ce, _ in _math_spans(text):
        if cs > m.start():
            break
        if m.end() <= ce:
            lo, hi = cs, ce
            for r in _SPAN_RELATION.finditer(text, cs, ce):
                if r.end() <= m.start():
                    lo = r.end()
                elif r.start() >= m.end():
                    hi = r.start()
                    break
            piece = text[lo:hi].strip()
            if piece.endswith(".") and not piece.endswith("\\."):
                piece = piece[:-1].rstrip()
            if piece == m.group(0) or not 0 < len(piece) <= MAX_ANSWER_CHARS:
                return number
            return piece
    return number


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
        answer = _committed_value(sentence)
    answer = answer.strip()
    return answer if 0 < len(answer) <= MAX_ANSWER_CHARS else None


def _committed_value(sentence: str) -> str:
    """The value a final-answer sentence commits to (the sentence is at most ~MAX_ANSWER_CHARS).

    "The largest $n$ is 34" -> "34": the math span or number right after the last "is"/"=" that
    has one; else, after the last "is"/"=", its whole short remainder ("is Evelyn",
    "= 2\\sqrt{3}"). Without one, a short answer is kept whole ("5 apples", "x^2+1", "Evelyn"),
    and a sentence of prose (two words or more, or a math span among words) gives its last math
    span or number ("Jane started growing Sphere 3 hours ago" -> "3").
    """
    items = []      # (start, value, is_span, end): math spans and numbers outside them, in order
    commits = []    # end of each "is" / "=" outside math spans
    words = []      # start of each prose word outside math spans
    pos = 0
    n = len(sentence)
    for open_start, cs, ce, close_end in [*_math_spans(sentence), (n, n, n, n)]:
        for t in _TOKEN.finditer(sentence, pos, open_start):  # the text before this span
            token = t.group(0)
            value = token.lstrip("*").rstrip(".,;:!?*")
            if value.endswith(")") and "(" not in value:  # "(so it is 34)."
                value = value[:-1]
            if not (value and _NUMBER_TOKEN.fullmatch(value)):
                continue
            start = t.start() + len(token) - len(token.lstrip("*"))
            prev = items[-1] if items else None
            if prev and not prev[2] and sentence[prev[3]:start].strip() == ",":
                # "1, 2, 3" is one answer (a list), not its first or last number
                items[-1] = (prev[0], sentence[prev[0]:start + len(value)], False, start + len(value))
            else:
                items.append((start, value, False, start + len(value)))
        commits += [c.end() for c in _COMMIT.finditer(sentence, pos, open_start)]
        words += [w.start() for w in _PROSE_WORD.finditer(sentence, pos, open_start)]
        if open_start < n:
            items.append((open_start, sentence[cs:ce].strip(), True, close_end))
        pos = close_end

    def first_item_after(at: int):
        return next(((start, value) for start, value, _, _ in items if start >= at), None)

    def prose_after(at: int) -> bool:
        return sum(w >= at for w in words) >= 2 or any(span and s >= at for s, _, span, _ in items)

    for at in reversed(commits):  # "is 34", "= 7 in the end", "is $\\frac{3}{4}$ square units"
        item = first_item_after(at)
        if item and not sentence[at:item[0]].strip(" \t:*"):
            return item[1]
    if commits:
        remainder = sentence[commits[-1]:].strip(" \t:*")
        if remainder and not prose_after(commits[-1]):
            return remainder
        item = first_item_after(commits[-1])
        if item:
            return item[1]
    if items and prose_after(0):
        return items[-1][1]
    return sentence.strip("* ")


def _answer_is_letter(text: str) -> str | None:
    # Scan "answer" occurrences from the last one back: "The answer is (B). This answer is final."
    starts = [m.end() for m in _ANSWER_WORD.finditer(text)]
    for start in reversed(starts):
        m = _LETTER_AFTER_ANSWER.match(text, start, start + 64)
        if m:
            return m.group(1)
    return None
