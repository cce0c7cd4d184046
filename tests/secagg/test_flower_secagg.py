"""Secure aggregation through Flower's simulation engine: the coordinator only ever holds
masked vectors, a unit failing after sharing is tolerated, and the model still learns."""

from __future__ import annotations

import datetime as dt

from flwr.app import Context, Message

from clients.client_app import make_client_app
from privacy.secagg.flower import make_identities
from server.training import TrainingPlan
from tests.federated.conftest import run_flower, small_cdnow, write_units


def test_secure_rounds_on_flower(tmp_path):
    files = write_units(small_cdnow(5000), 5, tmp_path / "units")
    identities = tmp_path / "ids"
    make_identities(identities, [f"unit_{k}" for k in range(5)])

    def crash_unit_4(msg: Message, context: Context, call_next) -> Message:  # noqa: ANN001
        # unit_4 dies while training in round 2: after it shared its keys, before its masked input
        if context.node_config.get("partition-id") == 4 and msg.content["config"].get("server-round") == 2:
            raise RuntimeError("unit_4 crashed mid-round")
        return call_next(msg, context)

    flaky = make_client_app(files, secagg_identities=identities, train_mods=[crash_unit_4])

    plan = TrainingPlan(num_rounds=3, cutoff=dt.date(1997, 9, 30), horizon_days=273, output_dir=tmp_path / "run",
                        min_available_units=5, min_fit_units=3, secagg=True, secagg_threshold=3)
    results, grid = run_flower(plan, files, client_app=flaky)
    history = results[0].history
    assert history[-1]["auc"] > 0.72 > history[0]["auc"]
    assert history[1]["secagg"]["masked"] == 5
    assert history[2]["secagg"]["dropped_after_sharing"] == ["unit_4"] and history[2]["units_trained"] == 4
    # round 1's unmask exchange carried round 2's key advertisements: no separate advertise exchange
    assert history[1]["secagg"]["advertised_in_advance"] == 0 and history[2]["secagg"]["advertised_in_advance"] == 5
    # round 3: the four survivors advertised in advance; unit_4, back, is asked on its own and takes part
    assert history[3]["secagg"]["advertised_in_advance"] == 4 and history[3]["units_trained"] == 5
    advertise_messages = [m for m in grid.sent if m.content["config"].get("secagg-stage") == "advertise"]
    assert len(advertise_messages) == 5 + 1
    train_replies = [r for r in grid.replies if r.metadata.message_type.startswith("train") and not r.has_error()]
    assert train_replies
    for reply in train_replies:   # never a plain model update: keys, ciphertexts, masked vectors, shares
        assert "arrays" not in reply.content
        assert set(reply.content.keys()) in ({"secagg"}, {"secagg-masked", "metrics"})
