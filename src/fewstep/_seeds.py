"""The default seeds, in one place: the held-out seeds every benchmark and every recipe's quality is measured
on, and the tuning seeds the tuners fit on (disjoint from them, so a tuned sampler is scored on noise it never saw).
"""

EVAL_SEEDS = range(256)
TUNE_SEEDS = range(100_000, 100_128)


def seed_text(seeds) -> str:
    """``a-b`` for a run of consecutive seeds, else a comma-separated list (the CLI's seed syntax)."""
    s = [int(v) for v in seeds]
    if s and s == list(range(s[0], s[0] + len(s))):
        return f"{s[0]}-{s[-1]}"
    return ",".join(map(str, s))
