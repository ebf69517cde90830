"""Documented limits on sizes a user gives, so that a typo fails at once with a clear message instead of
hanging or exhausting memory (README, "Limits")."""

MAX_NFE = 100_000  # model evaluations per sample
MAX_SEEDS = 10_000_000  # seeds in one run (the CLI's ranges and lists, fewstep.sample's seeds)
MAX_RECIPE_BYTES = 64 * 2**20  # size of a recipe file
MAX_JSON_DEPTH = 64  # nesting of a recipe's JSON


def check_count(what: str, value, low: int, high: int) -> int:
    """``value`` as an int in ``[low, high]`` (bools refused), or a ``ValueError`` that names ``what``."""
    allowed = f"a positive integer up to {high:,}" if low == 1 else f"an integer in {low}..{high:,}"
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{what} must be {allowed}; got {value!r}")
    return value
