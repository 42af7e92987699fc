"""GenerationConfig: what a request asks for, validated once with errors that name the fix."""

from __future__ import annotations

from dataclasses import dataclass, field

from .sampling import SamplingParams


@dataclass(frozen=True)
class GenerationConfig:
    max_new_tokens: int = 128
    temperature: float = 0.0  # 0 = greedy
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    budget: int | str | None = None  # draft tokens per step; None = the drafter's default; "auto"
    ignore_eos: bool = False
    sampling: SamplingParams = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int):
            raise ValueError(f"max_new_tokens must be an integer >= 0, got {self.max_new_tokens!r}")
        if self.max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {self.max_new_tokens}")
        if self.budget is not None and self.budget != "auto" and (
            isinstance(self.budget, bool) or not isinstance(self.budget, int) or self.budget < 1
        ):
            raise ValueError(
                f"budget (draft tokens per step) must be an integer >= 1 or 'auto', got {self.budget!r}"
            )
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)
        if any(not isinstance(s, str) or not s for s in stop):
            raise ValueError(f"stop strings must be non-empty strings, got {self.stop!r}")
        object.__setattr__(self, "stop", stop)
        object.__setattr__(
            self, "sampling", SamplingParams(self.temperature, self.top_k, self.top_p, self.seed)
        )
