"""Repetition loops: a per-output metric ("does it END in a loop?") and a per-set rate.

OCR models fail by looping: the decoder repeats a word, a line or a table row until the token budget runs
out. DeepSeek-OCR 2 reports this as a "repetition rate" (share of outputs that degenerate into a loop;
6.25 % -> 4.17 % on online images); olmOCR-Bench's baseline test fails a page whose text ends in a repeated
n-gram. Both look at the END of the output: a loop never stops by itself, so it is what the output ends with.

The metric (`loop_at_end` / `ends_in_loop` / `repetition_summary`)
------------------------------------------------------------------
`tail_repeats(text, size)` counts how many times the last `size` characters repeat back to back, walking
backwards from the end (olmOCR's `RepeatDetector.ngram_repeats`, characters not tokens: "abab" -> size 1: 1,
size 2: 2, size 3: 1). olmOCR-Bench's `BaselineTest` fails a page when, for some size in 1..5, the count is
MORE than `max_repeats` = 30 (`olmocr_repeat_failure`, used as-is by the olmOCR-Bench scorer).

`ends_in_loop` is that rule, widened, because olmOCR's 5-character limit misses the loops OCR models make
(a repeated line or table row is 10-200 characters; olmOCR's own comment says the test "doesn't seem to catch
anything"). An output ends in a loop when, for some unit size 1..`max_period` (500 characters), the last unit
repeats back to back
  (a) MORE than `max_repeats` (30) times -- olmOCR's rule, for every size, so whatever olmOCR-Bench's baseline
      flags for repetition is flagged here too; or
  (b) at least `min_repeats` (5) times AND the repeated tail covers at least `min_loop_chars` (400) characters.
Why (b) and these numbers: legitimate repetition is short. "ha ha", "哈哈哈", a dot leader, a markdown or HTML
table with a few identical rows ("| 0 | 0 |" x 4 = 40 characters, "<tr><td>1</td><td>1</td></tr>" x 4 = 116)
stay well under 400 repeated characters or under 5 copies; a loop that ran to the token budget repeats
hundreds or thousands of characters (512 new tokens are ~2000 characters). A period of 500 covers a looping
paragraph; 5 copies of it are 2500 characters. What it cannot see: a "loop" whose copies differ (an
incrementing counter "1. 2. 3. ..."), and a loop that stopped on its own and was followed by other text.
Trailing whitespace is stripped first (a writer's final newline must not hide a loop), except that a tail
of more than `max_repeats` whitespace characters is itself a loop (a model emitting newlines to the budget).
The unit found is the smallest qualifying one; truncated final copies are fine ("abcabcab" has unit "cab").

The decoding guard that prevents these loops lives with generation, in `nanoocr.model.ngram_guard`
(nanoocr/model imports nothing of eval/); its command-line flags (`add_guard_args`, `guard_kwargs`) are here.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RepetitionConfig:
    max_period: int = 500      # longest repeating unit considered, in characters
    max_repeats: int = 30      # olmOCR-Bench BaselineTest: more copies than this is a loop, at any unit size
    min_repeats: int = 5       # rule (b): at least this many copies ...
    min_loop_chars: int = 400  # ... covering at least this many characters


DEFAULT = RepetitionConfig()
OLMOCR_MAX_NGRAM = 5   # olmOCR's BaselineTest uses RepeatDetector(max_ngram_size=5)
OLMOCR_MAX_REPEATS = 30


def tail_repeats(text: str, size: int) -> int:
    """How many times the last `size` characters occur back to back at the end of `text` (0 if too short)."""
    if size < 1 or len(text) < size:
        return 0
    unit = text[-size:]
    count, pos = 0, len(text) - size
    while pos >= 0 and text.startswith(unit, pos):
        count += 1
        pos -= size
    return count


def ngram_repeats(text: str, max_ngram_size: int = OLMOCR_MAX_NGRAM) -> list[int]:
    """[tail_repeats(text, 1), ..., tail_repeats(text, max_ngram_size)], as olmOCR's RepeatDetector reports."""
    return [tail_repeats(text, size) for size in range(1, max_ngram_size + 1)]


def olmocr_repeat_failure(content: str, max_repeats: int = OLMOCR_MAX_REPEATS) -> str | None:
    """olmOCR-Bench BaselineTest's repetition check on the raw content: the reason it fails, or None."""
    for size, count in enumerate(ngram_repeats(content), start=1):
        if count > max_repeats:
            return f"Text ends with {count} repeating {size}-grams, invalid"
    return None


def loop_at_end(text: str, cfg: RepetitionConfig = DEFAULT) -> dict | None:
    """The loop the output ends in, {"period", "repeats", "chars", "unit"}, or None (rules in the docstring)."""
    stripped = text.rstrip()
    trailing = len(text) - len(stripped)
    if trailing > cfg.max_repeats:  # rstrip would hide a run of whitespace emitted to the budget
        return {"period": 1, "repeats": trailing, "chars": trailing, "unit": text[-1]}
    for size in range(1, min(cfg.max_period, len(stripped) // 2) + 1):
        # cheap reject first: a loop needs at least two copies, so the unit must precede itself
        if stripped[-2 * size:-size] != stripped[-size:]:
            continue
        count = tail_repeats(stripped, size)
        if count > cfg.max_repeats or (count >= cfg.min_repeats and count * size >= cfg.min_loop_chars):
            return {"period": size, "repeats": count, "chars": count * size, "unit": stripped[-size:]}
    return None


def ends_in_loop(text: str, cfg: RepetitionConfig = DEFAULT) -> bool:
    return loop_at_end(text, cfg) is not None


def repetition_summary(texts: list[str], cfg: RepetitionConfig = DEFAULT, stopped: list[bool] | None = None) -> dict:
    """Per-set figures: repetition_rate (share of outputs that end in a loop), olmocr_repeat_fail_rate (olmOCR's
    narrower rule), and, when `stopped` (did generation end on a stop token?) is given, no_stop_rate: DeepSeek's
    PDF script treats an output without end-of-sentence as a repeat (SKIP_REPEAT), so it is reported beside."""
    n = len(texts)
    looped = sum(ends_in_loop(t, cfg) for t in texts)
    olmocr = sum(olmocr_repeat_failure(t) is not None for t in texts)
    out = {"n": n, "n_looped": looped, "repetition_rate": looped / n if n else 0.0,
           "olmocr_repeat_fail_rate": olmocr / n if n else 0.0}
    if stopped is not None:
        assert len(stopped) == n, f"{len(stopped)} stopped flags for {n} texts"
        out["no_stop_rate"] = sum(not s for s in stopped) / n if n else 0.0
    return out


# ------------------------------------------------------------------------------------------------------------
# The decoding guard's flags in the CLIs (sample, evaluate): the guard itself is nanoocr.model.ngram_guard, applied
# by the engine; its defaults are DeepSeek-OCR's released image script / vLLM model card settings. Pure Python
# here, so the CLIs parse and check them before torch is imported.
GUARD_WHITELIST = "<td>,</td>"


def add_guard_args(ap) -> None:
    """--no-repeat-ngram / --no-repeat-window / --no-repeat-whitelist on an argparse parser."""
    from nanoocr.model.ngram_guard import NGRAM_SIZE, WINDOW_SIZE
    ap.add_argument("--no-repeat-ngram", type=int, default=NGRAM_SIZE,
                    help=f"ban a token that would repeat an n-gram of this size seen in the window (vLLM "
                         f"NGramPerReqLogitsProcessor; 0: off; default {NGRAM_SIZE})")
    ap.add_argument("--no-repeat-window", type=int, default=WINDOW_SIZE,
                    help=f"how many generated tokens back the guard looks (default {WINDOW_SIZE})")
    ap.add_argument("--no-repeat-whitelist", default=GUARD_WHITELIST,
                    help=f"comma-separated strings never banned, each used when it is ONE token of this tokenizer "
                         f"(default {GUARD_WHITELIST!r}, DeepSeek's; '' for none)")


def check_guard_args(args) -> str | None:
    """The usage error of the guard flags, or None."""
    if args.no_repeat_ngram < 0:
        return f"--no-repeat-ngram must be >= 0 (0 turns the guard off), got {args.no_repeat_ngram}"
    if args.no_repeat_window < 1:
        return f"--no-repeat-window must be >= 1, got {args.no_repeat_window}"
    return None


def guard_kwargs(args, tokenizer) -> tuple[dict, dict]:
    """(Engine.generate kwargs, a description for reports) of the guard flags; the whitelist strings are mapped
    to this tokenizer's ids, and a string that is not one token is reported as left out (it cannot be
    whitelisted by id: vLLM's whitelist is ids too)."""
    from nanoocr.model.ngram_guard import single_token_ids
    texts = [t for t in args.no_repeat_whitelist.split(",") if t]
    ids = {t: sorted(single_token_ids(tokenizer.encode, [t])) for t in texts}
    whitelist = frozenset(i for v in ids.values() for i in v)
    info = {"ngram_size": args.no_repeat_ngram, "window_size": args.no_repeat_window,
            "whitelist": {t: (v[0] if v else None) for t, v in ids.items()},
            "semantics": "vLLM NGramPerReqLogitsProcessor" if args.no_repeat_ngram else "off"}
    left_out = [t for t, v in ids.items() if not v]
    if left_out:
        info["whitelist_left_out"] = f"{', '.join(left_out)}: not one token of this tokenizer"
    return {"no_repeat_ngram": args.no_repeat_ngram, "no_repeat_window": args.no_repeat_window,
            "no_repeat_whitelist": whitelist}, info
