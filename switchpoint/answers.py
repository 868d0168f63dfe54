"""The one final-answer extractor: used by the built-in verifiers (exact and math) and by the synthetic task.

A completion states its final answer after "Answer:" (the next whitespace-separated token) or inside
\\boxed{...} (balanced braces). Model output is untrusted, so the rules are strict:

- Several DIFFERENT final answers ("Answer: 3 ... Answer: 4", "\\boxed{3} or \\boxed{2}", "Answer: 18 or 19")
  give no answer at all: a hedge must not collect the reward of whichever guess happens to be right.
  Repeats of the same answer are fine.
- An answer holding control or invisible formatting characters ("18\\x00", "1\\u200b8") is refused: it is not
  the reference, and math-verify's parser silently drops such characters ("$18\\x00$" verifies as 18).
- An answer longer than MAX_ANSWER_CHARS is refused, so no verifier ever parses a megabyte "number".

The built-in verify functions (verify_exact, verify_math) and their VerifyResult live here too, free of Ray,
so that actors/verifier.py only runs them in its sandboxed children.

Everything here is linear in the length of the text (one pass over braces, one over markers), so a megabyte
of nested braces or thousands of markers cost milliseconds, not a timeout. Nothing is ever evaluated.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

OK = "ok"
NO_ANSWER = "no_answer"
ERROR = "error"
TIMEOUT = "timeout"
CRASH = "crash"
STATUSES = (OK, NO_ANSWER, ERROR, TIMEOUT, CRASH)
MAX_DETAIL_CHARS = 300

ANSWER_MARKER = "Answer:"
BOXED_MARKER = "\\boxed{"
END_TOKENS = ("</s>", "<|", "<pad>")
"""Tokenizer end/padding tokens that may be glued to the answer ("Answer: 18</s><pad>")."""
MAX_ANSWER_CHARS = 1000

SEVERAL_ANSWERS = "several different final answers"
NO_FINAL_ANSWER = 'no "Answer:" or \\boxed{} answer'

# ASCII whitespace only: Python's str.split() and re's \s also split at \x1c-\x1f, which would let a control
# character pass for a separator.
_SPACE = " \t\n\r\f\v"
_TOKEN = re.compile(f"[{_SPACE}]*([^{_SPACE}]*)")
_MARKER_WITH_TOKEN = re.compile(
    f"{re.escape(ANSWER_MARKER)}[{_SPACE}]*(?!{re.escape(ANSWER_MARKER)})(?=[^{_SPACE}])"
)
_HEDGE_WORDS = frozenset({"or", "and/or"})
_CONTROL = re.compile(
    "[\x00-\x08\x0e-\x1f\x7f-\x9f\u00ad\u200b-\u200f\u2028-\u202e\u2060-\u206f\ufeff\ufff9-\ufffb]"
)
_WHITESPACE = re.compile(r"\s+")
_BRACES = re.compile(r"[{}]")
_LOOKS_LIKE_AN_ANSWER = re.compile(r"[-+$\\0-9]")


@dataclass
class VerifyResult:
    """The verdict on one completion."""

    score: float
    """The reward: 1.0/0.0 for the built-in verifiers, whatever finite number a plugged-in one returns;
    always 0.0 unless status is "ok"."""
    status: str
    """One of STATUSES: ok, no_answer (none, several different, or refused), error (verify raised), timeout,
    crash (the verifier process or actor died on it)."""
    detail: str = ""
    """Human-readable context (extracted answer, why there is none, exception message, exit signal), truncated."""


def truncate(text: str) -> str:
    return text if len(text) <= MAX_DETAIL_CHARS else text[: MAX_DETAIL_CHARS - 3] + "..."


@dataclass(frozen=True)
class FinalAnswer:
    """What find_final_answer made of a text."""

    answer: str | None
    """The single final answer; None when there is none, several, or it was refused."""
    problem: str = ""
    """Why answer is None ("several different final answers: '18', '19'", ...); "" when there is one."""


def find_final_answer(text: str) -> FinalAnswer:
    """The final answer of `text` under the rules in the module docstring."""
    if not isinstance(text, str):
        return FinalAnswer(None, f"not a string but {type(text).__name__}")
    seen: dict[str, str] = {}  # normalised form -> first spelling seen
    spellings: set[str] = set()
    for candidate in _candidates(text):
        if candidate in spellings:  # thousands of repeats: skip the normalising
            continue
        spellings.add(candidate)
        seen.setdefault(_normalise(candidate), candidate)
        if len(seen) > 1:
            shown = ", ".join(repr(_shorten(spelling)) for spelling in seen.values())
            return FinalAnswer(None, f"{SEVERAL_ANSWERS}: {shown}")
    if not seen:
        return FinalAnswer(None, NO_FINAL_ANSWER)
    [answer] = seen.values()
    answer = answer.strip(_SPACE)
    if not answer:
        return FinalAnswer(None, "the final answer is empty")
    if len(answer) > MAX_ANSWER_CHARS:
        return FinalAnswer(
            None, f"the final answer is {len(answer)} characters long (limit {MAX_ANSWER_CHARS})"
        )
    if _CONTROL.search(answer):
        return FinalAnswer(
            None, f"the final answer {_shorten(answer)!r} holds control or invisible characters"
        )
    return FinalAnswer(answer)


def extract_final_answer(text: str) -> str | None:
    """The single final answer of `text`, or None (none, several different ones, or refused)."""
    return find_final_answer(text).answer


def matches_reference(answer: str | None, reference: str) -> bool:
    """Exact match against the stripped reference; None never matches."""
    return answer is not None and answer == str(reference).strip()


def _candidates(text: str):
    """Every final answer the text states, in no particular order; a hedge yields two."""
    yield from _boxed_contents(text)
    yield from _marker_answers(text)


def _boxed_contents(text: str):
    """The content of each outermost closed \\boxed{...}; \\boxed{\\boxed{5}} gives "5"."""
    if BOXED_MARKER not in text:
        return
    closing = _matching_braces(text)
    cursor = 0
    while (start := text.find(BOXED_MARKER, cursor)) >= 0:
        opening = start + len(BOXED_MARKER) - 1
        end = closing.get(opening)
        if end is None:  # unclosed: not an answer, but a box inside it may still be one
            cursor = opening + 1
            continue
        yield _unbox(text, opening + 1, end, closing)
        cursor = end + 1


def _matching_braces(text: str) -> dict[int, int]:
    """Position of each "{" -> position of its "}", in one pass with an explicit stack (no recursion)."""
    stack: list[int] = []
    closing: dict[int, int] = {}
    for brace in _BRACES.finditer(text):
        position = brace.start()
        if text[position] == "{":
            stack.append(position)
        elif stack:
            closing[stack.pop()] = position
    return closing


def _unbox(text: str, start: int, end: int, closing: dict[int, int]) -> str:
    """text[start:end] stripped, with boxes that wrap all of it removed (a loop: nesting may be deep)."""
    while True:
        while start < end and text[start] in _SPACE:
            start += 1
        while end > start and text[end - 1] in _SPACE:
            end -= 1
        opening = start + len(BOXED_MARKER) - 1
        if not text.startswith(BOXED_MARKER, start, end) or closing.get(opening) != end - 1:
            return text[start:end]  # no box, or "\\boxed{1} + 2" where the box is only part of it
        start, end = opening + 1, end - 1


def _marker_answers(text: str):
    """The token after each "Answer:", cleaned; plus the alternative when a hedge ("18 or 19") follows."""
    # Markers with nothing after them but another marker are skipped by the regex engine, not a Python loop.
    for marker in _MARKER_WITH_TOKEN.finditer(text):
        following = text.find(ANSWER_MARKER, marker.end())
        region_end = following if following >= 0 else len(text)  # keeps thousands of markers linear
        token, after = _next_token(text, marker.end(), region_end)
        if not token or token.startswith(BOXED_MARKER):
            continue  # "Answer: \boxed{...}" is read (with balanced braces) by _boxed_contents
        hedged = token[-1] in ",;"
        answer = _clean(token)
        if not answer:
            continue
        yield answer
        word, after_word = _next_token(text, after, region_end)
        if word.lower() in _HEDGE_WORDS:
            alternative, _ = _next_token(text, after_word, region_end)
            if alternative:
                yield _clean(alternative) or alternative
        elif hedged and _LOOKS_LIKE_AN_ANSWER.match(word):
            yield _clean(word) or word


def _next_token(text: str, start: int, end: int) -> tuple[str, int]:
    match = _TOKEN.match(text, start, end)
    return match.group(1), match.end()


def _clean(token: str) -> str:
    """Cut glued end tokens, a sentence-ending period or comma, and a $...$ wrapping."""
    for end_token in END_TOKENS:
        token = token.split(end_token, 1)[0]
    token = token.rstrip(".,;")
    if len(token) > 2 and token.startswith("$") and token.endswith("$"):
        token = token[1:-1].strip()
    return token


def _normalise(answer: str) -> str:
    """Spelling-insensitive form used only to decide whether two stated answers are the same one."""
    return _WHITESPACE.sub("", answer)


def _shorten(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def has_hidden_characters(text: str) -> bool:
    """True when text holds control or invisible formatting characters (other than ASCII whitespace)."""
    return _CONTROL.search(text) is not None


# --- Built-in verify functions, called as verify(completion, reference) inside the verifier's children ---

MATH_FALLBACK_CHARS = 2000
"""Without an "Answer:" or \\boxed{} answer, math-verify searches only this tail of the completion."""


def verify_exact(completion: str, reference: str) -> VerifyResult:
    """Exact match of the final answer against the stripped reference (the synthetic task)."""
    found = find_final_answer(completion)
    if found.answer is None:
        return VerifyResult(0.0, NO_ANSWER, truncate(found.problem))
    score = 1.0 if matches_reference(found.answer, reference) else 0.0
    return VerifyResult(score, OK, truncate(f"answer={found.answer!r}"))


def verify_math(completion: str, reference: str) -> VerifyResult:
    """Mathematical equivalence via math-verify ("\\frac{1}{2}" matches "0.5")."""
    # Imported here so that importing this module stays cheap; VerifierWorker warms it up before forking.
    from math_verify import parse, verify

    gold_text = reference.strip()
    if "$" not in gold_text and BOXED_MARKER not in gold_text:
        gold_text = f"${gold_text}$"
    # math-verify's own signal.alarm timeouts are switched off: the worker enforces the per-item limit.
    gold = parse(gold_text, parsing_timeout=None)
    if not gold:
        raise ValueError(f"reference {truncate(reference)!r} has no answer math-verify can parse")
    found = find_final_answer(completion)
    if found.answer is not None:
        # Only the stated answer goes to math-verify: it cannot pick another one from the reasoning.
        predicted_text = found.answer if "$" in found.answer else f"${found.answer}$"
    elif found.problem != NO_FINAL_ANSWER:
        return VerifyResult(0.0, NO_ANSWER, truncate(found.problem))
    else:  # no marker: math-verify's own extraction ("the answer is $x$"), on the tail only
        predicted_text = completion[-MATH_FALLBACK_CHARS:]
        if has_hidden_characters(predicted_text):
            return VerifyResult(
                0.0, NO_ANSWER, "control or invisible characters near the end of the completion"
            )
    predicted = parse(predicted_text, parsing_timeout=None)
    if not predicted:
        return VerifyResult(0.0, NO_ANSWER, "math-verify found no answer in the completion")
    score = 1.0 if verify(gold, predicted, timeout_seconds=None) else 0.0
    return VerifyResult(score, OK, truncate(f"answer={predicted_text!r}"))
