"""The releases of a federated tag report: the quantile histograms and the tag x segment counts.

Sensitivities (add/remove one end user), computed by the unit from what it is asked to send:

- ``query.tag_quantiles``: one count in each of the ``Q`` feature histograms (plus the three RFM
  histograms when segments are RFM segments): squared L2 sensitivity ``Q (+ 3)``;
- ``query.tags``: one segment size and, in that segment's column, one count per tag the user holds
  (at most ``T`` tags, the unit counts the rules itself): ``T + 1``.
"""

from __future__ import annotations

import json
import math
import tomllib
from typing import Any

from privacy.accounting import Release

TASK = "tags"


def step_sensitivity(step: str, config: dict[str, Any]) -> float:
    """Squared L2 sensitivity of a tag step's one Gaussian release."""
    if step == "quantiles":
        return float(len(json.loads(str(config["features"]))) + (3 if config.get("segment-by") == "rfm" else 0))
    if step == "tags":
        return float(len(tomllib.loads(str(config["rules"])).get("tags", {})) + 1)
    raise ValueError(f"unknown tag step {step!r}")


def tag_releases(step: str, config: dict[str, Any]) -> list[Release]:
    """The release of a tag step from its config's ``sigma`` (empty without noise)."""
    sigma = float(config.get("sigma", 0.0))
    if sigma <= 0:
        return []
    sens = step_sensitivity(step, config)
    return [Release(noise_multiplier=sigma / math.sqrt(sens), task=TASK)] if sens > 0 else []
