"""OCR metrics, defined as the public benchmarks define them (docs/FACTS.md, "Metric definitions").

- exact_match:            pred == gt after stripping surrounding whitespace.
- cer:                    Levenshtein(pred, gt) / len(gt) (character error rate; can exceed 1).
- edit_distance:          Levenshtein(pred, gt) / max(len(pred), len(gt))  (Fox / OmniDocBench text).
- edit_distance_omnidoc:  the same after OmniDocBench's normalization of both sides: inline LaTeX turned
                          into unicode, then only letters, digits and CJK characters kept (Unicode NFC
                          first, so a decomposed "e\u0301" counts as the letter "é", not "e" + a dropped mark;
                          case is kept, as OmniDocBench keeps it).
- fox precision/recall/F1: over the SETS of unique words (whitespace split; CJK runs are segmented with
                          jieba when it is installed, else into single characters; Latin runs glued to
                          CJK stay whole words: "GPT模型" → {"GPT", "模", "型"}).

Lengths are in Unicode code points (Python `len`), so an emoji with a skin-tone modifier counts as two.

Edit distances come from rapidfuzz (C++), not a hand-written DP.
"""
import re
import unicodedata

from rapidfuzz.distance import Levenshtein

# Every metric `score` computes, in report order: the one list summaries, tables and callers iterate.
METRICS = ("exact_match", "cer", "edit_distance", "edit_distance_omnidoc", "fox_precision", "fox_recall", "fox_f1")
# Which direction is better, for tables: readers should not have to remember that CER is an error rate.
LOWER_IS_BETTER = frozenset({"cer", "edit_distance", "edit_distance_omnidoc"})


def exact_match(pred: str, gt: str) -> float:
    return float(pred.strip() == gt.strip())


def cer(pred: str, gt: str) -> float:
    # Empty reference: any output is all insertions; define 0 only for an empty prediction too.
    if not gt:
        return 0.0 if not pred else 1.0
    return Levenshtein.distance(pred, gt) / len(gt)


def edit_distance(pred: str, gt: str) -> float:
    n = max(len(pred), len(gt))
    return Levenshtein.distance(pred, gt) / n if n else 0.0


# A small table of the LaTeX commands that appear inline in documents; anything else loses its backslash.
_LATEX_UNICODE = {
    "alpha": "α", "beta": "β", "gamma": "γ", "delta": "δ", "epsilon": "ε", "varepsilon": "ε", "zeta": "ζ",
    "eta": "η", "theta": "θ", "iota": "ι", "kappa": "κ", "lambda": "λ", "mu": "μ", "nu": "ν", "xi": "ξ",
    "pi": "π", "rho": "ρ", "sigma": "σ", "tau": "τ", "upsilon": "υ", "phi": "φ", "varphi": "φ", "chi": "χ",
    "psi": "ψ", "omega": "ω", "Gamma": "Γ", "Delta": "Δ", "Theta": "Θ", "Lambda": "Λ", "Xi": "Ξ", "Pi": "Π",
    "Sigma": "Σ", "Phi": "Φ", "Psi": "Ψ", "Omega": "Ω", "times": "×", "cdot": "·", "pm": "±", "leq": "≤",
    "geq": "≥", "neq": "≠", "approx": "≈", "infty": "∞", "sum": "∑", "prod": "∏", "int": "∫", "partial": "∂",
    "nabla": "∇", "rightarrow": "→", "leftarrow": "←", "to": "→", "in": "∈", "degree": "°", "circ": "∘",
}
_INLINE_MATH = re.compile(r"\\\((.+?)\\\)|\$(.+?)\$", re.S)
_LATEX_CMD = re.compile(r"\\([A-Za-z]+)")


def _latex_to_unicode(math: str) -> str:
    math = _LATEX_CMD.sub(lambda m: _LATEX_UNICODE.get(m.group(1), m.group(1)), math)
    return math.replace("{", "").replace("}", "").replace("^", "").replace("_", "")


def _is_cjk(ch: str) -> bool:
    cp = ord(ch)
    return (0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x2A6DF
            or 0xF900 <= cp <= 0xFAFF or 0x3040 <= cp <= 0x30FF or 0xAC00 <= cp <= 0xD7AF)


def normalize_omnidoc(text: str) -> str:
    """Inline LaTeX → unicode, then keep only letters, digits and CJK characters."""
    text = _INLINE_MATH.sub(lambda m: _latex_to_unicode(m.group(1) or m.group(2)), text)
    text = unicodedata.normalize("NFC", text)
    # Unicode categories L* (letters) and N* (digits/numbers); CJK ideographs are category Lo already.
    return "".join(ch for ch in text if unicodedata.category(ch)[0] in "LN" or _is_cjk(ch))


def edit_distance_omnidoc(pred: str, gt: str) -> float:
    return edit_distance(normalize_omnidoc(pred), normalize_omnidoc(gt))


def _split_cjk(token: str) -> list[str]:
    """Runs of CJK / non-CJK characters: "GPT模型" → ["GPT", "模型"]."""
    runs: list[str] = []
    for ch in token:
        if runs and _is_cjk(ch) == _is_cjk(runs[-1][-1]):
            runs[-1] += ch
        else:
            runs.append(ch)
    return runs


def _words(text: str) -> set[str]:
    words = set()
    for token in text.split():
        if not any(_is_cjk(ch) for ch in token):
            words.add(token)
            continue
        for run in _split_cjk(token):
            if not _is_cjk(run[0]):
                words.add(run)
                continue
            try:  # Fox segments Chinese with jieba; without it, single characters are the honest fallback
                import jieba
                words.update(w for w in jieba.lcut(run) if w.strip())
            except ImportError:
                words.update(run)
    return words


def fox_scores(pred: str, gt: str) -> tuple[float, float, float]:
    """(precision, recall, f1) over unique words. Two empty texts agree perfectly."""
    p, g = _words(pred), _words(gt)
    if not p and not g:
        return 1.0, 1.0, 1.0
    common = len(p & g)
    precision = common / len(p) if p else 0.0
    recall = common / len(g) if g else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def score(pred: str, gt: str) -> dict[str, float]:
    """Every metric for one (prediction, ground truth) pair."""
    precision, recall, f1 = fox_scores(pred, gt)
    values = (exact_match(pred, gt), cer(pred, gt), edit_distance(pred, gt), edit_distance_omnidoc(pred, gt),
              precision, recall, f1)
    return dict(zip(METRICS, values, strict=True))


def summarize(rows: list[dict[str, float]]) -> dict[str, float]:
    """Mean of each metric over samples (pages), plus n; when the rows hold their outputs ("pred", as
    transcribe.evaluate_records writes them), the repetition figures too (repetition.repetition_summary:
    repetition_rate, n_looped, olmocr_repeat_fail_rate, and no_stop_rate when the rows say "stopped")."""
    n = len(rows)
    out = {k: (sum(r[k] for r in rows) / n if n else 0.0) for k in METRICS}
    out["n"] = n
    if all("pred" in r for r in rows):
        from nanoocr.eval.repetition import repetition_summary
        stopped = [r["stopped"] for r in rows] if all("stopped" in r for r in rows) else None
        rep = repetition_summary([r["pred"] for r in rows], stopped=stopped)
        out.update({k: v for k, v in rep.items() if k != "n"})
    return out
