"""Drafters by name. Each lives in its own module behind the protocol in base.py."""

from __future__ import annotations

import importlib
from typing import Any

from .base import EMPTY_DRAFT, Draft, Drafter, StepResult, TargetInfo, merge

DEFAULT_METHOD = "auto"  # of generate, serve and the API

# name -> "module:Class"; imported lazily so one drafter's dependencies never slow another
DRAFTERS: dict[str, str] = {
    "none": "none:NoDrafter",
    "prompt-lookup": "prompt_lookup:PromptLookupDrafter",
    "token-recycling": "token_recycling:TokenRecyclingDrafter",
    "lookahead": "lookahead:LookaheadDrafter",
    "suffix": "suffix:SuffixDrafter",
    "ngram-adaptive": "ngram_adaptive:NgramAdaptiveDrafter",
    "retrieval": "retrieval:RetrievalDrafter",
    "auto": "auto:AutoDrafter",
    "draft-model": "draft_model:DraftModelDrafter",
    "eagle": "eagle:EagleDrafter",
    "medusa": "eagle:MedusaDrafter",
}


def make_drafter(method: str | Drafter, **options: Any) -> Drafter:
    """A drafter instance from a method name (or pass an instance through)."""
    if isinstance(method, Drafter):
        if options:
            raise ValueError("drafter options go to the drafter's constructor, not with an instance")
        return method
    if method not in DRAFTERS:
        raise ValueError(f"unknown method {method!r}; choose one of: {', '.join(DRAFTERS)}")
    module_name, class_name = DRAFTERS[method].split(":")
    cls = getattr(importlib.import_module(f"{__name__}.{module_name}"), class_name)
    try:
        return cls(**options)
    except TypeError as err:
        raise ValueError(f"bad option for method {method!r}: {err}") from None


__all__ = ["DEFAULT_METHOD", "DRAFTERS", "Draft", "Drafter", "EMPTY_DRAFT", "StepResult", "TargetInfo", "make_drafter", "merge"]
