"""The coordinator's rounds (``SecAggAggregator``) against units running the real mod, over an
in-process transport: exact sums, the exchanges each round costs, and when a round must start
afresh instead of using the advertisements and shares carried on the previous round."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict

from privacy.secagg.config import SecAggConfig
from privacy.secagg.flower import STAGE, SecAggAggregator
from tests.privacy.secagg.harness import FlowerUnit, flower_units


class LocalGrid:
    """Delivers each message to the unit it names and returns the replies (the transport only;
    units and coordinator are the real components). Records the stages of every exchange."""

    def __init__(self, units: list[FlowerUnit]) -> None:
        self.units = {u.node_id: u for u in units}
        self.exchanges: list[list[str]] = []
        self.down: set[int] = set()

    def send_and_receive(self, messages, timeout=None):  # noqa: ANN001, ANN201
        messages = list(messages)
        self.exchanges.append(sorted(str(m.content["config"][STAGE]) for m in messages))
        replies = []
        for m in messages:
            unit = self.units[m.metadata.dst_node_id]
            if unit.node_id not in self.down:
                replies.append(unit.mod(m, unit.context, unit._train))
        return replies


@pytest.fixture
def federation(tmp_path):
    return flower_units(tmp_path / "ids", 6)


def _record() -> RecordDict:
    return RecordDict({"arrays": ArrayRecord({"w": Array(np.zeros(8))}),
                       "config": ConfigRecord({"server-round": 1})})


def test_rounds_start_at_masked_once_prepared_and_afresh_when_units_or_settings_change(federation):
    grid = LocalGrid(federation)
    aggregator = SecAggAggregator(SecAggConfig(threshold=0.6), min_units=3)
    first = [u.node_id for u in federation[:5]]

    total, survivors, facts = aggregator.run_round(grid, first, _record(), timeout=10)
    assert np.abs(total - sum(u.update for u in federation[:5])).max() <= facts["error_bound"]
    assert facts["advertised_in_advance"] == 0 and facts["signed"] == 5
    assert [e[0] for e in grid.exchanges] == ["advertise", "share", "masked", "consistency", "unmask"]

    grid.exchanges.clear()
    total, survivors, facts = aggregator.run_round(grid, first, _record(), timeout=10)
    assert np.abs(total - sum(u.update for u in federation[:5])).max() <= facts["error_bound"]
    assert facts["advertised_in_advance"] == 5
    assert [e[0] for e in grid.exchanges] == ["masked", "consistency", "unmask"]      # three exchanges

    # a unit that was not in the prepared round is sampled: everyone starts afresh, the newcomer too
    grid.exchanges.clear()
    everyone = [u.node_id for u in federation]
    total, survivors, facts = aggregator.run_round(grid, everyone, _record(), timeout=10)
    assert len(survivors) == 6 and facts["advertised_in_advance"] == 0
    assert np.abs(total - sum(u.update for u in federation)).max() <= facts["error_bound"]
    assert [e[0] for e in grid.exchanges] == ["advertise", "share", "masked", "consistency", "unmask"]

    # other settings (an L2 clip) than those pinned for the prepared round: afresh as well
    grid.exchanges.clear()
    total, survivors, facts = aggregator.run_round(grid, everyone, _record(), timeout=10, l2_clip=0.5)
    assert facts["advertised_in_advance"] == 0 and len(grid.exchanges) == 5
    clipped = [u.update * min(1.0, 0.5 / np.linalg.norm(u.update)) for u in federation]
    assert np.abs(total - sum(clipped)).max() <= facts["error_bound"]


def test_a_unit_down_at_masked_is_left_out_and_the_next_round_goes_on(federation):
    grid = LocalGrid(federation)
    aggregator = SecAggAggregator(SecAggConfig(threshold=0.6), min_units=3)
    nodes = [u.node_id for u in federation]
    aggregator.run_round(grid, nodes, _record(), timeout=10)
    grid.down = {federation[0].node_id}            # gone without a word (no error reply)
    total, survivors, facts = aggregator.run_round(grid, nodes, _record(), timeout=10)
    assert facts["dropped_after_sharing"] == ["unit_0"] and len(survivors) == 5
    assert np.abs(total - sum(u.update for u in federation[1:])).max() <= facts["error_bound"]
    # unit_0 did not answer, so it was not asked to advertise for the next round: with it sampled
    # again (and back up), the next round starts afresh for everyone and includes it
    grid.down = set()
    grid.exchanges.clear()
    total, survivors, facts = aggregator.run_round(grid, nodes, _record(), timeout=10)
    assert len(survivors) == 6 and facts["advertised_in_advance"] == 0
    assert np.abs(total - sum(u.update for u in federation)).max() <= facts["error_bound"]


def test_a_malformed_masked_reply_is_left_out_not_a_crash(federation):
    class Sloppy(FlowerUnit):
        def __init__(self, unit: FlowerUnit) -> None:
            self.__dict__.update(unit.__dict__)
            inner = unit.mod

            def mod(msg, context, call_next):  # noqa: ANN001, ANN202
                reply = inner(msg, context, call_next)
                if str(msg.content["config"][STAGE]) == "masked":   # a unit sending a short vector
                    return Message(RecordDict({"secagg-masked": ArrayRecord({"y": Array(np.zeros(3, dtype=np.uint64))})}),
                                   reply_to=msg)
                return reply

            self.mod = mod

    units = [Sloppy(federation[0]), *federation[1:]]
    grid = LocalGrid(units)
    total, survivors, facts = SecAggAggregator(SecAggConfig(), min_units=3).run_round(
        grid, [u.node_id for u in units], _record(), timeout=10)
    assert "unit_0" not in survivors and facts["dropped_after_sharing"] == ["unit_0"]
    assert np.abs(total - sum(u.update for u in federation[1:])).max() <= facts["error_bound"]
