"""How many tokens a draft model drafts per step: a fixed number, or chosen online ("auto")."""

from __future__ import annotations

from typing import Sequence


class DraftLength:
    """How many tokens to draft: a fixed number, or chosen online ("auto").

    "auto" decides after each drafted token whether to draft another. Two ingredients:

    - the chance each drafted token is accepted, `accept_chance(confidence)`: the draft's top
      probability, calibrated online by a histogram of observed acceptance per confidence bin
      (SpecDec++, Huang et al. 2024, arXiv 2405.19715, predicts acceptance with a trained head;
      a draft model is rarely calibrated to its target, and when draft == target every bin
      goes to 1). With P_i the chance that the first i drafted tokens are all accepted, a chain
      of k tokens yields 1 + P_1 + ... + P_k tokens per step in expectation.
    - the cost of a step, measured online: `draft_s` per draft pass and `verify_s[n]`, the
      target step for n inputs. On a GPU verification is flat in n; on a CPU it grows in steps.

    Drafting goes on while some longer chain promises more tokens per second than stopping now,
    with the tokens not drafted yet predicted at the running acceptance rate (the online length
    adaptivity that PEARL argues for, Liu et al. 2024, arXiv 2408.11850). Sizes never measured
    are taken to cost what the largest measured smaller size costs: optimistic, so they get
    tried, and then known. A fixed `threshold` replaces all this with SpecDec++'s rule: stop
    once P_k < threshold.
    """

    DECAY = 0.9  # weight of the past in the running cost estimates
    BINS = 10  # confidence bins of the acceptance histogram
    BIN_DECAY = 0.98  # weight of the past in the histogram and the running acceptance rate
    PRIOR = 2.0  # pseudo-observations per bin, at the bin's own confidence
    FREE = 1.05  # an input costing at most 5% more than one fewer is a free slot
    DRAFT_GUESS = 0.3  # a draft pass, in one-token target steps, until one is measured

    def __init__(self, length: int | str = 4, threshold: float | None = None, max_length: int = 12):
        if length == "auto":
            self.fixed = None
            self.max_length = max_length
        elif isinstance(length, int) and not isinstance(length, bool) and length >= 1:
            self.fixed = length
            self.max_length = length
        else:
            raise ValueError(f"draft-model option length must be an integer >= 1 or 'auto', got {length!r}")
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
            raise ValueError(f"draft-model option max_length must be an integer >= 1, got {max_length!r}")
        if threshold is not None and (
            isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 < threshold < 1
        ):
            raise ValueError(f"draft-model option threshold must be in (0, 1), got {threshold!r}")
        self.threshold = threshold
        centers = [(b + 0.5) / self.BINS for b in range(self.BINS)]
        self.hits = [self.PRIOR * c for c in centers]  # accepted guesses per confidence bin
        self.tries = [self.PRIOR] * self.BINS  # guesses the target looked at per bin
        self.rate = 0.6  # running acceptance rate of the guesses the target looked at
        self._draft_s: float | None = None  # seconds per one-token draft pass, once measured
        self.verify_s: dict[int, float] = {}  # inputs -> seconds per target step

    @property
    def settings(self) -> tuple:
        return (self.fixed, self.max_length, self.threshold)

    # ---- acceptance ---------------------------------------------------------------------
    def _bin(self, confidence: float) -> int:
        return min(self.BINS - 1, max(0, int(confidence * self.BINS)))

    def accept_chance(self, confidence: float) -> float:
        """Observed acceptance of guesses made with this confidence."""
        b = self._bin(confidence)
        return self.hits[b] / self.tries[b]

    def record(self, confidences: Sequence[float], accepted: int) -> None:
        """Positions 0..accepted-1 of a chain were accepted, position `accepted` (if drafted) was not."""
        for i, c in enumerate(confidences[: accepted + 1]):
            hit = 1.0 if i < accepted else 0.0
            b = self._bin(c)
            self.hits[b] = self.BIN_DECAY * self.hits[b] + hit
            self.tries[b] = self.BIN_DECAY * self.tries[b] + 1.0
            self.rate = self.BIN_DECAY * self.rate + (1 - self.BIN_DECAY) * hit

    # ---- cost ---------------------------------------------------------------------------
    def verify_cost(self, inputs: int) -> float:
        """Seconds of a target step with this many inputs (measured, or the largest measured
        smaller size's; 1.0 before anything is measured)."""
        known = [n for n in self.verify_s if n <= inputs]
        if known:
            return self.verify_s[max(known)]
        return min(self.verify_s.values()) if self.verify_s else 1.0

    def free_slots(self, inputs: int, most: int) -> int:
        """How many more inputs (up to `most`) a step of `inputs` inputs could take at no cost."""
        base, extra = self.verify_cost(inputs), 0
        while extra < most and self.verify_cost(inputs + extra + 1) <= self.FREE * base:
            extra += 1
        return extra

    def record_cost(self, extend_s: float, extends: int, step_s: float, inputs: int) -> None:
        """One step: `extends` one-token draft passes took `extend_s`; the target step with
        `inputs` inputs took `step_s`. (Only one-token draft passes count: a catch-up of several
        tokens is left out of the per-pass cost.)"""
        if extends:
            per_pass = extend_s / extends
            old_pass = self._draft_s
            self._draft_s = per_pass if old_pass is None else self.DECAY * old_pass + (1 - self.DECAY) * per_pass
        old = self.verify_s.get(inputs)
        self.verify_s[inputs] = step_s if old is None else self.DECAY * old + (1 - self.DECAY) * step_s

    @property
    def draft_s(self) -> float:
        """Seconds per draft pass: measured, or until then a guess of 0.3 one-token target steps."""
        if self._draft_s is not None:
            return self._draft_s
        return self.DRAFT_GUESS * self.verify_cost(1)

    # ---- the decision -------------------------------------------------------------------
    def keep_going(self, confidences: Sequence[float]) -> bool:
        """After drafting tokens with these confidences, draft one more?"""
        if self.fixed is not None:
            return len(confidences) < self.fixed
        if len(confidences) >= self.max_length:
            return False
        chance = 1.0
        survive = []  # P_1 .. P_k
        for c in confidences:
            chance *= self.accept_chance(c)
            survive.append(chance)
        if self.threshold is not None:
            return chance >= self.threshold
        return self._longer_pays(survive)

    def _longer_pays(self, survive: list[float]) -> bool:
        """Does some chain longer than k = len(survive) promise more tokens per second?"""
        k = len(survive)
        tokens = 1.0 + sum(survive)
        now = tokens / (k * self.draft_s + self.verify_cost(k + 1))
        chance = survive[-1]
        for longer in range(k + 1, self.max_length + 1):
            chance *= self.rate
            tokens += chance
            if tokens / (longer * self.draft_s + self.verify_cost(longer + 1)) > now:
                return True
        return False
