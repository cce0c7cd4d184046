"""SecAgg+ on Flower's Message API: a ClientApp mod for the train handler and the coordinator's
aggregation step.

The coordinator drives four ``train`` messages per round, told apart by ``secagg-stage`` in the
config (advertise, share, masked, unmask). The mod answers the protocol stages itself and calls
the wrapped train handler only at ``masked``: it then replaces the trained weights with the
masked, quantised update ``trained - global`` (optionally L2-clipped first) and reports weight
1. The unit's protocol state lives in ``context.state`` (Flower keeps it on the unit between
messages of a run), never in the coordinator.

Identity: each unit reads its Ed25519 identity key and the registry of all units' public keys
from its own disk (node config ``secagg-key``, ``secagg-registry``; in simulation, files made
by :func:`make_identities`). The coordinator forwards advertisements but cannot forge them.
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives import serialization
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid

from privacy.secagg import crypto
from privacy.secagg.config import SecAggConfig, SecAggError
from privacy.secagg.protocol import Advert, CoordinatorSession, UnitSession

STAGE = "secagg-stage"
STATE_KEY = "secagg"


# ------------------------------------------------------------------------------------------
# identities
# ------------------------------------------------------------------------------------------
def make_identities(folder: Path, units: list[str]) -> dict[str, Path]:
    """An Ed25519 key per unit (``<unit>.key``, 0600) and ``registry.json`` of public keys."""
    folder.mkdir(parents=True, exist_ok=True)
    registry, paths = {}, {}
    for unit in units:
        key = crypto.new_identity()
        path = folder / f"{unit}.key"
        path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
        path.chmod(0o600)
        registry[unit] = crypto.public_bytes(key).hex()
        paths[unit] = path
    (folder / "registry.json").write_text(json.dumps(registry, indent=1))
    return paths


def load_identity(key_path: Path, registry_path: Path) -> tuple[Any, dict[str, bytes]]:
    key = serialization.load_pem_private_key(Path(key_path).read_bytes(), password=None)
    registry = {u: bytes.fromhex(h) for u, h in json.loads(Path(registry_path).read_text()).items()}
    return key, registry


# ------------------------------------------------------------------------------------------
# unit side
# ------------------------------------------------------------------------------------------
def _advert_to_json(ad: Advert) -> dict[str, str]:
    return {"unit": ad.unit, "round": ad.round_id, "c": ad.c_pk.hex(), "s": ad.s_pk.hex(), "sig": ad.signature.hex()}


def _advert_from_json(d: dict[str, str]) -> Advert:
    return Advert(d["unit"], d["round"], bytes.fromhex(d["c"]), bytes.fromhex(d["s"]), bytes.fromhex(d["sig"]))


def _save(context: Context, session: UnitSession) -> None:
    state = {
        "round": session.round_id, "c": crypto.private_bytes(session.c_key).hex(),
        "s": crypto.private_bytes(session.s_key).hex(), "b": session.b_seed.hex(),
        "adverts": [_advert_to_json(a) for a in session.adverts.values()], "neighbours": session.neighbours,
        "u2": session.u2, "held": {k: [hex(b), hex(s)] for k, (b, s) in session.held.items()},
        "index": session.index, "threshold": session.threshold, "q": session.q_bits,
    }
    context.state[STATE_KEY] = ConfigRecord({"session": json.dumps(state)})


def _load(context: Context, session: UnitSession) -> UnitSession:
    if STATE_KEY not in context.state:
        raise SecAggError("no secure-aggregation state on this unit: the advertise stage was missed")
    st = json.loads(context.state[STATE_KEY]["session"])
    session.round_id = st["round"]
    session.c_key = crypto.x25519_from_private(bytes.fromhex(st["c"]))
    session.s_key = crypto.x25519_from_private(bytes.fromhex(st["s"]))
    session.b_seed = bytes.fromhex(st["b"])
    session.adverts = {a["unit"]: _advert_from_json(a) for a in st["adverts"]}
    session.neighbours, session.u2, session.index = st["neighbours"], st["u2"], st["index"]
    session.held = {k: (int(b, 16), int(s, 16)) for k, (b, s) in st["held"].items()}
    session.threshold, session.q_bits = st["threshold"], st["q"]
    return session


def _session(msg: Message, context: Context, identity_dir: Path | None) -> UnitSession:
    node = context.node_config
    unit = str(node.get("unit-id", f"unit_{node.get('partition-id', context.node_id)}"))
    if "secagg-key" in node and "secagg-registry" in node:
        key_path, registry_path = Path(str(node["secagg-key"])), Path(str(node["secagg-registry"]))
    elif identity_dir is not None:
        key_path, registry_path = identity_dir / f"{unit}.key", identity_dir / "registry.json"
    else:
        raise SecAggError("secure aggregation needs node config secagg-key and secagg-registry")
    identity, registry = load_identity(key_path, registry_path)
    cfg = SecAggConfig.model_validate(json.loads(str(msg.content.config_records["config"]["secagg-config"])))
    return UnitSession(unit, identity, registry, cfg)


USED_ROUNDS_KEY = "secagg-used-rounds"


def remember_round(context: Context, round_id: str, keep: int = 10_000) -> None:
    """Refuse a round id this unit has advertised for before, then remember it.

    Advertisements are signed over the round id, so a coordinator re-using an old id could
    replay a unit's old advertisement (whose secret it may have reconstructed when that unit
    dropped) to other units. The ids live in the unit's Flower context, which the SuperNode
    keeps for the whole run."""
    record = context.state.config_records.get(USED_ROUNDS_KEY)
    used = list(record["rounds"]) if record is not None and "rounds" in record else []
    if round_id in used:
        raise SecAggError(f"secure-aggregation round id {round_id!r} was used before in this run: a replay; "
                          "this unit refuses to advertise keys for it")
    used.append(round_id)
    context.state.config_records[USED_ROUNDS_KEY] = ConfigRecord({"rounds": used[-keep:]})


def check_unit_minimums(node_config: Any, threshold: int, n_units: int) -> None:
    """A unit's own floor under what the coordinator chooses: node config ``secagg-min-threshold``
    (reconstruction threshold t) and ``secagg-min-units`` (units in the round)."""
    min_t = int(node_config.get("secagg-min-threshold", 0))
    min_n = int(node_config.get("secagg-min-units", 3))
    if threshold < min_t:
        raise SecAggError(f"the round's threshold {threshold} is below this unit's secagg-min-threshold {min_t}")
    if n_units < min_n:
        raise SecAggError(f"{n_units} units advertised; this unit needs at least {min_n} (secagg-min-units)")


def _advertise(context: Context, session: UnitSession, round_id: str) -> str:
    """Fresh signed keys for ``round_id`` (refused if the id was used before), kept in the
    unit's context; the advertisement as JSON."""
    remember_round(context, round_id)
    advert = session.advertise(round_id)
    _save(context, session)
    return json.dumps(_advert_to_json(advert))


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
    """ClientApp mod (train handler): answers the secure-aggregation stages; see the module doc."""
    config = msg.content.config_records.get("config")
    if config is None or STAGE not in config:
        return call_next(msg, context)
    stage = str(config[STAGE])
    session = _session(msg, context, identity_dir)
    if stage == "advertise":
        return _reply(msg, {"advert": _advertise(context, session, str(config["secagg-round"]))})
    session = _load(context, session)
    if stage == "share":
        adverts = [_advert_from_json(a) for a in json.loads(str(config["secagg-adverts"]))]
        boxes = session.share_keys(adverts)
        check_unit_minimums(context.node_config, session.threshold, len(adverts))
        _save(context, session)
        return _reply(msg, {"boxes": json.dumps({v: c.hex() for v, c in boxes.items()})})
    if stage == "masked":
        start = msg.content.array_records["arrays"]
        reply = call_next(msg, context)
        if reply.has_error():
            return reply
        update = flat_update(reply.content.array_records["arrays"], start)
        clip = float(config.get("secagg-l2-clip", 0.0))
        if clip > 0:
            norm = float(np.linalg.norm(update))
            update = update * min(1.0, clip / max(norm, 1e-12))
        inbox = {s: bytes.fromhex(c) for s, c in json.loads(str(config["secagg-inbox"])).items()}
        y = session.masked_input(update, json.loads(str(config["secagg-u2"])), inbox)
        _save(context, session)
        return Message(RecordDict({"secagg-masked": ArrayRecord({"y": _array(y)}),
                                   "metrics": MetricRecord({"num-examples": 1})}), reply_to=msg)
    if stage == "unmask":
        reveals = session.unmask(json.loads(str(config["secagg-u3"])))
        values = {"reveals": json.dumps(reveals)}
        next_round = str(config.get("secagg-next-round", ""))
        if next_round:  # advertise fresh keys for the next round now: saves it one exchange
            values["next-advert"] = _advertise(context, _session(msg, context, identity_dir), next_round)
        return _reply(msg, values)
    raise SecAggError(f"unknown secure-aggregation stage {stage!r}")


def _array(values: np.ndarray):  # noqa: ANN202
    from flwr.app import Array

    return Array(np.ascontiguousarray(values))


# ------------------------------------------------------------------------------------------
# coordinator side
# ------------------------------------------------------------------------------------------
class SecAggAggregator:
    """Runs one secure-aggregation training round over the Grid and returns the mean update."""

    def __init__(self, config: SecAggConfig, min_units: int = 3, piggyback: bool = True) -> None:
        self.config = config
        self.min_units = min_units
        #: advertise the next round's keys in this round's unmask exchange (one exchange fewer
        #: per round); units absent from it are asked separately, as in the first round.
        self.piggyback = piggyback
        self._next_round: str | None = None
        self._next_adverts: dict[int, Advert] = {}

    def _send(self, grid: Grid, node_ids: list[int], make: Any, timeout: float) -> dict[int, Message]:
        messages = [Message(content=make(nid), message_type="train", dst_node_id=nid) for nid in node_ids]
        replies = {}
        for reply in grid.send_and_receive(messages, timeout=timeout):
            if reply.has_error():
                from logging import WARNING

                from flwr.common.logger import log

                log(WARNING, "secure aggregation: unit %s failed: %s", reply.metadata.src_node_id, reply.error.reason)
            else:
                replies[reply.metadata.src_node_id] = reply
        return replies

    def run_round(self, grid: Grid, node_ids: list[int], train_record: RecordDict, timeout: float,
                  l2_clip: float = 0.0) -> tuple[np.ndarray, list[str], dict[str, Any]]:
        """Sum of the surviving units' (clipped) updates, who they are, and round facts."""
        session = CoordinatorSession(self.config, round_id=self._next_round) if self._next_round \
            else CoordinatorSession(self.config)
        ready = {nid: ad for nid, ad in self._next_adverts.items() if nid in node_ids}
        self._next_round, self._next_adverts = None, {}
        base = dict(train_record.config_records["config"])
        cfg_json = self.config.model_dump_json()

        def config(extra: dict[str, Any]) -> ConfigRecord:
            return ConfigRecord({**base, "secagg-config": cfg_json, **extra})

        missing = [nid for nid in node_ids if nid not in ready]
        r1 = self._send(grid, missing, lambda n: RecordDict({"config": config(
            {STAGE: "advertise", "secagg-round": session.round_id})}), timeout) if missing else {}
        adverts = {**ready,
                   **{nid: _advert_from_json(json.loads(str(r.content[STATE_KEY]["advert"]))) for nid, r in r1.items()}}
        session.collect_adverts(list(adverts.values()), self.min_units)
        node_of = {ad.unit: nid for nid, ad in adverts.items()}
        advert_json = json.dumps([_advert_to_json(a) for a in adverts.values()])

        r2 = self._send(grid, list(adverts), lambda n: RecordDict({"config": config(
            {STAGE: "share", "secagg-adverts": advert_json})}), timeout)
        outgoing = {adverts[nid].unit: {v: bytes.fromhex(c) for v, c in json.loads(str(r.content[STATE_KEY]["boxes"])).items()}
                    for nid, r in r2.items()}
        inbox = session.route_shares(outgoing)
        u2_json = json.dumps(session.u2)

        def masked_record(nid: int) -> RecordDict:
            unit = adverts[nid].unit
            return RecordDict({"arrays": train_record.array_records["arrays"], "config": config(
                {STAGE: "masked", "secagg-u2": u2_json, "secagg-l2-clip": l2_clip,
                 "secagg-inbox": json.dumps({s: c.hex() for s, c in inbox[unit].items()})})})

        r3 = self._send(grid, [node_of[u] for u in session.u2], masked_record, timeout)
        session.collect_masked({adverts[nid].unit: r.content.array_records["secagg-masked"]["y"].numpy()
                                for nid, r in r3.items()})
        u3_json = json.dumps(session.u3)
        next_round = secrets.token_hex(16) if self.piggyback else ""
        r4 = self._send(grid, [node_of[u] for u in session.u3], lambda n: RecordDict({"config": config(
            {STAGE: "unmask", "secagg-u3": u3_json, "secagg-next-round": next_round})}), timeout)
        reveals = {adverts[nid].unit: {k: tuple(v) for k, v in json.loads(str(r.content[STATE_KEY]["reveals"])).items()}
                   for nid, r in r4.items()}
        total, m, bound = session.aggregate(reveals)
        if next_round:
            self._next_round = next_round
            self._next_adverts = {nid: _advert_from_json(json.loads(str(r.content[STATE_KEY]["next-advert"])))
                                  for nid, r in r4.items() if "next-advert" in r.content[STATE_KEY]}
        facts = {"advertised": len(adverts), "advertised_in_advance": len(ready), "shared": len(session.u2), "masked": len(session.u3),
                 "dropped_after_sharing": sorted(set(session.u2) - set(session.u3)),
                 "dropped_before_sharing": sorted(set(a.unit for a in adverts.values()) - set(session.u2)),
                 "error_bound": bound}
        return total, session.u3, facts


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
