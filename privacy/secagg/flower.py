"""SecAgg+ on Flower's Message API: a ClientApp mod for the train handler and the coordinator's
aggregation step.

The coordinator drives ``train`` messages told apart by ``secagg-stage`` in the config
(advertise, share, masked, consistency, unmask); every message names its round
(``secagg-round``) and carries the round's settings (``secagg-config``). The mod answers the
protocol stages itself and calls the wrapped train handler only at ``masked``: it then replaces
the trained weights with the masked, quantised update ``trained - global`` (L2-clipped first
when the settings say so) and reports weight 1.

Each unit keeps its own per-round state machine in ``context.state`` (Flower keeps it on the
unit between messages of a run), never in the coordinator: each stage once and in order, the
settings pinned when it advertised. A refused stage is answered with a one-line error and
abandons the round on that unit. Two rounds may be open at once: from the second round on the
next round's advertisement rides on this round's consistency exchange and its share stage on
this round's unmask exchange (``secagg-next-round``, ``secagg-next-adverts``), so a steady
round costs three exchanges (masked, consistency, unmask) like before the consistency round
existed; the two rounds' states are kept apart by round id.

Identity: each unit reads its Ed25519 identity key and the registry of all units' public keys
from its own disk (node config ``secagg-key``, ``secagg-registry``; in simulation, files made
by :func:`make_identities`). The coordinator forwards advertisements but cannot forge them.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from logging import WARNING
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid
from pydantic import ValidationError

from privacy.secagg import crypto
from privacy.secagg.config import SecAggConfig, SecAggError
from privacy.secagg.identity import load_identity, make_identities  # noqa: F401 - re-exported
from privacy.secagg.protocol import ABANDONED, Advert, CoordinatorSession, UnitSession

STAGE = "secagg-stage"
STATE_KEY = "secagg"
USED_ROUNDS_KEY = "secagg-used-rounds"
#: Error code of a refused secure-aggregation stage (the outgoing guard uses 9001).
SECAGG_ERROR_CODE = 9002


# ------------------------------------------------------------------------------------------
# messages: parsing that never raises anything but SecAggError
# ------------------------------------------------------------------------------------------
def advert_to_json(ad: Advert) -> dict[str, str]:
    return {"unit": ad.unit, "round": ad.round_id, "settings": ad.settings.hex(), "c": ad.c_pk.hex(),
            "s": ad.s_pk.hex(), "sig": ad.signature.hex()}


def _hex(value: object, what: str) -> bytes:
    if not isinstance(value, str):
        raise SecAggError(f"{what}: expected a hex string, got {type(value).__name__}")
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise SecAggError(f"{what}: not hexadecimal") from None


def advert_from_json(d: object) -> Advert:
    """An :class:`Advert` from its JSON form; SecAggError for a missing field, a wrong type or bad hex."""
    if not isinstance(d, dict):
        raise SecAggError(f"malformed advertisement: expected an object, got {type(d).__name__}")
    missing = [k for k in ("unit", "round", "settings", "c", "s", "sig") if k not in d]
    if missing:
        raise SecAggError(f"malformed advertisement: missing {', '.join(missing)}")
    unit = d["unit"]
    if not isinstance(unit, str) or not isinstance(d["round"], str):
        raise SecAggError("malformed advertisement: unit and round must be strings")
    return Advert(unit, d["round"], _hex(d["settings"], f"advertisement of {unit!r}: settings"),
                  _hex(d["c"], f"advertisement of {unit!r}: c key"), _hex(d["s"], f"advertisement of {unit!r}: s key"),
                  _hex(d["sig"], f"advertisement of {unit!r}: signature"))


def _field(config: Any, key: str) -> Any:
    if key not in config:
        raise SecAggError(f"the message lacks {key!r}")
    return config[key]


def _json_field(config: Any, key: str, kind: type) -> Any:
    raw = _field(config, key)
    try:
        value = json.loads(str(raw))
    except ValueError:
        raise SecAggError(f"{key} is not valid JSON") from None
    if not isinstance(value, kind):
        raise SecAggError(f"{key} must be a JSON {'list' if kind is list else 'object'}")
    return value


def _adverts(config: Any, key: str) -> list[Advert]:
    value = _json_field(config, key, list)
    return [advert_from_json(d) for d in value]


def _hex_map(config: Any, key: str) -> dict[str, bytes]:
    return {str(k): _hex(v, f"{key}[{k!r}]") for k, v in _json_field(config, key, dict).items()}


def _settings(config: Any) -> SecAggConfig:
    raw = _field(config, "secagg-config")
    try:
        return SecAggConfig.model_validate_json(str(raw))
    except (ValidationError, ValueError) as exc:
        first = exc.errors()[0]["msg"] if isinstance(exc, ValidationError) else str(exc)
        raise SecAggError(f"secagg-config is not a valid setting: {first}") from None


# ------------------------------------------------------------------------------------------
# unit side: state in context.state
# ------------------------------------------------------------------------------------------
def _session_to_json(s: UnitSession) -> dict[str, Any]:
    return {
        "round": s.round_id, "stage": s.stage, "config": s.config.canonical(),
        "c": crypto.private_bytes(s.c_key).hex() if s.c_key is not None else "",
        "s": crypto.private_bytes(s.s_key).hex() if s.s_key is not None else "",
        "b": s.b_seed.hex(), "adverts": [advert_to_json(a) for a in s.adverts.values()], "seed": s.seed.hex(),
        "neighbours": s.neighbours, "u2": s.u2, "u3": s.u3,
        "held": {k: [hex(b), hex(v)] for k, (b, v) in s.held.items()}, "revealed": s.revealed,
        "index": s.index, "threshold": s.threshold, "degree": s.degree, "q": s.q_bits, "sent": s.masked_sent,
    }


def _session_from_json(st: dict[str, Any], unit: str, identity: Any, registry: dict[str, bytes],
                       floors: tuple[int, int]) -> UnitSession:
    s = UnitSession(unit, identity, registry, SecAggConfig.model_validate_json(st["config"]),
                    min_units=floors[0], min_threshold=floors[1])
    s.round_id, s.stage = st["round"], st["stage"]
    s.c_key = crypto.x25519_from_private(bytes.fromhex(st["c"])) if st["c"] else None
    s.s_key = crypto.x25519_from_private(bytes.fromhex(st["s"])) if st["s"] else None
    s.b_seed, s.seed = bytes.fromhex(st["b"]), bytes.fromhex(st["seed"])
    s.adverts = {a["unit"]: advert_from_json(a) for a in st["adverts"]}
    s.neighbours, s.u2, s.u3, s.index = st["neighbours"], st["u2"], st["u3"], st["index"]
    s.held = {k: (int(b, 16), int(v, 16)) for k, (b, v) in st["held"].items()}
    s.revealed, s.masked_sent = st["revealed"], st["sent"]
    s.threshold, s.degree, s.q_bits = st["threshold"], st["degree"], st["q"]
    return s


class _UnitState:
    """This unit's open rounds (at most two: the current one and the next, advertised in advance)."""

    def __init__(self, context: Context, unit: str, identity: Any, registry: dict[str, bytes],
                 floors: tuple[int, int]) -> None:
        self.context, self.unit, self.identity, self.registry, self.floors = context, unit, identity, registry, floors
        record = context.state.config_records.get(STATE_KEY)
        raw = json.loads(str(record["rounds"])) if record is not None and "rounds" in record else {}
        self.rounds = {rid: _session_from_json(st, unit, identity, registry, floors) for rid, st in raw.items()}

    def new(self, config: SecAggConfig) -> UnitSession:
        return UnitSession(self.unit, self.identity, self.registry, config, min_units=self.floors[0],
                           min_threshold=self.floors[1])

    def open(self, round_id: str) -> UnitSession:
        session = self.rounds.get(round_id)
        if session is None or session.stage == ABANDONED:
            raise SecAggError(f"this unit has no open secure-aggregation round {round_id!r} (never advertised, "
                              "already finished, or abandoned)")
        return session

    def advertise(self, round_id: str, config: SecAggConfig, keep: str | None = None) -> str:
        """Fresh signed keys for ``round_id`` (refused if the id was used before); every other open
        round except ``keep`` is abandoned. The advertisement as JSON."""
        remember_round(self.context, round_id)
        session = self.new(config)
        advert = session.advertise(round_id)
        self.rounds = {rid: s for rid, s in self.rounds.items() if rid == keep}
        self.rounds[round_id] = session
        return json.dumps(advert_to_json(advert))

    def save(self) -> None:
        live = {rid: _session_to_json(s) for rid, s in self.rounds.items() if s.stage not in (ABANDONED, "unmask")}
        self.context.state.config_records[STATE_KEY] = ConfigRecord({"rounds": json.dumps(live)})


def remember_round(context: Context, round_id: str, keep: int = 10_000) -> None:
    """Refuse a round id this unit has advertised for before, then remember it.

    Advertisements are signed over the round id, so a coordinator re-using an old id could
    replay a unit's old advertisement (whose secret it may have reconstructed when that unit
    dropped) to other units. The ids live in the unit's Flower context, which the SuperNode
    keeps for the whole run."""
    record = context.state.config_records.get(USED_ROUNDS_KEY)
    used = list(record["rounds"]) if record is not None and "rounds" in record else []
    if round_id in used:
        raise SecAggError(f"stage 'advertise' of round {round_id!r} was already answered on this unit (a replayed "
                          "round id): it advertises fresh keys only for a new round")
    used.append(round_id)
    context.state.config_records[USED_ROUNDS_KEY] = ConfigRecord({"rounds": used[-keep:]})


def _floors(node_config: Any) -> tuple[int, int]:
    """The unit's own floors: ``secagg-min-units`` (default and minimum 3) and ``secagg-min-threshold``."""
    try:
        min_units = max(3, int(node_config.get("secagg-min-units", 3)))
        min_threshold = int(node_config.get("secagg-min-threshold", 0))
    except (TypeError, ValueError):
        raise SecAggError("node config secagg-min-units / secagg-min-threshold must be whole numbers") from None
    return min_units, min_threshold


def _identity(context: Context, identity_dir: Path | None) -> tuple[str, Any, dict[str, bytes]]:
    node = context.node_config
    unit = str(node.get("unit-id", f"unit_{node.get('partition-id', context.node_id)}"))
    if "secagg-key" in node and "secagg-registry" in node:
        key_path, registry_path = Path(str(node["secagg-key"])), Path(str(node["secagg-registry"]))
    elif identity_dir is not None:
        key_path, registry_path = identity_dir / f"{unit}.key", identity_dir / "registry.json"
    else:
        raise SecAggError("secure aggregation needs node config secagg-key and secagg-registry")
    identity, registry = load_identity(key_path, registry_path, unit)
    return unit, identity, registry


def _reply(msg: Message, values: dict[str, Any]) -> Message:
    return Message(RecordDict({STATE_KEY: ConfigRecord(values)}), reply_to=msg)


def flat_update(trained: ArrayRecord, start: ArrayRecord) -> np.ndarray:
    """``trained - start`` as one float64 vector, in the record's key order."""
    return np.concatenate([(trained[k].numpy().astype(np.float64) - start[k].numpy().astype(np.float64)).ravel()
                           for k in start.keys()])


def make_secagg_mod(identity_dir: Path | None = None):  # noqa: ANN201
    """The mod; ``identity_dir`` (simulation) holds ``<unit>.key`` and ``registry.json`` for units
    whose node config does not name them."""

    def secagg_mod(msg: Message, context: Context, call_next) -> Message:  # noqa: ANN001
        return _handle(msg, context, call_next, identity_dir)

    return secagg_mod


def _handle(msg: Message, context: Context, call_next, identity_dir: Path | None) -> Message:  # noqa: ANN001
    """ClientApp mod (train handler): answers the secure-aggregation stages; see the module doc.
    A refusal is a one-line error reply (the content never leaves the unit)."""
    config = msg.content.config_records.get("config")
    if config is None or STAGE not in config:
        return call_next(msg, context)
    try:
        return _answer(msg, context, call_next, identity_dir, config)
    except SecAggError as exc:
        reason = " ".join(str(exc).split())
        log(WARNING, "secure aggregation: this unit refused a %s message: %s", config.get(STAGE), reason)
        return Message(Error(code=SECAGG_ERROR_CODE, reason=f"secure aggregation refused: {reason}"), reply_to=msg)


def _answer(msg: Message, context: Context, call_next, identity_dir: Path | None, config: Any) -> Message:  # noqa: ANN001
    stage = str(config[STAGE])
    round_id = str(_field(config, "secagg-round"))
    settings = _settings(config)
    unit, identity, registry = _identity(context, identity_dir)
    state = _UnitState(context, unit, identity, registry, _floors(context.node_config))
    if stage == "advertise":
        advert = state.advertise(round_id, settings)
        state.save()
        return _reply(msg, {"advert": advert})
    session = state.open(round_id)
    try:
        if settings.canonical() != session.config.canonical():
            raise SecAggError(f"the settings of this {stage} message differ from those pinned when this unit "
                              f"advertised for round {round_id!r}")
        if stage == "share":
            boxes = session.share_keys(_adverts(config, "secagg-adverts"))
            state.save()
            return _reply(msg, {"boxes": json.dumps({v: c.hex() for v, c in boxes.items()})})
        if stage == "masked":
            return _masked(msg, context, call_next, state, session, config)
        if stage == "consistency":
            values: dict[str, Any] = {"signature": session.consistency(_json_field(config, "secagg-u3", list)).hex()}
            next_round = str(config.get("secagg-next-round", ""))
            if next_round:  # the next round's advertisement rides on this exchange
                try:
                    values["next-advert"] = state.advertise(next_round, session.config, keep=round_id)
                except SecAggError as exc:
                    log(WARNING, "secure aggregation: no advertisement for round %s: %s", next_round, exc)
            state.save()
            return _reply(msg, values)
        if stage == "unmask":
            reveals = session.unmask(_json_field(config, "secagg-u3", list), _hex_map(config, "secagg-signatures"))
            values = {"reveals": json.dumps(reveals)}
            next_round = str(config.get("secagg-next-round", ""))
            if next_round and "secagg-next-adverts" in config:  # the next round's share stage rides on it
                try:
                    nxt = state.open(next_round)
                    boxes = nxt.share_keys(_adverts(config, "secagg-next-adverts"))
                    values["next-boxes"] = json.dumps({v: c.hex() for v, c in boxes.items()})
                except SecAggError as exc:
                    log(WARNING, "secure aggregation: round %s not shared in advance: %s", next_round, exc)
            state.save()
            return _reply(msg, values)
        raise SecAggError(f"unknown secure-aggregation stage {stage!r}")
    except SecAggError:
        session.stage = ABANDONED
        state.save()
        raise


def _masked(msg: Message, context: Context, call_next, state: _UnitState, session: UnitSession,  # noqa: ANN001
            config: Any) -> Message:
    """Checks first (stage, U2, shares), recorded before training; then train, clip, mask."""
    session.prepare_masked(_json_field(config, "secagg-u2", list), _hex_map(config, "secagg-inbox"))
    state.save()  # the stage is used up even if training fails below
    if "arrays" not in msg.content.array_records:
        raise SecAggError("the masked stage carries no model")
    start = msg.content.array_records["arrays"]
    reply = call_next(msg, context)
    if reply.has_error():
        session.stage = ABANDONED
        state.save()
        return reply
    update = flat_update(reply.content.array_records["arrays"], start)
    clip = session.config.l2_clip
    if clip > 0:
        norm = float(np.linalg.norm(update))
        update = update * min(1.0, clip / max(norm, 1e-12))
    y = session.mask_input(update)
    state.save()
    return Message(RecordDict({"secagg-masked": ArrayRecord({"y": Array(np.ascontiguousarray(y))}),
                               "metrics": MetricRecord({"num-examples": 1})}), reply_to=msg)


# ------------------------------------------------------------------------------------------
# coordinator side
# ------------------------------------------------------------------------------------------
@dataclass
class _Prepared:
    """A round whose advertisements and shares were exchanged during the previous round."""

    session: CoordinatorSession
    node_of: dict[str, int]
    settings: SecAggConfig


class SecAggAggregator:
    """Runs one secure-aggregation training round over the Grid and returns the mean update."""

    def __init__(self, config: SecAggConfig, min_units: int = 3, piggyback: bool = True,
                 message_type: str = "train") -> None:
        self.config = config
        #: the message type of every stage: ``train`` for model updates, ``query.effects`` for the
        #: outcome tables of an effect measurement (the unit's handler of that type is wrapped by the mod)
        self.message_type = message_type
        self.min_units = min_units
        #: run the next round's advertise and share stages on this round's consistency and unmask
        #: exchanges (two exchanges fewer per round); a round whose units or settings differ from
        #: the prepared one starts afresh with its own advertise and share exchanges.
        self.piggyback = piggyback
        self._prepared: _Prepared | None = None

    def _send(self, grid: Grid, node_ids: list[int], make: Any, timeout: float) -> tuple[dict[int, Message], set[int]]:
        """One exchange: ``make(node_id)`` is each unit's content. Replies by node, and the nodes
        that answered with an error (alive, but refusing or failing)."""
        messages = [Message(content=make(nid), message_type=self.message_type, dst_node_id=nid) for nid in node_ids]
        replies, errored = {}, set()
        for reply in grid.send_and_receive(messages, timeout=timeout):
            nid = reply.metadata.src_node_id
            if reply.has_error():
                log(WARNING, "secure aggregation: unit %s failed: %s", nid, reply.error.reason)
                errored.add(nid)
            else:
                replies[nid] = reply
        return replies, errored

    def run_round(self, grid: Grid, node_ids: list[int], train_record: RecordDict, timeout: float,
                  l2_clip: float = 0.0) -> tuple[np.ndarray, list[str], dict[str, Any]]:
        """Sum of the surviving units' (clipped) updates, who they are, and round facts."""
        settings = self.config.model_copy(update={"l2_clip": float(l2_clip)})
        base = dict(train_record.config_records["config"])
        cfg_json = settings.model_dump_json()

        def config(round_id: str, stage: str, extra: dict[str, Any]) -> ConfigRecord:
            return ConfigRecord({**base, "secagg-config": cfg_json, STAGE: stage, "secagg-round": round_id, **extra})

        prepared, self._prepared = self._prepared, None
        if prepared is not None and (prepared.settings != settings
                                     or not set(node_ids) <= set(prepared.node_of[u] for u in prepared.session.u2)):
            prepared = None  # new units, or other settings: everyone starts afresh
        errored: set[int] = set()
        if prepared is not None:
            session, node_of = prepared.session, prepared.node_of
            in_advance = len(session.adverts)
        else:
            session, in_advance = CoordinatorSession(settings), 0
            r1, e1 = self._send(grid, node_ids, lambda n: RecordDict({"config": config(
                session.round_id, "advertise", {})}), timeout)
            errored |= e1
            adverts = {nid: _parse(lambda: advert_from_json(json.loads(str(r.content[STATE_KEY]["advert"]))))
                       for nid, r in r1.items()}
            adverts = {nid: a for nid, a in adverts.items() if a is not None}
            forwarded = session.collect_adverts(list(adverts.values()), self.min_units)
            node_of = {a.unit: nid for nid, a in adverts.items()}
            advert_json = json.dumps([advert_to_json(a) for a in forwarded])
            r2, e2 = self._send(grid, list(node_of.values()), lambda n: RecordDict({"config": config(
                session.round_id, "share", {"secagg-adverts": advert_json})}), timeout)
            errored |= e2
            session.route_shares(_boxes(r2, node_of))
        unit_of = {nid: u for u, nid in node_of.items()}
        inbox = {u: json.dumps({s: c.hex() for s, c in boxes.items()}) for u, boxes in session.inbox.items()}
        u2_json = json.dumps(session.u2)

        def masked_record(nid: int) -> RecordDict:
            return RecordDict({"arrays": train_record.array_records["arrays"], "config": config(
                session.round_id, "masked", {"secagg-u2": u2_json, "secagg-inbox": inbox[unit_of[nid]]})})

        r3, e3 = self._send(grid, [node_of[u] for u in session.u2 if node_of[u] in node_ids], masked_record, timeout)
        errored |= e3
        length = sum(int(np.prod(a.shape)) for a in train_record.array_records["arrays"].values())
        masked = {unit_of[nid]: _parse(lambda r=r: _masked_vector(r, length)) for nid, r in r3.items()}
        session.collect_masked({u: y for u, y in masked.items() if y is not None})
        u3_json = json.dumps(session.u3)
        u3_nodes = [node_of[u] for u in session.u3]

        # consistency; the next round's advertisement rides on it (and alive units outside U3 are
        # asked to advertise in the same exchange)
        next_round = secrets.token_hex(16) if self.piggyback else ""
        lone = sorted(nid for nid in errored if nid in node_ids and nid not in u3_nodes) if next_round else []

        def consistency_record(nid: int) -> RecordDict:
            if nid in lone:
                return RecordDict({"config": config(next_round, "advertise", {})})
            extra = {"secagg-u3": u3_json, **({"secagg-next-round": next_round} if next_round else {})}
            return RecordDict({"config": config(session.round_id, "consistency", extra)})

        r4, _ = self._send(grid, u3_nodes + lone, consistency_record, timeout)
        signatures = {unit_of[nid]: _parse(lambda r=r: bytes.fromhex(str(r.content[STATE_KEY]["signature"])))
                      for nid, r in r4.items() if nid in u3_nodes}
        signatures = {u: sig for u, sig in signatures.items() if sig is not None}
        session.collect_signatures(signatures)
        nxt, next_node_of = None, {}
        if next_round:
            next_adverts = {}
            for nid, r in r4.items():
                values = r.content[STATE_KEY]
                raw = values.get("next-advert", values.get("advert") if nid in lone else None)
                ad = _parse(lambda raw=raw: advert_from_json(json.loads(str(raw)))) if raw else None
                if ad is not None:
                    next_adverts[nid] = ad
            nxt = CoordinatorSession(settings, round_id=next_round)
            try:
                forwarded_next = nxt.collect_adverts(list(next_adverts.values()), self.min_units)
                next_node_of = {a.unit: nid for nid, a in next_adverts.items()}
            except SecAggError as exc:
                log(WARNING, "secure aggregation: the next round starts afresh: %s", exc)
                nxt = None

        # unmask; the next round's share stage rides on it
        sig_json = json.dumps({u: s.hex() for u, s in signatures.items()})
        u4_nodes = [node_of[u] for u in session.u4]
        next_json = json.dumps([advert_to_json(a) for a in forwarded_next]) if nxt is not None else ""
        share_only = [nid for nid in next_node_of.values() if nid not in u4_nodes] if nxt is not None else []

        def unmask_record(nid: int) -> RecordDict:
            if nid in share_only:
                return RecordDict({"config": config(next_round, "share", {"secagg-adverts": next_json})})
            extra = {"secagg-u3": u3_json, "secagg-signatures": sig_json}
            if nxt is not None and nid in next_node_of.values():
                extra |= {"secagg-next-round": next_round, "secagg-next-adverts": next_json}
            return RecordDict({"config": config(session.round_id, "unmask", extra)})

        r5, _ = self._send(grid, u4_nodes + share_only, unmask_record, timeout)
        reveals = {unit_of[nid]: _parse(lambda r=r: _reveals(r)) for nid, r in r5.items() if nid in u4_nodes}
        reveals = {u: rv for u, rv in reveals.items() if rv is not None}
        total, m, bound = session.aggregate(reveals)
        if nxt is not None:
            next_unit_of = {nid: u for u, nid in next_node_of.items()}
            outgoing = {}
            for nid, r in r5.items():
                values = r.content[STATE_KEY]
                raw = values.get("next-boxes", values.get("boxes") if nid in share_only else None)
                boxes = _parse(lambda raw=raw: {v: bytes.fromhex(c) for v, c in json.loads(str(raw)).items()}) \
                    if raw else None
                if boxes is not None and nid in next_unit_of:
                    outgoing[next_unit_of[nid]] = boxes
            try:
                nxt.route_shares(outgoing)
                self._prepared = _Prepared(nxt, next_node_of, settings)
            except SecAggError as exc:
                log(WARNING, "secure aggregation: the next round starts afresh: %s", exc)
        facts = {"advertised": len(session.adverts), "advertised_in_advance": in_advance,
                 "shared": len(session.u2), "masked": len(session.u3), "signed": len(session.u4),
                 "dropped_after_sharing": sorted(set(session.u2) - set(session.u3)),
                 "dropped_before_sharing": sorted(set(session.adverts) - set(session.u2)),
                 "error_bound": bound}
        return total, session.u3, facts


def _parse(make: Any) -> Any:
    """``make()``, or None when a unit's reply is malformed (that unit is then left out)."""
    try:
        return make()
    except (SecAggError, ValueError, TypeError, KeyError, AttributeError) as exc:
        log(WARNING, "secure aggregation: a malformed reply was ignored: %s", exc)
        return None


def _masked_vector(reply: Message, length: int) -> np.ndarray:
    y = reply.content.array_records["secagg-masked"]["y"].numpy()
    if y.dtype != np.uint64 or y.shape != (length,):
        raise ValueError(f"masked input of shape {y.shape} and type {y.dtype}, not ({length},) uint64")
    return y


def _reveals(reply: Message) -> dict[str, tuple[str, str]]:
    raw = json.loads(str(reply.content[STATE_KEY]["reveals"]))
    out = {}
    for owner, (kind, share) in raw.items():
        if kind not in ("b", "s") or not isinstance(share, str):
            raise ValueError(f"malformed reveal for {owner!r}")
        int(share, 16)
        out[str(owner)] = (kind, share)
    return out


def _boxes(replies: dict[int, Message], node_of: dict[str, int]) -> dict[str, dict[str, bytes]]:
    unit_of = {nid: u for u, nid in node_of.items()}
    outgoing = {}
    for nid, r in replies.items():
        boxes = _parse(lambda r=r: {v: bytes.fromhex(c) for v, c in json.loads(str(r.content[STATE_KEY]["boxes"])).items()})
        if boxes is not None and nid in unit_of:
            outgoing[unit_of[nid]] = boxes
    return outgoing


def apply_mean_update(global_arrays: ArrayRecord, total: np.ndarray, count: int,
                      noise_std_of_sum: float = 0.0) -> ArrayRecord:
    """``global + (sum + N(0, noise^2)) / count`` reshaped into the record's arrays."""
    if noise_std_of_sum > 0:
        total = total + np.random.default_rng().normal(0.0, noise_std_of_sum, total.shape)
    mean = total / count
    out, offset = {}, 0
    import torch

    for key in global_arrays.keys():
        current = global_arrays[key].numpy()
        size = current.size
        out[key] = torch.as_tensor((current.astype(np.float64) + mean[offset:offset + size].reshape(current.shape))
                                   .astype(current.dtype))
        offset += size
    return ArrayRecord(out)


#: The mod for deployed units (identity files named in the node config).
secagg_mod = make_secagg_mod()
