"""What a load run sends: prompt and output lengths (fixed, drawn, or from a file), synthetic text, arrivals.

Pure functions and small frozen types; no Locust here, so the tests and the CLI use them directly. Datasets are
read by :mod:`forge_slo.load.datasets` and request bodies built by :mod:`forge_slo.load.requests`.
"""

from __future__ import annotations

import math
import random
import statistics
from dataclasses import dataclass
from typing import Literal

from forge_slo.load.datasets import Dataset, Prompt, load_dataset, read_lengths

__all__ = ["Arrivals", "Dataset", "LengthDist", "Prompt", "load_dataset", "parse_length", "synthetic_text"]

# Three-letter words: " the" is one token in the BPE tokenizers of Llama, Qwen and GPT models, and four
# characters are one token in the simulator's estimate (characters / 4), so N words are about N tokens.
_WORDS = (
    "the", "and", "for", "you", "not", "are", "but", "can", "all", "one", "was", "has", "her", "his", "out",
    "day", "get", "new", "now", "old", "see", "two", "way", "who", "its", "man", "did", "say", "any", "may",
    "use", "how", "our", "too", "own", "set", "put", "end", "why", "big", "few", "ask", "men", "run", "try",
    "far", "low", "yes", "sun", "sea", "air", "art", "bed", "box", "car", "cat", "cup", "dog", "egg", "eye",
    "fun", "hat", "key", "leg", "map", "net", "oil", "pen", "red", "sky", "tea", "top", "war", "win", "job",
)


@dataclass(frozen=True)
class LengthDist:
    """A length in tokens: fixed, uniform in [a, b], normal(mean, stddev) rounded and clamped to >= 1, or drawn
    from the lengths of a file (``empirical``: ``values``, read from ``source``)."""

    kind: Literal["fixed", "uniform", "normal", "empirical"]
    a: float
    b: float = 0.0
    values: tuple[int, ...] = ()
    source: str = ""

    def sample(self, rng: random.Random) -> int:
        if self.kind == "fixed":
            return int(self.a)
        if self.kind == "uniform":
            return rng.randint(int(self.a), int(self.b))
        if self.kind == "empirical":
            return self.values[rng.randrange(len(self.values))]
        return max(1, round(rng.gauss(self.a, self.b)))

    @property
    def mean(self) -> float:
        if self.kind == "uniform":
            return (self.a + self.b) / 2
        if self.kind == "empirical":
            return statistics.fmean(self.values)
        return self.a

    def describe(self) -> str:
        if self.kind == "fixed":
            return f"{int(self.a)}"
        if self.kind == "uniform":
            return f"uniform:{int(self.a)}:{int(self.b)}"
        if self.kind == "empirical":
            return f"file:{self.source} ({len(self.values)} lengths, mean {self.mean:.1f})"
        return f"normal:{self.a:g}:{self.b:g}"


def parse_length(text: str, flag: str = "length") -> LengthDist:
    """``128``, ``uniform:64:256``, ``normal:128:32`` or ``file:PATH`` (one length per line, or a JSON array);
    raises ValueError with the reason (UsageError naming ``flag`` and the file for a bad file)."""
    if text.strip().startswith("file:"):
        path = text.strip()[len("file:"):].strip()
        if not path:
            raise ValueError(f"{text!r}: file:PATH needs a path")
        values = read_lengths(path, flag)
        return LengthDist("empirical", min(values), max(values), values, path)
    parts = [p.strip() for p in text.strip().split(":")]
    try:
        if len(parts) == 1:
            n = int(parts[0])
            if n < 1:
                raise ValueError(f"{text!r} must be at least 1")
            return LengthDist("fixed", n)
        if parts[0] == "fixed" and len(parts) == 2:
            return parse_length(parts[1])
        if parts[0] == "uniform" and len(parts) == 3:
            lo, hi = int(parts[1]), int(parts[2])
            if not 1 <= lo <= hi:
                raise ValueError(f"{text!r} needs 1 <= MIN <= MAX")
            return LengthDist("uniform", lo, hi)
        if parts[0] == "normal" and len(parts) == 3:
            mean, sd = float(parts[1]), float(parts[2])
            if not (math.isfinite(mean) and math.isfinite(sd)) or mean < 1 or sd < 0:
                raise ValueError(f"{text!r} needs MEAN >= 1 and STDDEV >= 0")
            return LengthDist("normal", mean, sd)
    except ValueError as exc:
        if "needs" in str(exc) or "at least" in str(exc):
            raise
        raise ValueError(f"{text!r}: numbers expected ({exc})") from None
    raise ValueError(f"{text!r} is not N, uniform:MIN:MAX, normal:MEAN:STDDEV or file:PATH")


def synthetic_text(tokens: int, rng: random.Random) -> str:
    """About ``tokens`` tokens of text: random three-letter words, so prompts do not share a prefix."""
    return " ".join(rng.choice(_WORDS) for _ in range(max(1, tokens)))


class Arrivals:
    """Intervals between arrivals of an open-loop stream of ``rate`` requests per second.

    ``gamma`` has shape ``burstiness`` and mean 1/rate (vLLM's benchmark uses the same): burstiness 1 is
    Poisson, below 1 arrivals come in bursts, above 1 more evenly spaced.
    """

    def __init__(self, kind: str, rate: float, burstiness: float, rng: random.Random) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.kind = kind
        self.rate = rate
        self.burstiness = burstiness
        self.rng = rng

    def interval(self) -> float:
        if self.kind == "constant":
            return 1.0 / self.rate
        if self.kind == "gamma":
            return self.rng.gammavariate(self.burstiness, 1.0 / (self.rate * self.burstiness))
        return self.rng.expovariate(self.rate)
