"""Baselines of a federated CLV run, on the same held-out users (simulation only: they pool data).

- ``centralised``: the same hurdle model (:class:`fedseg.models.ClvMLP`), features and
  standardisation, trained on the pooled training users for ``rounds x local_epochs`` epochs;
- ``bgnbd_gamma_gamma``: BG/NBD expected purchase days times Gamma-Gamma's expected value of a
  purchase day, fitted with ``lifetimes`` on the calibration period (:mod:`simulations.btyd`);
  users without a calibration purchase predict 0;
- ``past_spend``: each user's spend before the cutoff (``monetary_total``) as the ranking score.
  It is a sum over the user's past, not a forecast of the window: its MAE, RMSE and bias say how
  far the past is from the future in money, its Gini and top-decile capture how well it ranks.

``exact_pooled`` scores the federated model on the pooled test users exactly (the federated
figures come from merged histograms; under DP they are noisy releases).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pandas as pd

from clients.training import TrainParams
from fedseg.config import FeatureConfig, TrainingPlan
from fedseg.value_metrics import exact_clv_metrics


def clv_baselines(events: pd.DataFrame, users: pd.DataFrame | None, feature_cfg: FeatureConfig, plan: TrainingPlan,
                  result: Any) -> dict[str, Any]:
    """``{"exact_pooled": figures, "baselines": {name: figures}}`` on the pooled test users."""
    from clients.features import build_features
    from simulations.baseline import centralised_predictions, pooled_data, score_arrays
    from simulations.btyd import fit_bgnbd

    data = pooled_data(events, feature_cfg, plan.model, users)
    assert data.spend is not None
    test = data.test_mask
    actual = data.spend[test]
    test_users = data.user_ids[test]
    federated = score_arrays(data, plan.model, result.arrays, result.scaler_mean, result.scaler_std, target="clv")
    baselines: dict[str, Any] = {}
    started = time.perf_counter()
    params = TrainParams(epochs=plan.num_rounds * plan.local_epochs, learning_rate=plan.learning_rate,
                         batch_size=plan.batch_size, seed=plan.seed, target="clv")
    central, _ = centralised_predictions(data, plan.model, params)
    baselines["centralised"] = {**exact_clv_metrics(actual, central), "seconds": round(time.perf_counter() - started, 2)}
    try:
        fitted = fit_bgnbd(events, feature_cfg.cutoff, feature_cfg.horizon_days, with_spend=True)
        assert fitted.expected_spend is not None
        btyd = fitted.expected_spend.reindex(test_users).fillna(0.0).to_numpy()
        baselines["bgnbd_gamma_gamma"] = {**exact_clv_metrics(actual, btyd), "params": fitted.params}
    except Exception as exc:  # noqa: BLE001 - the BTYD fits can fail to converge on odd data; say so
        baselines["bgnbd_gamma_gamma"] = {"error": f"{type(exc).__name__}: {exc}"}
    past = build_features(events, feature_cfg, users=users).set_index("user_id")["monetary_total"]
    baselines["past_spend"] = exact_clv_metrics(actual, past.reindex(test_users).fillna(0.0).to_numpy())
    return {"exact_pooled": exact_clv_metrics(actual, federated), "baselines": baselines,
            "n_test": int(test.sum()), "test_spend_total": float(np.sum(actual))}
