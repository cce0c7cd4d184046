"""The outgoing guard refuses anything but model arrays and allow-listed aggregates."""

from __future__ import annotations

import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict

from clients.guard import outgoing_guard_mod
from fedseg.models import build_model


@pytest.fixture(autouse=True)
def task_identity():
    """Messages are built inside a Flower task; set the identity the runtime would set."""
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1
    yield


def incoming(kind: str = "train") -> Message:
    model = build_model("mlp")
    content = RecordDict({"arrays": ArrayRecord(model.state_dict()), "config": ConfigRecord({"model": "mlp"})})
    return Message(content=content, dst_node_id=1, message_type=kind)


def context() -> Context:
    return Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})


def run_guard(kind: str, make_reply) -> Message:  # noqa: ANN001
    return outgoing_guard_mod(incoming(kind), context(), lambda msg, ctx: make_reply(msg))


def test_model_update_with_allowed_metrics_passes():
    def reply(msg):
        return Message(RecordDict({"arrays": ArrayRecord(build_model("mlp").state_dict()),
                                   "metrics": MetricRecord({"num-examples": 10, "train-loss": 0.5})}), reply_to=msg)

    out = run_guard("train", reply)
    assert not out.has_error()
    assert "arrays" in out.content


def test_per_user_scores_are_refused():
    def reply(msg):
        return Message(RecordDict({"metrics": MetricRecord({"num-examples": 3, "scores": [0.1, 0.7, 0.2]})}),
                       reply_to=msg)

    out = run_guard("evaluate", reply)
    assert out.has_error()
    assert "metric 'scores' is not in the evaluate allow-list" in out.error.reason
    assert not out.has_content()


def test_extra_or_reshaped_arrays_are_refused():
    def extra(msg):
        import torch

        state = dict(build_model("mlp").state_dict())
        state["user_embeddings"] = torch.zeros(5, 3)
        record = ArrayRecord(state)
        return Message(RecordDict({"arrays": record, "metrics": MetricRecord({"num-examples": 1})}), reply_to=msg)

    out = run_guard("train", extra)
    assert out.has_error() and "unexpected ['user_embeddings']" in out.error.reason

    def wrong_model(msg):
        return Message(RecordDict({"arrays": ArrayRecord(build_model("gru").state_dict()),
                                   "metrics": MetricRecord({"num-examples": 1})}), reply_to=msg)

    assert run_guard("train", wrong_model).has_error()


def test_config_records_and_arrays_in_evaluate_replies_are_refused():
    def with_config(msg):
        return Message(RecordDict({"config": ConfigRecord({"user": "u1"})}), reply_to=msg)

    assert "config record" in run_guard("evaluate", with_config).error.reason

    def arrays_in_eval(msg):
        return Message(RecordDict({"arrays": ArrayRecord(build_model("mlp").state_dict())}), reply_to=msg)

    assert run_guard("evaluate", arrays_in_eval).has_error()


def test_overlong_lists_are_refused():
    def long_hist(msg):
        return Message(RecordDict({"metrics": MetricRecord({"hist-pos": list(range(5000))})}), reply_to=msg)

    assert "holds 5000 values" in run_guard("evaluate", long_hist).error.reason


def test_a_train_reply_may_carry_an_evaluation_of_the_incoming_model_and_nothing_else():
    """``evaluate-incoming``: the train reply's ``evaluation`` record follows the evaluate allow-list."""
    def reply(extra):  # noqa: ANN001, ANN202
        def make(msg):  # noqa: ANN001, ANN202
            evaluation = {"num-examples": 10, "loss-sum": 5.0, "brier-sum": 2.0, "hist-pos": [1.0], "hist-neg": [2.0]}
            return Message(RecordDict({"arrays": ArrayRecord(build_model("mlp").state_dict()),
                                       "metrics": MetricRecord({"num-examples": 10}),
                                       "evaluation": MetricRecord({**evaluation, **extra})}), reply_to=msg)
        return make

    assert not run_guard("train", reply({})).has_error()
    refused = run_guard("train", reply({"scores": [0.1, 0.7]}))
    assert refused.has_error() and "metric 'scores' is not in the train allow-list" in refused.error.reason
    # the train allow-list does not leak into the evaluation record, nor the evaluation list into metrics
    assert run_guard("train", reply({"train-loss": 0.3})).has_error()


def test_a_masked_effects_table_must_be_as_long_as_the_cells_the_coordinator_named():
    """Under secure aggregation the effects reply is one uint64 vector of segments x actions x arms x
    statistics values (here 2 x 3 x 2 x 5 = 60); anything else (a longer vector that could carry
    more, a float table) is refused before it leaves the unit."""
    import numpy as np
    from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict

    from clients.guard import GUARD_ERROR_CODE, outgoing_guard_mod
    from fedseg import protocol

    config = ConfigRecord({"secagg-stage": "masked", "segments": ["a", "b"], "actions": ["x", "y", "z"]})
    msg = Message(RecordDict({protocol.CONFIG: config}), dst_node_id=1, message_type=protocol.EFFECTS)
    context = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})

    def answer(values: np.ndarray):  # noqa: ANN202
        return lambda m, c: Message(RecordDict({"secagg-masked": ArrayRecord({"y": Array(values)}),
                                                "metrics": MetricRecord({"num-examples": 1})}), reply_to=m)

    assert not outgoing_guard_mod(msg, context, answer(np.zeros(60, dtype=np.uint64))).has_error()
    for bad in (np.zeros(61, dtype=np.uint64), np.zeros(60, dtype=np.float64)):
        reply = outgoing_guard_mod(msg, context, answer(bad))
        assert reply.has_error() and reply.error.code == GUARD_ERROR_CODE and "60 values" in reply.error.reason
