"""SecAgg+ state machines: what a unit and the coordinator compute at each stage (no transport).

One round, units U1 ⊇ U2 ⊇ U3 (those still answering at each stage):

1. **advertise** (U1): a unit makes fresh X25519 pairs ``c`` and ``s`` and signs
   ``(round, unit, c_pk, s_pk)`` with its Ed25519 identity key.
2. **share** (U2): every unit checks every advertisement against the identity registry and the
   round id (forged or replayed ones abort the round), places the units on a ring in an order
   drawn from the round id and takes the ``k`` nearest as neighbours (a random circulant graph
   of degree ``k ~ 2 log2 n``). It draws a self-mask seed ``b_u`` and Shamir-shares ``b_u`` and
   ``s_sk`` among its neighbours and itself with threshold ``t``, encrypting each neighbour's
   pair of shares under a key agreed with that neighbour's ``c`` key.
3. **masked input** (U3): ``y_u = encode(x_u) + PRG(b_u) + sum_{v in N(u) ∩ U2} ±PRG(s_uv)``
   mod 2^b, with ``s_uv`` = HKDF(X25519(s_u, s_v)) and ``+`` when u sorts before v.
4. **unmask**: for each neighbour v a unit holds shares of, it reveals the ``b`` share if v is
   in U3 and the ``s`` share if v dropped after sharing (v in U2 \\ U3), never both.
   The coordinator rebuilds ``b_u`` (u in U3) and the masks of dropped units with their
   surviving neighbours, and subtracts them: what is left is ``sum_{u in U3} encode(x_u)``.

A unit that drops before sharing (U1 \\ U2) is in nobody's masks and simply absent from the sum.

Threat model: an honest-but-curious coordinator sees every message and learns only the sum of
U3 (at least ``t`` units): units refuse to unmask when the masking graph restricted to U3 is
disconnected, since each connected part's sum could then be unmasked on its own
(:func:`survivors_connected`). Advertisements are authenticated, so the coordinator cannot add
fake units (Sybils) nor replay last round's keys. Not covered: a coordinator that tells
different units different U3 sets (Bonawitz et al.'s consistency round is not run), and
collusion of the coordinator with ``t`` or more units.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import dataclass, field

import numpy as np

from privacy.secagg import crypto, quantize, shamir
from privacy.secagg.config import SecAggConfig, SecAggError


def _advert_payload(round_id: str, unit: str, c_pk: bytes, s_pk: bytes) -> bytes:
    return b"fedseg-secagg-advert|" + round_id.encode() + b"|" + unit.encode() + b"|" + c_pk + s_pk


def ring_order(round_id: str, units: list[str]) -> list[str]:
    """The units in a pseudo-random order drawn from the round id (public, same for all)."""
    return sorted(units, key=lambda u: hashlib.sha256(f"{round_id}|{u}".encode()).digest())


def neighbours(round_id: str, units: list[str], unit: str, degree: int) -> list[str]:
    """``degree`` nearest units on the ring (all others when degree >= n - 1)."""
    order = ring_order(round_id, units)
    n = len(order)
    if degree >= n - 1:
        return [u for u in order if u != unit]
    i = order.index(unit)
    half = degree // 2
    return [order[(i + d) % n] for d in range(-half, half + 1) if d != 0]


def survivors_connected(round_id: str, units: list[str], survivors: list[str], degree: int) -> bool:
    """Whether the masking graph restricted to ``survivors`` (U3) is connected.

    Masks between two survivors are never revealed, masks towards dropped units are: so the
    coordinator can unmask the sum of every connected component of that graph on its own. Only
    a connected graph leaves it the sum of all survivors and nothing finer."""
    alive = set(survivors)
    if not alive:
        return False
    order = ring_order(round_id, units)
    n = len(order)
    position = {u: i for i, u in enumerate(order)}
    complete, half = degree >= n - 1, degree // 2
    start = next(iter(alive))
    seen, stack = {start}, [start]
    while stack:
        u = stack.pop()
        near = order if complete else [order[(position[u] + d) % n] for d in range(-half, half + 1)]
        for v in near:
            if v in alive and v not in seen:
                seen.add(v)
                stack.append(v)
    return seen == alive


def _pair_info(purpose: str, round_id: str, a: str, b: str) -> str:
    lo, hi = sorted((a, b))
    return f"fedseg-secagg|{purpose}|{round_id}|{lo}|{hi}"


@dataclass
class Advert:
    unit: str
    round_id: str
    c_pk: bytes
    s_pk: bytes
    signature: bytes


def check_adverts(adverts: list[Advert], round_id: str, registry: dict[str, bytes]) -> None:
    """Refuse unknown units, bad signatures, another round's keys and duplicates."""
    seen = set()
    for ad in adverts:
        if ad.unit in seen:
            raise SecAggError(f"two advertisements for unit {ad.unit!r}")
        seen.add(ad.unit)
        if ad.unit not in registry:
            raise SecAggError(f"advertisement from unknown unit {ad.unit!r} (not in the identity registry)")
        if ad.round_id != round_id:
            raise SecAggError(f"advertisement of {ad.unit!r} is for round {ad.round_id!r}, not {round_id!r} (replay)")
        if not crypto.verify(registry[ad.unit], ad.signature, _advert_payload(ad.round_id, ad.unit, ad.c_pk, ad.s_pk)):
            raise SecAggError(f"advertisement of {ad.unit!r} has an invalid signature (forged)")


@dataclass
class UnitSession:
    """One unit's state for one round."""

    unit: str
    identity: object  # Ed25519PrivateKey
    registry: dict[str, bytes]
    config: SecAggConfig
    round_id: str = ""
    c_key: object = None
    s_key: object = None
    b_seed: bytes = b""
    adverts: dict[str, Advert] = field(default_factory=dict)
    neighbours: list[str] = field(default_factory=list)
    u2: list[str] = field(default_factory=list)
    held: dict[str, tuple[int, int]] = field(default_factory=dict)  # neighbour -> (b share, s share)
    index: dict[str, int] = field(default_factory=dict)
    threshold: int = 0
    q_bits: int = 0

    # 1 -----------------------------------------------------------------------------------
    def advertise(self, round_id: str) -> Advert:
        self.round_id = round_id
        self.c_key, self.s_key = crypto.new_x25519(), crypto.new_x25519()
        c_pk, s_pk = crypto.public_bytes(self.c_key), crypto.public_bytes(self.s_key)
        signature = crypto.sign(self.identity, _advert_payload(round_id, self.unit, c_pk, s_pk))
        return Advert(self.unit, round_id, c_pk, s_pk, signature)

    # 2 -----------------------------------------------------------------------------------
    def share_keys(self, adverts: list[Advert]) -> dict[str, bytes]:
        check_adverts(adverts, self.round_id, self.registry)
        self.adverts = {a.unit: a for a in adverts}
        if self.unit not in self.adverts:
            raise SecAggError("the coordinator left this unit's own advertisement out")
        units = sorted(self.adverts)
        n = len(units)
        self.index = {u: i + 1 for i, u in enumerate(units)}
        degree = self.config.degree_for(n)
        self.threshold = self.config.threshold_for(n)
        self.q_bits = self.config.quant_bits(n)
        self.neighbours = neighbours(self.round_id, units, self.unit, degree)
        self.b_seed = secrets.token_bytes(32)
        holders = [self.index[v] for v in self.neighbours] + [self.index[self.unit]]
        b_shares = shamir.split(int.from_bytes(self.b_seed, "big"), holders, self.threshold)
        s_shares = shamir.split(int.from_bytes(crypto.private_bytes(self.s_key), "big"), holders, self.threshold)
        self.held = {self.unit: (b_shares[self.index[self.unit]], s_shares[self.index[self.unit]])}
        out = {}
        for v in self.neighbours:
            key = crypto.derive(crypto.agree(self.c_key, self.adverts[v].c_pk), _pair_info("enc", self.round_id, self.unit, v))
            plain = json.dumps({"from": self.unit, "to": v, "b": hex(b_shares[self.index[v]]),
                                "s": hex(s_shares[self.index[v]])}).encode()
            out[v] = crypto.encrypt(key, plain, _pair_info("ad", self.round_id, self.unit, v).encode())
        return out

    # 3 -----------------------------------------------------------------------------------
    def masked_input(self, x: np.ndarray, u2: list[str], received: dict[str, bytes]) -> np.ndarray:
        """``received``: sender -> ciphertext addressed to this unit by a neighbour in U2."""
        if len(u2) < self.threshold:
            raise SecAggError(f"only {len(u2)} units shared keys; the threshold is {self.threshold}")
        self.u2 = list(u2)
        for sender, ciphertext in received.items():
            if sender not in self.neighbours or sender not in u2:
                raise SecAggError(f"a share from {sender!r}, who is not a neighbour in U2")
            key = crypto.derive(crypto.agree(self.c_key, self.adverts[sender].c_pk),
                                _pair_info("enc", self.round_id, self.unit, sender))
            try:
                payload = json.loads(crypto.decrypt(key, ciphertext, _pair_info("ad", self.round_id, sender,
                                                                               self.unit).encode()))
            except Exception as exc:  # noqa: BLE001 - any failure means tampering
                raise SecAggError(f"share from {sender!r} does not decrypt: {type(exc).__name__}") from None
            if payload["from"] != sender or payload["to"] != self.unit:
                raise SecAggError(f"share from {sender!r} is addressed wrongly")
            self.held[sender] = (int(payload["b"], 16), int(payload["s"], 16))
        # uint64 arithmetic wraps mod 2^64, and 2^b divides 2^64: accumulate in place and reduce
        # mod 2^b once at the end (same result as reducing after every mask, no temporaries).
        y = quantize.encode(x, self.config.clip_range, self.q_bits)
        mask = np.empty_like(y)
        y += crypto.keystream_into(self.b_seed, mask)
        for v in self.neighbours:
            if v not in u2:
                continue
            seed = crypto.derive(crypto.agree(self.s_key, self.adverts[v].s_pk), _pair_info("mask", self.round_id, self.unit, v))
            crypto.keystream_into(seed, mask)
            if self.unit < v:
                y += mask
            else:
                y -= mask
        y &= np.uint64((1 << self.config.modulus_bits) - 1)
        return y

    # 4 -----------------------------------------------------------------------------------
    def unmask(self, u3: list[str]) -> dict[str, tuple[str, str]]:
        """For every unit this one holds shares of: ("b", share) if it is in U3, ("s", share) if it
        dropped after sharing. Refuses if U3 is below the threshold."""
        if len(u3) < self.threshold:
            raise SecAggError(f"only {len(u3)} masked inputs; the threshold is {self.threshold}")
        if not survivors_connected(self.round_id, sorted(self.adverts), list(u3), self.config.degree_for(len(self.adverts))):
            raise SecAggError("the surviving units' masking graph is split: revealing shares would expose the "
                              "separate sums of its parts")
        survivors = set(u3)
        out = {}
        for v, (b_share, s_share) in self.held.items():
            if v in survivors:
                out[v] = ("b", hex(b_share))
            elif v in self.u2:
                out[v] = ("s", hex(s_share))
        return out


@dataclass
class CoordinatorSession:
    """The coordinator's state for one round; it never holds a unit's private key or seed
    except those the protocol lets it rebuild (b of survivors, s of dropped units)."""

    config: SecAggConfig
    round_id: str = field(default_factory=lambda: secrets.token_hex(16))
    adverts: dict[str, Advert] = field(default_factory=dict)
    u2: list[str] = field(default_factory=list)
    u3: list[str] = field(default_factory=list)
    masked: dict[str, np.ndarray] = field(default_factory=dict)

    def collect_adverts(self, adverts: list[Advert], min_units: int) -> list[Advert]:
        self.adverts = {a.unit: a for a in adverts}
        n = len(self.adverts)
        threshold = self.config.threshold_for(n) if n >= 3 else 3
        if n < max(min_units, threshold, 3):
            raise SecAggError(f"{n} units advertised keys; secure aggregation needs at least "
                              f"{max(min_units, threshold, 3)} (threshold {threshold})")
        return list(self.adverts.values())

    def route_shares(self, outgoing: dict[str, dict[str, bytes]]) -> dict[str, dict[str, bytes]]:
        """sender -> {receiver: ciphertext} becomes receiver -> {sender: ciphertext}; U2 = senders."""
        self.u2 = sorted(outgoing)
        n = len(self.adverts)
        if len(self.u2) < self.config.threshold_for(n):
            raise SecAggError(f"only {len(self.u2)} units shared keys; threshold {self.config.threshold_for(n)}")
        inbox: dict[str, dict[str, bytes]] = {u: {} for u in self.u2}
        for sender, boxes in outgoing.items():
            for receiver, ciphertext in boxes.items():
                if receiver in inbox:
                    inbox[receiver][sender] = ciphertext
        return inbox

    def collect_masked(self, masked: dict[str, np.ndarray]) -> list[str]:
        self.masked = {u: np.asarray(y, dtype=np.uint64) for u, y in masked.items() if u in self.u2}
        self.u3 = sorted(self.masked)
        n = len(self.adverts)
        if len(self.u3) < self.config.threshold_for(n):
            raise SecAggError(f"only {len(self.u3)} masked inputs; threshold {self.config.threshold_for(n)}")
        if not survivors_connected(self.round_id, sorted(self.adverts), self.u3, self.config.degree_for(n)):
            raise SecAggError("the surviving units' masking graph is split (too many neighbouring units dropped); "
                              "units would refuse to unmask, so the round is abandoned")
        return self.u3

    def aggregate(self, reveals: dict[str, dict[str, tuple[str, str]]]) -> tuple[np.ndarray, int, float]:
        """Sum of the U3 units' clipped inputs (floats), their number and the decoding error bound."""
        units = sorted(self.adverts)
        n = len(units)
        index = {u: i + 1 for i, u in enumerate(units)}
        threshold = self.config.threshold_for(n)
        degree = self.config.degree_for(n)
        bits, q_bits = self.config.modulus_bits, self.config.quant_bits(n)
        length = len(next(iter(self.masked.values())))
        # as in masked_input: wrap mod 2^64 in place, reduce mod 2^b once at the end
        total = np.zeros(length, dtype=np.uint64)
        for y in self.masked.values():
            total += y
        mask = np.empty(length, dtype=np.uint64)
        b_shares: dict[str, dict[int, int]] = {}
        s_shares: dict[str, dict[int, int]] = {}
        for holder, revealed in reveals.items():
            for owner, (kind, share) in revealed.items():
                target = b_shares if kind == "b" else s_shares
                if kind == "b" and owner not in self.u3 or kind == "s" and owner in self.u3:
                    continue  # honest units never send these; ignore anything else
                target.setdefault(owner, {})[index[holder]] = int(share, 16)
        for u in self.u3:
            shares = b_shares.get(u, {})
            if len(shares) < threshold:
                raise SecAggError(f"{len(shares)} shares of {u!r}'s self-mask; {threshold} needed")
            seed = shamir.reconstruct(dict(list(shares.items())[:threshold])).to_bytes(32, "big")
            total -= crypto.keystream_into(seed, mask)
        for v in sorted(set(self.u2) - set(self.u3)):
            shares = s_shares.get(v, {})
            if len(shares) < threshold:
                raise SecAggError(f"{len(shares)} shares of dropped unit {v!r}'s mask key; {threshold} needed")
            s_private = crypto.x25519_from_private(
                shamir.reconstruct(dict(list(shares.items())[:threshold])).to_bytes(32, "big"))
            for u in neighbours(self.round_id, units, v, degree):
                if u not in self.u3:
                    continue
                seed = crypto.derive(crypto.agree(s_private, self.adverts[u].s_pk), _pair_info("mask", self.round_id, u, v))
                crypto.keystream_into(seed, mask)
                # u added +mask if u < v, else -mask: take it back out
                if u < v:
                    total -= mask
                else:
                    total += mask
        total &= np.uint64((1 << bits) - 1)
        m = len(self.u3)
        clip = self.config.clip_range
        return quantize.decode_sum(total, m, clip, q_bits), m, quantize.error_bound(m, clip, q_bits)
