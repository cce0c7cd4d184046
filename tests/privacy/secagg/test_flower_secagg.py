"""Secure aggregation through Flower's simulation engine: the coordinator only ever holds
masked vectors, a unit failing after sharing is tolerated, and the model still learns."""

from __future__ import annotations

import datetime as dt

from flwr.app import Context, Message

from clients.client_app import make_client_app
from privacy.secagg.flower import make_identities
from server.training import TrainingPlan
from tests.support.flower import run_flower, small_cdnow, write_units


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
    assert history[1]["secagg"]["masked"] == 5 and history[1]["secagg"]["signed"] == 5
    assert history[2]["secagg"]["dropped_after_sharing"] == ["unit_4"] and history[2]["units_trained"] == 4
    # round 1's consistency exchange carried round 2's advertisements and its unmask exchange round
    # 2's share stage: round 2 starts at the masked stage
    assert history[1]["secagg"]["advertised_in_advance"] == 0 and history[2]["secagg"]["advertised_in_advance"] == 5
    # unit_4, alive after its crash, was asked to advertise (and share) for round 3 on its own within
    # round 2's consistency (and unmask) exchanges: round 3 again starts with all five at masked
    assert history[3]["secagg"]["advertised_in_advance"] == 5 and history[3]["units_trained"] == 5

    def stage_of(m: Message) -> str | None:
        config = m.content.config_records.get("config")
        return config.get("secagg-stage") if config is not None else None

    advertise_messages = [m for m in grid.sent if stage_of(m) == "advertise"]
    share_messages = [m for m in grid.sent if stage_of(m) == "share"]
    assert len(advertise_messages) == 5 + 1 and len(share_messages) == 5 + 1
    # every round runs the consistency round: masked inputs (5, 5, 5), signatures (5, 4, 5)
    assert len([m for m in grid.sent if stage_of(m) == "consistency"]) == 5 + 4 + 5
    train_replies = [r for r in grid.replies if r.metadata.message_type.startswith("train") and not r.has_error()]
    assert train_replies
    for reply in train_replies:   # never a plain model update: keys, ciphertexts, masked vectors, shares
        assert "arrays" not in reply.content
        assert set(reply.content.keys()) in ({"secagg"}, {"secagg-masked", "metrics"})
    signatures = [r for r in train_replies if "secagg" in r.content and "signature" in r.content["secagg"]]
    assert len(signatures) == 5 + 4 + 5
