"""Test harness for secure aggregation: a federation driven stage by stage through the protocol
classes (:class:`Federation`), the same through the real Flower mod with real ``Context`` and
``Message`` objects (:class:`FlowerUnit`, :class:`FlowerRound`), and what a coordinator can
compute from what it collected (:func:`recover`).

A deviating coordinator is simply a test that calls these stages in another order, twice, or
with values of its own choosing; nothing here is a mock of a protocol component."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict

from privacy.secagg import crypto, quantize, shamir
from privacy.secagg.config import SecAggConfig
from privacy.secagg.protocol import CoordinatorSession, UnitSession, neighbours
from tests.support.flower import set_task_identity  # noqa: F401 - used here and re-exported


class Federation:
    """n units with registered identities and a coordinator, run stage by stage (honestly unless a
    test does otherwise)."""

    def __init__(self, n: int, config: SecAggConfig | None = None, dim: int = 50, seed: int = 0,
                 min_units: int = 3, unit_cls: type = UnitSession, round_id: str | None = None) -> None:
        self.config = config or SecAggConfig(threshold=0.6, clip_range=1.0)
        identities = {f"u{i:02d}": crypto.new_identity() for i in range(n)}
        self.identities = identities
        self.registry = {u: crypto.public_bytes(k) for u, k in identities.items()}
        extra = {"min_units": min_units} if min_units != 3 else {}
        self.units = {u: unit_cls(u, k, self.registry, self.config, **extra) for u, k in identities.items()}
        self.coordinator = CoordinatorSession(self.config) if round_id is None \
            else CoordinatorSession(self.config, round_id=round_id)
        rng = np.random.default_rng(seed)
        self.x = {u: rng.uniform(-1, 1, dim) for u in self.units}

    # the stages, honest by default ---------------------------------------------------------
    def advertise(self) -> list:
        co = self.coordinator
        self.adverts: list = co.collect_adverts([s.advertise(co.round_id) for s in self.units.values()], 3)
        return self.adverts

    def share(self, drop_before: set[str] = frozenset()) -> dict[str, dict[str, bytes]]:
        self.outgoing = {u: s.share_keys(self.adverts) for u, s in self.units.items() if u not in drop_before}
        self.inbox = self.coordinator.route_shares(self.outgoing)
        return self.inbox

    def masked(self, drop_after: set[str] = frozenset()) -> list[str]:
        co = self.coordinator
        self.masked_inputs = {u: self.units[u].masked_input(self.x[u], co.u2, self.inbox[u])
                              for u in co.u2 if u not in drop_after}
        return co.collect_masked(self.masked_inputs)

    def consistency(self, drop: set[str] = frozenset()) -> dict[str, bytes]:
        co = self.coordinator
        self.signatures = {u: self.units[u].consistency(co.u3) for u in co.u3 if u not in drop}
        self.signers = co.collect_signatures(self.signatures)
        return self.signatures

    def unmask(self) -> tuple[np.ndarray, list[str], float]:
        co = self.coordinator
        self.reveals = {u: self.units[u].unmask(co.u3, self.signatures) for u in self.signers}
        total, _, bound = co.aggregate(self.reveals)
        return total, co.u3, bound

    def run(self, drop_before: set[str] = frozenset(), drop_after: set[str] = frozenset(),
            drop_at_consistency: set[str] = frozenset()) -> tuple[np.ndarray, list[str], float]:
        if not hasattr(self, "adverts"):
            self.advertise()
        self.share(drop_before)
        self.masked(drop_after)
        self.consistency(drop_at_consistency)
        return self.unmask()

    # helpers -------------------------------------------------------------------------------
    def order(self) -> list[str]:
        """The ring order every unit derives (after the advertise stage)."""
        from privacy.secagg.protocol import ring_order

        return ring_order(self.coordinator.seed, sorted(self.units))

    def holders(self, unit: str) -> set[str]:
        degree = self.config.degree_for(len(self.units))
        return set(neighbours(self.coordinator.seed, sorted(self.units), unit, degree)) | {unit}


def recover(fed: Federation, victim: str, y: np.ndarray, reveals: dict[str, dict[str, tuple[str, str]]],
            masked_with: list[str]) -> np.ndarray | None:
    """What a coordinator holding ``reveals`` (holder -> {owner: (kind, hex share)}) can make of the
    victim's masked input ``y``: the victim's update if it can rebuild its self-mask and every
    pairwise mask it applied (with the units in ``masked_with``), else None."""
    n = len(fed.units)
    index = {u: i + 1 for i, u in enumerate(sorted(fed.units))}
    t = fed.config.threshold_for(n)
    shares: dict[tuple[str, str], dict[int, int]] = {}
    for holder, revealed in reveals.items():
        for owner, (kind, share) in revealed.items():
            shares.setdefault((owner, kind), {})[index[holder]] = int(share, 16)

    def secret(owner: str, kind: str) -> bytes | None:
        got = shares.get((owner, kind), {})
        if len(got) < t:
            return None
        return shamir.reconstruct(dict(list(got.items())[:t])).to_bytes(32, "big")

    b = secret(victim, "b")
    if b is None:
        return None
    bits = fed.config.modulus_bits
    total = y.astype(np.uint64) - crypto.prg(b, len(y), bits)
    adverts = {a.unit: a for a in fed.adverts}
    s_victim = secret(victim, "s")
    from privacy.secagg.protocol import mask_seed

    for w in masked_with:
        if s_victim is not None:
            seed = mask_seed(crypto.x25519_from_private(s_victim), adverts[w].s_pk, fed.coordinator.round_id, victim, w)
        else:
            s_w = secret(w, "s")
            if s_w is None:
                return None
            seed = mask_seed(crypto.x25519_from_private(s_w), adverts[victim].s_pk, fed.coordinator.round_id, victim, w)
        mask = crypto.prg(seed, len(y), bits)
        total = total - mask if victim < w else total + mask
    total &= np.uint64((1 << bits) - 1)
    return quantize.decode_sum(total, 1, fed.config.clip_range, fed.config.quant_bits(n))


# ------------------------------------------------------------------------------------------
# Through the Flower mod
# ------------------------------------------------------------------------------------------
class FlowerUnit:
    """One unit: the real secure-aggregation mod (``make_secagg_mod``) over a train handler that
    adds a fixed update to the model it receives, with the unit's own Flower ``Context``."""

    def __init__(self, name: str, node_id: int, identity_dir: Path, dim: int = 8, seed: int = 0,
                 **node_config: Any) -> None:
        from privacy.secagg.flower import make_secagg_mod

        self.name, self.node_id = name, node_id
        self.context = Context(run_id=1, node_id=node_id, node_config={"unit-id": name, **node_config},
                               state=RecordDict(), run_config={})
        self.mod = make_secagg_mod(identity_dir)
        self.update = np.random.default_rng([seed, node_id]).uniform(-0.5, 0.5, dim)
        self.trained = 0

    def _train(self, msg: Message, context: Context) -> Message:
        self.trained += 1
        start = msg.content.array_records["arrays"]["w"].numpy()
        return Message(RecordDict({"arrays": ArrayRecord({"w": Array(start + self.update)}),
                                   "metrics": MetricRecord({"num-examples": 7})}), reply_to=msg)

    def send(self, config: dict[str, Any], arrays: ArrayRecord | None = None) -> Message:
        content = RecordDict({"config": ConfigRecord(config)})
        if arrays is not None:
            content["arrays"] = arrays
        msg = Message(content=content, dst_node_id=self.node_id, message_type="train")
        return self.mod(msg, self.context, self._train)


def flower_units(folder: Path, n: int) -> list[FlowerUnit]:
    """``n`` units ``unit_0``.. with identities in ``folder``, inside a Flower task identity."""
    from privacy.secagg.flower import make_identities

    set_task_identity()
    names = [f"unit_{k}" for k in range(n)]
    make_identities(folder, names)
    return [FlowerUnit(name, 100 + k, folder) for k, name in enumerate(names)]


def reply_values(reply: Message) -> dict[str, Any]:
    """The unit's ConfigRecord answer (raises if the reply is an error)."""
    assert not reply.has_error(), reply.error.reason
    return dict(reply.content.config_records["secagg"])


class FlowerRound:
    """A coordinator speaking the mod's message format to :class:`FlowerUnit` s, one stage at a
    time; every method returns the raw replies so tests can send anything they like."""

    def __init__(self, units: list[FlowerUnit], config: SecAggConfig, round_id: str = "round-1",
                 dim: int = 8) -> None:
        self.units = {u.name: u for u in units}
        self.config = config
        self.round_id = round_id
        self.global_w = np.zeros(dim)

    def base(self, stage: str, config: SecAggConfig | None = None, round_id: str | None = None) -> dict[str, Any]:
        return {"secagg-stage": stage, "secagg-round": round_id or self.round_id,
                "secagg-config": (config or self.config).model_dump_json()}

    def advertise(self, names: list[str] | None = None) -> dict[str, Message]:
        return {n: self.units[n].send(self.base("advertise")) for n in names or self.units}

    def share(self, adverts: list[dict], names: list[str] | None = None, **extra: Any) -> dict[str, Message]:
        return {n: self.units[n].send({**self.base("share"), "secagg-adverts": json.dumps(adverts), **extra})
                for n in names or self.units}

    def masked(self, u2: list[str], inboxes: dict[str, dict[str, str]], names: list[str] | None = None,
               **extra: Any) -> dict[str, Message]:
        arrays = ArrayRecord({"w": Array(self.global_w)})
        return {n: self.units[n].send({**self.base("masked"), "secagg-u2": json.dumps(u2),
                                       "secagg-inbox": json.dumps(inboxes.get(n, {})), **extra}, arrays)
                for n in names or u2}

    def consistency(self, u3: list[str], names: list[str] | None = None, **extra: Any) -> dict[str, Message]:
        return {n: self.units[n].send({**self.base("consistency"), "secagg-u3": json.dumps(u3), **extra})
                for n in names or u3}

    def unmask(self, u3: list[str], signatures: dict[str, str], names: list[str] | None = None,
               **extra: Any) -> dict[str, Message]:
        return {n: self.units[n].send({**self.base("unmask"), "secagg-u3": json.dumps(u3),
                                       "secagg-signatures": json.dumps(signatures), **extra})
                for n in names or u3}

    # an honest run up to a stage -------------------------------------------------------------
    def honest_until(self, stage: str) -> dict[str, Any]:
        """Run the stages honestly up to and including ``stage``; returns what was collected."""
        out: dict[str, Any] = {}
        names = sorted(self.units)
        out["adverts"] = [json.loads(reply_values(r)["advert"]) for r in self.advertise(names).values()]
        if stage == "advertise":
            return out
        boxes = {n: json.loads(reply_values(r)["boxes"]) for n, r in self.share(out["adverts"], names).items()}
        inboxes: dict[str, dict[str, str]] = {n: {} for n in names}
        for sender, per_receiver in boxes.items():
            for receiver, c in per_receiver.items():
                inboxes[receiver][sender] = c
        out["inboxes"] = inboxes
        if stage == "share":
            return out
        out["masked"] = {n: r.content.array_records["secagg-masked"]["y"].numpy()
                         for n, r in self.masked(names, inboxes).items()}
        if stage == "masked":
            return out
        out["signatures"] = {n: reply_values(r)["signature"] for n, r in self.consistency(names).items()}
        return out
