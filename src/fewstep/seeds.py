"""The default seeds, in one place: the held-out seeds every benchmark and every recipe's quality is measured
on, and the tuning seeds the tuners fit on (disjoint from them, so a tuned sampler is scored on noise it never saw).
"""

from fewstep.limits import MAX_SEEDS

EVAL_SEEDS = range(256)
TUNE_SEEDS = range(100_000, 100_128)


def seed_text(seeds) -> str:
    """``a-b`` for a run of consecutive seeds, else a comma-separated list (the CLI's seed syntax)."""
    s = [int(v) for v in seeds]
    if s and s == list(range(s[0], s[0] + len(s))):
        return f"{s[0]}-{s[-1]}"
    return ",".join(map(str, s))


def parse_seeds(text: str) -> list[int]:
    """``"0-63"``, ``"1,5,9"`` or a mix such as ``"0-3,10"``; seeds are non-negative and unique."""
    seeds: list[int] = []
    for part in text.split(","):
        part = part.strip()
        try:
            if "-" in part:
                a, b = (int(v) for v in part.split("-", 1))
                if b < a:
                    raise ValueError(f"the seed range {part!r} is empty: its end is below its start")
                if len(seeds) + (b - a + 1) > MAX_SEEDS:  # checked before the range is expanded
                    raise ValueError(f"the seed range {part!r} makes more than {MAX_SEEDS:,} seeds (the limit)")
                seeds.extend(range(a, b + 1))
            else:
                seeds.append(int(part))
        except ValueError as exc:
            if "seed range" in str(exc):
                raise
            raise ValueError(f"bad seeds {text!r}: write a range like 0-63, a list like 1,5,9, or a mix") from None
    if len(seeds) > MAX_SEEDS:
        raise ValueError(f"{text!r} gives more than {MAX_SEEDS:,} seeds (the limit)")
    if any(s < 0 for s in seeds):
        raise ValueError(f"seeds must be non-negative; got {text!r}")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds repeat in {text!r}")
    return seeds
