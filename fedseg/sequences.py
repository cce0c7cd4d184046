"""The event-sequence input of the sequence models, without torch: units build sequences from
their data (:mod:`clients.dataset`) in processes that need not import torch."""

from __future__ import annotations

from typing import Final

from fedseg.config import ModelName

#: Event types with their own embedding; 0 is padding, the last index is "other".
SEQ_EVENT_TYPES: Final = ("purchase", "visit", "login", "click", "refund")
SEQ_VOCAB: Final = len(SEQ_EVENT_TYPES) + 2
#: Numeric channels per sequence step.
SEQ_NUMERIC: Final = 3
DEFAULT_SEQ_LEN: Final = 16


def uses_sequences(name: ModelName) -> bool:
    """Whether the model reads event sequences (units then build them locally)."""
    return name == "gru"
