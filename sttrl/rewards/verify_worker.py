"""math-verify in a child process, so that grade.py can kill it when a parse or comparison hangs.

Run as a script (never imported by the package); it needs only math-verify. One JSON request
per line on stdin, short reply lines on stdout:
    ["grade", pred, ref] -> "g" once the reference is parsed, "p" once the prediction is,
                            then "1" (equivalent) or "0"
    ["clear"]            -> "ok" after dropping the parse caches (for cold benchmarks)
The "g"/"p" steps tell the parent which string a timeout was stuck on.
"""
import os
import sys

# Running as a script puts this directory first on sys.path, where a sibling module (say a future
# types.py) would shadow the library of that name. os and sys are already loaded, so this is safe.
if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
    del sys.path[0]

import json  # noqa: E402
import logging  # noqa: E402
import resource  # noqa: E402
import signal  # noqa: E402
from functools import lru_cache  # noqa: E402

# A runaway parse should die of MemoryError (answered "0") before it can hurt the host.
MEMORY_LIMIT_BYTES = 2 << 30  # a worker normally needs under 100 MB


def main() -> None:
    replies = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # anything a library prints goes to stderr, not into the reply stream
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT_BYTES, MEMORY_LIMIT_BYTES))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the parent, which kills us if need be
    logging.disable(logging.CRITICAL)  # math-verify logs every failed parse and its timeout warning

    import math_verify.grader
    import math_verify.parser
    import sympy
    from math_verify import parse, verify

    # verify() ends with simplify(a - b).is_zero, by far its slowest step for answers that differ
    # (most comparisons in a vote). Expressions whose values differ at one generic point cannot
    # simplify to equal, so evaluate there first and only simplify when the values agree or the
    # evaluation fails. This changes speed, not results.
    symbolic_eq = getattr(math_verify.grader, "sympy_symbolic_eq", None)

    def quick_symbolic_eq(a, b) -> bool:
        if isinstance(a, sympy.Expr) and isinstance(b, sympy.Expr):
            try:
                symbols = sorted(a.free_symbols | b.free_symbols, key=str)
                point = {x: sympy.Rational(618034 + 1000 * k, 10**6) for k, x in enumerate(symbols)}
                va, vb = complex(a.evalf(30, subs=point)), complex(b.evalf(30, subs=point))
                finite = abs(va) < 1e300 and abs(vb) < 1e300  # also False for nan
                if finite and abs(va - vb) > 1e-9 * (1 + abs(va) + abs(vb)):
                    return False
            except Exception:  # noqa: BLE001 - not evaluable here; let simplify decide
                pass
        return symbolic_eq(a, b)

    if symbolic_eq is not None:
        math_verify.grader.sympy_symbolic_eq = quick_symbolic_eq

    @lru_cache(maxsize=4096)
    def parsed(s: str) -> list:
        # math-verify's own timeouts use signal.alarm; the parent enforces the bound instead.
        result = parse("$" + s + "$", parsing_timeout=None)
        # verify() evaluates each side (doit) and hangs there on x + 9^{(9)^{9}}; doing it once
        # here (well under a millisecond for real answers) blames the hang on this string alone.
        for item in result:
            try:
                if isinstance(item, sympy.Basic):
                    item.doit()
            except Exception:  # noqa: BLE001 - verify() copes with it (safe_sympy_doit); only time matters here
                pass
        return result

    def reply(line: str) -> None:
        replies.write(line + "\n")
        replies.flush()

    reply("ready")
    for line in sys.stdin:
        request = json.loads(line)
        if request[0] == "clear":
            parsed.cache_clear()
            for name in ("parse_latex_cached", "parse_expr_cached"):  # math-verify's own caches
                cached = getattr(math_verify.parser, name, None)
                if hasattr(cached, "cache_clear"):
                    cached.cache_clear()
            reply("ok")
            continue
        _, pred, ref = request
        try:
            gold = parsed(ref)
            reply("g")
            target = parsed(pred)
            reply("p")
            ok = verify(gold, target, timeout_seconds=None)
        except Exception:  # noqa: BLE001 - a hostile answer may break sympy in any way; it is just wrong
            ok = False
        reply("1" if ok else "0")


if __name__ == "__main__":
    main()
