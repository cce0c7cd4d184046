"""A unit's tags: every rule evaluated on its own users, locally (rules in :mod:`fedseg.tags`).

- :func:`tag_columns`: the features a rule may name, per user: :func:`clients.features.build_features`
  at the cutoff, the price features and the churn probability (NaN where there is none);
- :func:`quantile_histograms`: users per fixed bin of each feature the rules' quantiles need (the
  unit's share of the federated quantiles; one count per user per histogram);
- :func:`tag_users`: one boolean column per tag, and the tag x segment counts the coordinator sees.

Price features (where events carry ``price`` and ``item_id``): an item's usual price is the median
price of its purchases in the unit; ``priced_purchases`` counts a user's purchases with a price,
``discount_share`` is the share of them below 0.95 x the item's usual price and ``relative_price``
the mean of price / usual price.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from fedseg.contract import PURCHASE
from fedseg.tags import QUANTILE_EDGES, TAG_FEATURES, TagRule, evaluate

#: A price below this share of the item's usual price counts as a discount.
DISCOUNT_BELOW: float = 0.95


def price_features(events: pd.DataFrame, user_ids: pd.Series) -> pd.DataFrame:
    """``priced_purchases``, ``discount_share`` and ``relative_price`` of each user (NaN without prices)."""
    out = pd.DataFrame(index=pd.Index(user_ids, name="user_id"))
    priced = events.loc[(events["event_type"] == PURCHASE) & events["price"].notna() & events["item_id"].notna()]
    if priced.empty:
        out["priced_purchases"], out["discount_share"], out["relative_price"] = 0.0, np.nan, np.nan
        return out.reset_index(drop=True)
    usual = priced.groupby("item_id")["price"].transform("median")
    ratio = (priced["price"] / usual.where(usual > 0)).to_numpy()
    frame = pd.DataFrame({"user_id": priced["user_id"].to_numpy(), "ratio": ratio,
                          "discount": (ratio < DISCOUNT_BELOW).astype(float)})
    per_user = frame.groupby("user_id").agg(priced_purchases=("ratio", "size"), discount_share=("discount", "mean"),
                                            relative_price=("ratio", "mean"))
    out = out.join(per_user)
    out["priced_purchases"] = out["priced_purchases"].fillna(0.0)
    return out.reset_index(drop=True)


def tag_columns(features: pd.DataFrame, events: pd.DataFrame | None = None,
                scores: pd.DataFrame | None = None) -> dict[str, np.ndarray]:
    """Every feature a rule may name, per row of ``features`` (NaN where the unit has none)."""
    columns = {name: features[name].to_numpy(dtype=float) for name in TAG_FEATURES if name in features}
    if events is not None:
        prices = price_features(events, features["user_id"])
        for name in ("priced_purchases", "discount_share", "relative_price"):
            columns[name] = prices[name].to_numpy(dtype=float)
    if scores is not None:
        columns["churn_probability"] = (scores.set_index("user_id")["churn_probability"]
                                        .reindex(features["user_id"]).to_numpy(dtype=float))
    n = len(features)
    return {name: columns.get(name, np.full(n, np.nan)) for name in TAG_FEATURES}


def quantile_histograms(columns: dict[str, np.ndarray], features: list[str]) -> np.ndarray:
    """Users per bin of each named feature, concatenated in ``features`` order (missing values
    are in no bin)."""
    from clients.segments import binned

    parts = []
    for name in features:
        edges, values = QUANTILE_EDGES[name], columns[name]
        values = values[~np.isnan(values)]
        parts.append(np.bincount(binned(values, edges), minlength=len(edges)).astype(np.float64))
    return np.concatenate(parts) if parts else np.zeros(0)


def tag_users(rules: list[TagRule], columns: dict[str, np.ndarray], quantiles: dict[tuple[str, int], float]
              ) -> pd.DataFrame:
    """One boolean column per tag, in rule order."""
    return pd.DataFrame({rule.name: evaluate(rule, columns, quantiles) for rule in rules})


def tag_matrix(tags: pd.DataFrame, segment: np.ndarray, n_segments: int) -> tuple[np.ndarray, np.ndarray]:
    """Tagged users per (tag, segment) ``[T, S]`` and users per segment ``[S]``."""
    sizes = np.bincount(segment, minlength=n_segments).astype(np.float64)
    matrix = np.stack([np.bincount(segment, weights=tags[c].to_numpy(float), minlength=n_segments)
                       for c in tags.columns]) if len(tags.columns) else np.zeros((0, n_segments))
    return matrix, sizes


# ------------------------------------------------------------------------ the unit's answers
def _features_at(events: pd.DataFrame, users: pd.DataFrame | None, config: dict) -> pd.DataFrame:  # type: ignore[type-arg]
    import datetime as dt

    from clients.features import build_features
    from fedseg.config import FeatureConfig

    cutoff = dt.date.fromisoformat(str(config["cutoff"]))
    return build_features(events, FeatureConfig(cutoff=cutoff, horizon_days=1), users=users)


def quantile_answer(events: pd.DataFrame, users: pd.DataFrame | None, config: dict,  # type: ignore[type-arg]
                    rng: np.random.Generator) -> dict[str, list[float]]:
    """``query.tag_quantiles``: the histograms of the features the rules' quantiles name (and the
    three RFM histograms when segments are RFM segments), with the unit's noise."""
    import json

    from clients.segments import add_noise, rfm_histograms

    features = _features_at(events, users, config)
    names = json.loads(str(config["features"]))
    parts = [quantile_histograms(tag_columns(features, events), names)]
    if config.get("segment-by") == "rfm":
        parts += list(rfm_histograms(features).values())
    values = np.concatenate(parts) if parts else np.zeros(0)
    return {"histograms": add_noise(values, float(config.get("sigma", 0.0)), rng).tolist()}


def segments_of(features: pd.DataFrame, config: dict) -> tuple[np.ndarray, list[str]]:  # type: ignore[type-arg]
    """Each user's segment index and the segment names (lifecycle stages or RFM segments)."""
    from fedseg.config import LIFECYCLE_STAGES

    if config.get("segment-by", "lifecycle") == "rfm":
        from clients.segments import rfm_scores
        from fedseg.segments import RFM_SEGMENT_NAMES

        thresholds = {n: [int(b) for b in config[f"thr-{n}"]] for n in ("recency", "frequency", "monetary")}
        names = list(RFM_SEGMENT_NAMES)
        return pd.Index(names).get_indexer(rfm_scores(features, thresholds)["rfm_segment"]), names
    return features["lifecycle_stage"].cat.codes.to_numpy(), list(LIFECYCLE_STAGES)


def tags_answer(events: pd.DataFrame, users: pd.DataFrame | None, config: dict, rng: np.random.Generator,  # type: ignore[type-arg]
                output_dir: object, unit: str) -> dict[str, list[float]]:
    """``query.tags``: tag every user (the per-user file stays on the unit, ``tags_<unit>.parquet``
    in its output folder) and answer with the tag x segment counts and the segment sizes, noised."""
    import json
    import tomllib
    from pathlib import Path

    from clients.segments import add_noise
    from fedseg.io import write_table
    from fedseg.tags import parse_rules

    rules = parse_rules(tomllib.loads(str(config["rules"])), "the coordinator's tag rules")
    quantiles = {(k.split(":")[0], int(k.split(":")[1])): float(v) for k, v in json.loads(str(config["quantiles"])).items()}
    features = _features_at(events, users, config)
    tags = tag_users(rules, tag_columns(features, events), quantiles)
    segment, names = segments_of(features, config)
    if output_dir is not None:
        table = pd.DataFrame({"user_id": features["user_id"].to_numpy(), "segment": np.asarray(names)[segment]})
        table = pd.concat([table, tags], axis=1)
        table["tags"] = [",".join(t for t, on in zip(tags.columns, row) if on) for row in tags.to_numpy()]
        write_table(table, Path(str(output_dir)) / f"tags_{unit}.parquet")
    matrix, sizes = tag_matrix(tags, segment, len(names))
    sigma = float(config.get("sigma", 0.0))
    return {"matrix": add_noise(matrix, sigma, rng).ravel().tolist(), "sizes": add_noise(sizes, sigma, rng).tolist()}
