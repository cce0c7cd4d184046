"""The outgoing guard: nothing per-user leaves a unit.

A ClientApp mod that inspects every reply before it is sent. A reply may hold only

- at most one ArrayRecord, under ``arrays``, whose names and shapes equal the model's
  (:func:`fedseg.models.expected_shapes` of the model and target named in the incoming config);
- MetricRecords whose keys are in the allow-list of the message type (aggregate figures:
  counts, sums, histograms), with list values no longer than :data:`MAX_LIST_LEN`;
- ConfigRecords only where :data:`fedseg.protocol.ALLOWED_CONFIGS` names them, with exactly
  their keys (the unit's name and dataset id, a refusal's one-line reason); nothing else.

Anything else is refused: the reply is replaced by an error naming the offending key, and the
content never leaves the unit.
"""

from __future__ import annotations

from typing import Final

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord
from flwr.app import Error
from flwr.clientapp.typing import ClientAppCallable

from fedseg.metrics import HIST_BINS
from fedseg.protocol import (ALLOWED_CONFIGS, ALLOWED_METRICS, ALLOWED_RECORD_METRICS, MAX_LIST_LEN_BY_TYPE,
                             EFFECTS, SECAGG_REPLIES)

#: Longest list a metric may hold (score histograms, segmentation grid and RFM histograms).
MAX_LIST_LEN: Final = max(HIST_BINS, 4**5)
GUARD_ERROR_CODE: Final = 9001


class OutgoingRefused(ValueError):
    """A reply holds something that must not leave the unit."""


def check_reply(reply: Message, message_type: str, model_name: str | None, target: str = "churn") -> None:
    """Raise :class:`OutgoingRefused` unless ``reply`` holds only allowed aggregate content."""
    message_type = message_type.removesuffix(".default")
    kind = message_type.split(".")[0]
    allowed = ALLOWED_METRICS.get(message_type)
    max_len = MAX_LIST_LEN_BY_TYPE.get(message_type, MAX_LIST_LEN)
    if allowed is None:
        raise OutgoingRefused(f"no allow-list for message type {message_type!r}")
    for key, record in reply.content.items():
        if isinstance(record, ArrayRecord):
            if key != "arrays" or kind != "train" or model_name is None:
                raise OutgoingRefused(f"array record {key!r} is not allowed in a {kind} reply")
            from fedseg.models import expected_shapes  # torch: only replies that carry a model

            shapes = {name: tuple(array.shape) for name, array in record.items()}
            expected = expected_shapes(model_name, target)  # type: ignore[arg-type]
            if shapes != expected:
                extra = sorted(set(shapes) - set(expected))
                wrong = sorted(k for k in shapes if k in expected and shapes[k] != expected[k])
                raise OutgoingRefused(
                    f"arrays do not match model {model_name!r}: unexpected {extra}, wrong shape {wrong}, "
                    f"missing {sorted(set(expected) - set(shapes))}"
                )
        elif isinstance(record, MetricRecord):
            names = ALLOWED_RECORD_METRICS.get((message_type, key), allowed)
            for name, value in record.items():
                if name not in names:
                    raise OutgoingRefused(f"metric {name!r} is not in the {kind} allow-list {sorted(names)}")
                if isinstance(value, list) and len(value) > max_len:
                    raise OutgoingRefused(f"metric {name!r} holds {len(value)} values (> {max_len})")
        elif isinstance(record, ConfigRecord):
            keys = ALLOWED_CONFIGS.get(message_type, {}).get(key)
            if keys is None or set(record.keys()) != keys:
                raise OutgoingRefused(f"config record {key!r} may not leave the unit in a {message_type} reply")
        else:  # pragma: no cover - RecordDict holds only these three kinds
            raise OutgoingRefused(f"record {key!r} of type {type(record).__name__} is not allowed")


def check_secagg_reply(reply: Message, stage: str, model_name: str | None, target: str = "churn",
                       size: int | None = None) -> None:
    """Replies of the secure-aggregation stages (privacy/secagg): the protocol's own fields only;
    the masked input is one integer vector as long as the model has parameters (or ``size``: the
    length of an effect measurement's table)."""
    import numpy as np

    content = reply.content
    if stage == "masked":
        if set(content.keys()) != {"secagg-masked", "metrics"}:
            raise OutgoingRefused(f"masked-input reply holds {sorted(content.keys())}")
        arrays = content.array_records["secagg-masked"]
        if size is None:
            from fedseg.models import expected_shapes

            size = sum(int(np.prod(shape)) for shape in expected_shapes(model_name, target).values())  # type: ignore[arg-type]
        if list(arrays.keys()) != ["y"] or tuple(arrays["y"].shape) != (size,) or np.dtype(arrays["y"].dtype) != np.uint64:
            raise OutgoingRefused(f"masked input must be one uint64 vector of {size} values")
        if set(content.metric_records["metrics"].keys()) != {"num-examples"}:
            raise OutgoingRefused("masked-input reply may carry only num-examples")
        return
    allowed = SECAGG_REPLIES.get(stage)
    if allowed is None:
        raise OutgoingRefused(f"unknown secure-aggregation stage {stage!r}")
    if set(content.keys()) != {"secagg"} or set(content.config_records["secagg"].keys()) not in allowed:
        raise OutgoingRefused(f"secure-aggregation {stage} reply must hold only {sorted(allowed[-1])}")


def outgoing_guard_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Flower mod: check the reply of the wrapped handler; refuse it if it holds anything else."""
    reply = call_next(msg, context)
    if reply.has_error():
        return reply
    config = msg.content.config_records.get("config")
    model_name = config.get("model") if config is not None else None
    target = str(config.get("target", "churn")) if config is not None else "churn"
    try:
        if config is not None and "secagg-stage" in config:
            size = None
            if msg.metadata.message_type == EFFECTS:  # the table the coordinator asked for, cells x arms x stats
                from fedseg.effects import ARMS, STATS

                size = len(list(config["segments"])) * len(list(config["actions"])) * len(ARMS) * len(STATS)
            check_secagg_reply(reply, str(config["secagg-stage"]), model_name, target, size)
        else:
            check_reply(reply, msg.metadata.message_type, model_name, target)
    except OutgoingRefused as exc:
        return Message(Error(code=GUARD_ERROR_CODE, reason=f"outgoing guard refused the reply: {exc}"),
                       reply_to=msg)
    return reply
