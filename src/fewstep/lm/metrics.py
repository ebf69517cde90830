"""Decoding statistics, with the speculative-decoding metrics defined the way vLLM reports them."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class DecodeStats:
    """Counts from one decoding run; the rates are derived properties.

    A *draft* is one verification round of one row (vLLM's ``num_drafts``): ``gamma`` proposed
    tokens, of which a prefix is accepted. With several drafts per row, positions count along the
    path that was verified, so ``draft_tokens`` grows by ``gamma`` per round, not ``k * gamma``.
    """

    new_tokens: int
    seconds: float
    target_calls: int
    draft_calls: int = 0
    drafts: int = 0
    draft_tokens: int = 0
    accepted_tokens: int = 0
    accepted_per_position: tuple[int, ...] = ()
    drafted_per_position: tuple[int, ...] = ()  # rounds that proposed an i-th token (all of them at a fixed gamma)
    target_seconds: float = 0.0  # inside the target's forward calls
    draft_seconds: float = 0.0  # inside the draft's forward calls (or the n-gram lookup)

    @property
    def acceptance_rate(self) -> float | None:
        """Accepted draft tokens / proposed draft tokens."""
        return self.accepted_tokens / self.draft_tokens if self.draft_tokens else None

    @property
    def mean_acceptance_length(self) -> float | None:
        """Tokens emitted per verification round: 1 + accepted / drafts (the corrected or bonus token counts)."""
        return 1 + self.accepted_tokens / self.drafts if self.drafts else None

    @property
    def acceptance_per_position(self) -> tuple[float, ...]:
        """For each draft position i, the share of rounds proposing an i-th draft token that accepted it."""
        if self.drafted_per_position:
            return tuple(a / d if d else float("nan")
                         for a, d in zip(self.accepted_per_position, self.drafted_per_position))
        return tuple(a / self.drafts for a in self.accepted_per_position) if self.drafts else ()

    @property
    def mean_draft_length(self) -> float | None:
        """Draft tokens proposed per round (``gamma`` when fixed; the adaptive choice's mean otherwise)."""
        return self.draft_tokens / self.drafts if self.drafts else None

    @property
    def overhead_seconds(self) -> float:
        """Wall time outside the models' forward calls: sampling, verification, cache bookkeeping."""
        return self.seconds - self.target_seconds - self.draft_seconds

    @property
    def target_calls_per_token(self) -> float:
        return self.target_calls / self.new_tokens if self.new_tokens else float("nan")

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else float("nan")

    def to_dict(self) -> dict:
        derived = ("acceptance_rate", "mean_acceptance_length", "acceptance_per_position", "mean_draft_length",
                   "overhead_seconds", "target_calls_per_token", "tokens_per_second")
        return {**asdict(self), **{name: getattr(self, name) for name in derived}}
