"""The coordinator's side of the wire: wait for units, ask them, agree a privacy plan.

Every coordinator loop (training, segmentation, audits) talks to units through these helpers,
with the message types and record names of :mod:`fedseg.protocol`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from logging import WARNING
from typing import Any

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid

from fedseg import protocol
from fedseg.errors import FedsegError
from privacy.accounting import Release


#: Seconds between two pulls of replies from the SuperLink (Flower's own grid waits 3 s).
REPLY_POLL_S = 0.1


class ResponsiveGrid:
    """Flower's Grid, with replies pulled every :data:`REPLY_POLL_S` seconds.

    Flower 1.42's deployed grid (``GrpcGrid``) sleeps 3 s between two pulls in
    ``send_and_receive``, so every exchange ends up to 3 s after the last reply arrived; this
    wrapper pushes and pulls through the same grid with a short wait. Everything else is the
    wrapped grid's. The simulation engine's in-memory grid already pulls every 0.1 s.
    """

    def __init__(self, grid: Grid, poll_s: float = REPLY_POLL_S) -> None:
        self._grid = grid
        self._poll_s = poll_s

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)

    def send_and_receive(self, messages: Any, *, timeout: float | None = None) -> list[Message]:
        """Push ``messages``; return the replies that arrive within ``timeout`` seconds."""
        waiting = set(self._grid.push_messages(messages))
        deadline = None if timeout is None else time.monotonic() + timeout
        replies: list[Message] = []
        while waiting:
            got = list(self._grid.pull_messages(waiting))
            replies.extend(got)
            waiting.difference_update(m.metadata.reply_to_message_id for m in got)
            if not waiting or (deadline is not None and time.monotonic() >= deadline):
                break
            time.sleep(self._poll_s)
        return replies


class NotEnoughUnits(FedsegError):
    """Fewer units connected or answered than the run requires."""

    exit_code = 1


class PrivacyPlanRefused(FedsegError):
    """A unit refused the run's privacy plan (its budget, its delta rule, or a false claim)."""

    exit_code = 2


def wait_for_units(grid: Grid, minimum: int, timeout_s: float) -> list[int]:
    """Node ids once at least ``minimum`` units are connected; NotEnoughUnits after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while len(nodes := sorted(grid.get_node_ids())) < minimum:
        if time.monotonic() > deadline:
            raise NotEnoughUnits(f"only {len(nodes)} units connected after {timeout_s:.0f} s; {minimum} are needed")
        time.sleep(0.2)
    return nodes


def ask(grid: Grid, nodes: Sequence[int], message_type: str, content: RecordDict | Callable[[int], RecordDict],
        timeout: float, require_all: bool = True) -> dict[int, RecordDict]:
    """Send one message per node and return the replies' contents by node id, in a canonical
    order (by :func:`fedseg.protocol.content_digest`, then node id).

    ``content`` is one RecordDict for every node, or a function of the node id. With
    ``require_all`` any failed or missing reply raises :class:`NotEnoughUnits` naming the unit and
    its reason; otherwise failures are logged and left out.
    """
    messages = [Message(content=content(n) if callable(content) else content, message_type=message_type,
                        dst_node_id=n) for n in nodes]
    replies: dict[int, RecordDict] = {}
    for reply in grid.send_and_receive(messages, timeout=timeout):
        node = reply.metadata.src_node_id
        if reply.has_error():
            if require_all:
                raise NotEnoughUnits(f"unit {node} failed {message_type}: {reply.error.reason}")
            log(WARNING, "unit %s failed %s: %s", node, message_type, reply.error.reason)
            continue
        replies[node] = reply.content
    if require_all and len(replies) < len(nodes):
        raise NotEnoughUnits(f"{message_type}: {len(replies)} of {len(nodes)} units answered within {timeout:.0f} s")
    # canonical order (by content): node ids are random per run and replies arrive in any order,
    # so summing over this dict gives the same floating-point sums every run
    return dict(sorted(replies.items(), key=lambda item: (protocol.content_digest(item[1]), item[0])))


def agree_privacy(grid: Grid, nodes: Sequence[int], run_id: str, task: str, delta: float, stated_epsilon: float,
                  releases: Sequence[Release], config: ConfigRecord, timeout: float) -> dict[int, dict[str, Any]]:
    """Ask every unit to accept the run's planned releases before any is made.

    Each unit composes the releases with its own accountant and checks its own budget; one
    refusal stops the run here, before anything about the data was released or charged, with
    the unit's one-line reason (:class:`PrivacyPlanRefused`). Returns, per node, the unit's name,
    dataset id and the epsilon its accountant computed.
    """
    plan = ConfigRecord({protocol.PLAN_RUN_ID: run_id, protocol.PLAN_TASK: task, protocol.PLAN_DELTA: float(delta),
                         protocol.PLAN_EPSILON: float(stated_epsilon),
                         protocol.PLAN_RELEASES: json.dumps([r.model_dump() for r in releases])})
    answers = ask(grid, nodes, protocol.PRIVACY, RecordDict({protocol.CONFIG: config, protocol.PRIVACY_PLAN: plan}),
                  timeout)
    out = {}
    for node, content in answers.items():
        identity = content.config_records[protocol.IDENTITY]
        if int(content.metric_records[protocol.METRICS]["accepted"]) != 1:
            raise PrivacyPlanRefused(str(content.config_records[protocol.REFUSAL]["reason"]))
        out[node] = {"unit": str(identity["unit-id"]), "dataset": str(identity["dataset-id"]),
                     "epsilon": float(content.metric_records[protocol.METRICS]["epsilon"])}
    return out
