"""SecAgg+ state machines: what a unit and the coordinator compute at each stage (no transport).

One round, units U1 ⊇ U2 ⊇ U3 ⊇ U4 (those still answering at each stage). The coordinator is
not trusted: it may deviate, choosing every value it sends. Each unit therefore runs its own
state machine per round and checks everything it is told.

1. **advertise** (U1): a unit pins the round's settings, makes fresh X25519 pairs ``c`` and
   ``s`` and signs ``(round, unit, settings hash, c_pk, s_pk)`` with its Ed25519 identity key.
2. **share** (U2): every unit checks every advertisement (registry, signature, round, settings
   hash equal to its own, well-formed keys: 32 bytes, canonical, not of low order, no key twice),
   derives the masking graph from a hash of all advertisements (the *view digest*: no single
   party chooses it), and Shamir-shares its self-mask seed ``b_u`` and ``s_sk`` among its ``k``
   neighbours and itself with threshold ``t`` (a strict majority of those k + 1 holders),
   encrypting each neighbour's pair of shares with the view digest as associated data.
3. **masked input** (U3): a unit answers only if U2 holds at least ``t`` of its neighbours and it
   received a share from each of them; ``y_u = encode(x_u) + PRG(b_u) + sum_{v in N(u) ∩ U2}
   ±PRG(s_uv)`` mod 2^b.
4. **consistency** (U4): a unit checks the U3 it is sent (a subset of its U2, itself in it, at
   least 3 units, the threshold, the settings' ``min_survivors`` and its own floor, connected
   masking graph) and signs ``(round, settings hash, view digest, sorted U3)``.
5. **unmask**: a unit reveals shares only for the U3 it signed, and only after verifying at least
   ``t`` valid signatures over it from its own share holders: the ``b`` share of holders' owners
   in U3, the ``s`` share of those in U2 \\ U3, never both for one owner.

Every stage is answered at most once per round and in this order; a refused stage abandons the
round on that unit. Why these checks suffice, and what they do not cover, is in
``docs/secure-aggregation.md`` (threat model).
"""

from __future__ import annotations

import hashlib
import json
import secrets
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np

from privacy.secagg import crypto, quantize, shamir
from privacy.secagg.config import SecAggConfig, SecAggError

STAGES = ("advertise", "share", "masked", "consistency", "unmask")
ABANDONED = "abandoned"
MAX_NAME = 128  # longest unit name or round id accepted in a message


def frame(*parts: bytes | str) -> bytes:
    """Length-prefixed concatenation: two different lists of parts never give the same bytes."""
    out = bytearray()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        out += len(data).to_bytes(4, "big") + data
    return bytes(out)


@dataclass(frozen=True)
class Advert:
    """A unit's signed key advertisement for one round."""

    unit: str
    round_id: str
    settings: bytes  # SHA-256 of the canonical settings the unit pinned
    c_pk: bytes
    s_pk: bytes
    signature: bytes

    def payload(self) -> bytes:
        return frame("fedseg-secagg-advert", self.round_id, self.unit, self.settings, self.c_pk, self.s_pk)


def view_digest(round_id: str, settings: bytes, adverts: list[Advert]) -> bytes:
    """Hash of the round, its settings and every advertisement (sorted by unit): the seed of the
    masking graph and part of what shares and consistency signatures are bound to. Each
    advertisement holds its unit's fresh keys, so the coordinator cannot choose the graph; it can
    only leave advertisements out or start a new round (docs: threat model)."""
    digest = hashlib.sha256(frame("fedseg-secagg-view", round_id, settings))
    for ad in sorted(adverts, key=lambda a: a.unit):
        digest.update(frame(ad.payload()))
    return digest.digest()


def ring_order(seed: bytes, units: list[str]) -> list[str]:
    """The units in a pseudo-random order drawn from the view digest (public, same for all)."""
    return sorted(units, key=lambda u: hashlib.sha256(frame(seed, u)).digest())


def neighbours(seed: bytes, units: list[str], unit: str, degree: int) -> list[str]:
    """``degree`` nearest units on the ring (all others when degree >= n - 1)."""
    order = ring_order(seed, units)
    n = len(order)
    if degree >= n - 1:
        return [u for u in order if u != unit]
    i = order.index(unit)
    half = degree // 2
    return [order[(i + d) % n] for d in range(-half, half + 1) if d != 0]


def survivors_connected(seed: bytes, units: list[str], survivors: list[str], degree: int) -> bool:
    """Whether the masking graph restricted to ``survivors`` (U3) is connected.

    Masks between two survivors are never revealed, masks towards dropped units are: so the
    coordinator can unmask the sum of every connected component of that graph on its own. Only
    a connected graph leaves it the sum of all survivors and nothing finer."""
    alive = set(survivors)
    if not alive:
        return False
    order = ring_order(seed, units)
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


def mask_seed(private: Any, peer_public: bytes, round_id: str, a: str, b: str) -> bytes:
    """The pairwise mask seed of units a and b: HKDF(X25519(s_a, s_b)), bound to round and pair."""
    try:
        secret = crypto.agree(private, peer_public)
    except ValueError:
        raise SecAggError("key agreement failed: a low-order or malformed X25519 key") from None
    return crypto.derive(secret, _pair_info("mask", round_id, a, b))


def _share_key(private: Any, peer_public: bytes, round_id: str, a: str, b: str) -> bytes:
    try:
        secret = crypto.agree(private, peer_public)
    except ValueError:
        raise SecAggError("key agreement failed: a low-order or malformed X25519 key") from None
    return crypto.derive(secret, _pair_info("enc", round_id, a, b))


def _share_ad(round_id: str, seed: bytes, sender: str, receiver: str) -> bytes:
    """Associated data of a share ciphertext: a receiver whose view of the round (advertisements,
    settings) differs from the sender's cannot decrypt it, so split views stop at the masked stage."""
    return frame("fedseg-secagg-share", round_id, seed, sender, receiver)


def consistency_payload(round_id: str, settings: bytes, seed: bytes, u3: list[str]) -> bytes:
    """What a unit signs in the consistency round: the round, its settings, its view and U3."""
    return frame("fedseg-secagg-consistency", round_id, settings, seed, str(len(u3)), *sorted(u3))


def _name(value: object, what: str) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= MAX_NAME:
        raise SecAggError(f"malformed {what}: expected a non-empty string of at most {MAX_NAME} characters")
    return value


def check_advert_fields(ad: object) -> Advert:
    """Types and lengths of one advertisement (what a parser cannot guarantee)."""
    if not isinstance(ad, Advert):
        raise SecAggError(f"malformed advertisement: {type(ad).__name__}, not an Advert")
    _name(ad.unit, "advertisement: unit")
    _name(ad.round_id, f"advertisement of {ad.unit!r}: round id")
    for what, value, size in (("settings hash", ad.settings, 32), ("signature", ad.signature, 64)):
        if not isinstance(value, bytes) or len(value) != size:
            raise SecAggError(f"malformed advertisement of {ad.unit!r}: its {what} must be {size} bytes")
    for which, key in (("c", ad.c_pk), ("s", ad.s_pk)):
        problem = crypto.x25519_public_problem(key)
        if problem:
            raise SecAggError(f"advertisement of {ad.unit!r}: its {which} key is not a valid X25519 key: {problem}")
    return ad


def check_adverts(adverts: object, round_id: str, settings: bytes, registry: dict[str, bytes]) -> list[Advert]:
    """Refuse malformed advertisements, unknown units, bad signatures, another round's or other
    settings' keys, two adverts of one unit, and any X25519 key used twice in the round."""
    if not isinstance(adverts, list) or not adverts:
        raise SecAggError("malformed advertisements: expected a non-empty list")
    seen: set[str] = set()
    keys: set[bytes] = set()
    for ad in adverts:
        check_advert_fields(ad)
        if ad.unit in seen:
            raise SecAggError(f"two advertisements for unit {ad.unit!r}")
        seen.add(ad.unit)
        if ad.unit not in registry:
            raise SecAggError(f"advertisement from unknown unit {ad.unit!r} (not in the identity registry)")
        if ad.round_id != round_id:
            raise SecAggError(f"advertisement of {ad.unit!r} is for round {ad.round_id!r}, not {round_id!r} (replay)")
        if ad.settings != settings:
            raise SecAggError(f"advertisement of {ad.unit!r} was made under other settings than this unit's "
                              "(threshold, degree, ring, clip range or L2 clip differ)")
        if not crypto.verify(registry[ad.unit], ad.signature, ad.payload()):
            raise SecAggError(f"advertisement of {ad.unit!r} has an invalid signature (forged)")
        for key in (ad.c_pk, ad.s_pk):
            if key in keys:
                raise SecAggError(f"advertisement of {ad.unit!r} holds an X25519 key that appears twice in this "
                                  "round (c equal to s, or another unit's key)")
            keys.add(key)
    return list(adverts)


def _unit_list(value: object, what: str, known: dict[str, Any] | set[str]) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(u, str) for u in value):
        raise SecAggError(f"malformed {what}: expected a list of unit names")
    if len(set(value)) != len(value):
        raise SecAggError(f"{what} names a unit twice")
    strangers = [u for u in value if u not in known]
    if strangers:
        raise SecAggError(f"{what} names {strangers[0]!r}, who is not in this round")
    return sorted(value)


@dataclass
class UnitSession:
    """One unit's state for one round: which stage it answered last, and what it holds."""

    unit: str
    identity: Any  # Ed25519PrivateKey
    registry: dict[str, bytes]
    config: SecAggConfig
    min_units: int = 3  # the unit's own floor (secagg-min-units); never below 3
    min_threshold: int = 0  # the unit's own floor under t (secagg-min-threshold)
    round_id: str = ""
    stage: str = ""  # the last stage answered, or ABANDONED
    c_key: Any = None
    s_key: Any = None
    b_seed: bytes = b""
    adverts: dict[str, Advert] = field(default_factory=dict)
    seed: bytes = b""  # the view digest
    neighbours: list[str] = field(default_factory=list)
    u2: list[str] = field(default_factory=list)
    u3: list[str] = field(default_factory=list)  # the U3 this unit signed
    held: dict[str, tuple[int, int]] = field(default_factory=dict)  # owner -> (b share, s share)
    revealed: dict[str, str] = field(default_factory=dict)  # owner -> "b" or "s"
    index: dict[str, int] = field(default_factory=dict)
    threshold: int = 0
    degree: int = 0
    q_bits: int = 0
    masked_sent: bool = False

    @property
    def settings(self) -> bytes:
        return self.config.settings_hash()

    @property
    def holders(self) -> set[str]:
        """This unit's share holders: its neighbours and itself."""
        return set(self.neighbours) | {self.unit}

    # the state machine -------------------------------------------------------------------
    def check_stage(self, stage: str) -> None:
        """Raise unless ``stage`` is the next one of this round (each once, in order)."""
        where = f"round {self.round_id!r}" if self.round_id else "this round"
        if self.stage == ABANDONED:
            raise SecAggError(f"{where} was abandoned by this unit after a refusal; it answers no further stage")
        expected = STAGES.index(self.stage) + 1 if self.stage else 0
        asked = STAGES.index(stage)
        if asked < expected:
            raise SecAggError(f"stage {stage!r} of {where} was already answered: each stage is answered once per round")
        if asked > expected:
            raise SecAggError(f"stage {stage!r} asked before {STAGES[expected]!r} in {where}: the stages go "
                              + ", ".join(STAGES))

    @contextmanager
    def _stage(self, stage: str) -> Iterator[None]:
        """Enter ``stage``; any refusal (or failure) inside abandons the round for good."""
        try:
            self.check_stage(stage)
        except SecAggError:
            self.stage = ABANDONED
            raise
        self.stage = stage
        try:
            yield
        except BaseException:
            self.stage = ABANDONED
            raise

    def _check_survivors(self, u3: list[str]) -> None:
        m = len(u3)
        if m < 3:
            raise SecAggError(f"{m} masked inputs: this unit takes part only in sums of at least 3 units (with 2, "
                              "each could subtract its own update from the sum and read the other's)")
        if m < self.min_units:
            raise SecAggError(f"{m} masked inputs; this unit needs at least {self.min_units} (secagg-min-units)")
        if m < self.threshold:
            raise SecAggError(f"only {m} masked inputs; the threshold is {self.threshold}")
        if m < self.config.min_survivors:
            raise SecAggError(f"only {m} masked inputs; the round's settings (pinned when this unit advertised) "
                              f"ask for at least {self.config.min_survivors} survivors")
        if not survivors_connected(self.seed, sorted(self.adverts), u3, self.degree):
            raise SecAggError("the surviving units' masking graph is split: revealing shares would expose the "
                              "separate sums of its parts")

    # 1 -----------------------------------------------------------------------------------
    def advertise(self, round_id: str) -> Advert:
        with self._stage("advertise"):
            self.round_id = _name(round_id, "round id")
            self.c_key, self.s_key = crypto.new_x25519(), crypto.new_x25519()
            c_pk, s_pk = crypto.public_bytes(self.c_key), crypto.public_bytes(self.s_key)
            unsigned = Advert(self.unit, round_id, self.settings, c_pk, s_pk, b"")
            return Advert(self.unit, round_id, self.settings, c_pk, s_pk,
                          crypto.sign(self.identity, unsigned.payload()))

    # 2 -----------------------------------------------------------------------------------
    def share_keys(self, adverts: list[Advert]) -> dict[str, bytes]:
        with self._stage("share"):
            check_adverts(adverts, self.round_id, self.settings, self.registry)
            self.adverts = {a.unit: a for a in adverts}
            mine = self.adverts.get(self.unit)
            if mine is None:
                raise SecAggError("the coordinator left this unit's own advertisement out")
            if (mine.c_pk, mine.s_pk) != (crypto.public_bytes(self.c_key), crypto.public_bytes(self.s_key)):
                raise SecAggError("this unit's advertisement was replaced by keys it did not make")
            units = sorted(self.adverts)
            n = len(units)
            floor = max(3, self.min_units)
            if n < floor:
                raise SecAggError(f"{n} units advertised; this unit needs at least {floor} (secagg-min-units)")
            self.degree = self.config.degree_for(n)
            self.threshold = self.config.threshold_for(n)
            if self.threshold < self.min_threshold:
                raise SecAggError(f"the round's threshold {self.threshold} is below this unit's secagg-min-threshold "
                                  f"{self.min_threshold}")
            self.q_bits = self.config.quant_bits(n)
            self.seed = view_digest(self.round_id, self.settings, adverts)
            self.index = {u: i + 1 for i, u in enumerate(units)}
            self.neighbours = neighbours(self.seed, units, self.unit, self.degree)
            self.b_seed = secrets.token_bytes(32)
            holders = [self.index[v] for v in self.neighbours] + [self.index[self.unit]]
            b_shares = shamir.split(int.from_bytes(self.b_seed, "big"), holders, self.threshold)
            s_shares = shamir.split(int.from_bytes(crypto.private_bytes(self.s_key), "big"), holders, self.threshold)
            self.held = {self.unit: (b_shares[self.index[self.unit]], s_shares[self.index[self.unit]])}
            out = {}
            for v in self.neighbours:
                key = _share_key(self.c_key, self.adverts[v].c_pk, self.round_id, self.unit, v)
                plain = json.dumps({"from": self.unit, "to": v, "b": hex(b_shares[self.index[v]]),
                                    "s": hex(s_shares[self.index[v]])}).encode()
                out[v] = crypto.encrypt(key, plain, _share_ad(self.round_id, self.seed, self.unit, v))
            return out

    # 3 -----------------------------------------------------------------------------------
    def prepare_masked(self, u2: list[str], received: dict[str, bytes]) -> list[str]:
        """The checks of the masked stage, before the unit trains: U2 (well-formed, holding this unit,
        at least t of its neighbours), and one share from each of those neighbours, all decrypting.
        Enters the stage; returns the neighbours this unit will mask with."""
        with self._stage("masked"):
            u2 = _unit_list(u2, "U2", self.adverts)
            if self.unit not in u2:
                raise SecAggError("U2 leaves this unit out")
            floor = max(3, self.min_units, self.threshold)
            if len(u2) < floor:
                raise SecAggError(f"only {len(u2)} units shared keys; this unit needs at least {floor} "
                                  f"(threshold {self.threshold}, secagg-min-units {self.min_units})")
            near = [v for v in self.neighbours if v in u2]
            if len(near) < self.threshold:
                raise SecAggError(f"only {len(near)} of this unit's {len(self.neighbours)} neighbours are in U2; it "
                                  f"masks its input only with at least t = {self.threshold} of them")
            if not isinstance(received, dict):
                raise SecAggError("malformed inbox: expected sender -> ciphertext")
            extra = sorted(set(received) - set(near))
            if extra:
                raise SecAggError(f"a share from {extra[0]!r}, who is not a neighbour in U2")
            missing = [v for v in near if v not in received]
            if missing:
                raise SecAggError(f"no share from {missing[0]!r}, a neighbour the coordinator lists in U2")
            for sender in near:
                self.held[sender] = self._open_share(sender, received[sender])
            self.u2 = u2
            return near

    def _open_share(self, sender: str, ciphertext: object) -> tuple[int, int]:
        if not isinstance(ciphertext, bytes) or len(ciphertext) < 28:
            raise SecAggError(f"share from {sender!r} is malformed")
        key = _share_key(self.c_key, self.adverts[sender].c_pk, self.round_id, self.unit, sender)
        try:
            payload = json.loads(crypto.decrypt(key, ciphertext, _share_ad(self.round_id, self.seed, sender, self.unit)))
            b_share, s_share = int(payload["b"], 16), int(payload["s"], 16)
            ok = payload["from"] == sender and payload["to"] == self.unit
        except Exception as exc:  # noqa: BLE001 - any failure means tampering or another view of the round
            raise SecAggError(f"share from {sender!r} does not decrypt ({type(exc).__name__}): tampered, or "
                              "the sender was shown other advertisements") from None
        if not ok or not (0 <= b_share < shamir.PRIME and 0 <= s_share < shamir.PRIME):
            raise SecAggError(f"share from {sender!r} is addressed wrongly or out of range")
        return b_share, s_share

    def mask_input(self, x: np.ndarray) -> np.ndarray:
        """``y = encode(x) + PRG(b) + sum ±PRG(s_uv)`` over the neighbours in U2; once per round."""
        if self.stage != "masked" or self.masked_sent:
            raise SecAggError(f"round {self.round_id!r}: a masked input is sent once, right after the masked "
                              "stage's checks")
        self.masked_sent = True
        try:
            y = quantize.encode(x, self.config.clip_range, self.q_bits)
        except ValueError as exc:
            self.stage = ABANDONED
            raise SecAggError(str(exc)) from None
        # uint64 arithmetic wraps mod 2^64, and 2^b divides 2^64: accumulate in place and reduce
        # mod 2^b once at the end (same result as reducing after every mask, no temporaries).
        mask = np.empty_like(y)
        y += crypto.keystream_into(self.b_seed, mask)
        for v in self.neighbours:
            if v not in self.u2:
                continue
            crypto.keystream_into(mask_seed(self.s_key, self.adverts[v].s_pk, self.round_id, self.unit, v), mask)
            if self.unit < v:
                y += mask
            else:
                y -= mask
        y &= np.uint64((1 << self.config.modulus_bits) - 1)
        return y

    def masked_input(self, x: np.ndarray, u2: list[str], received: dict[str, bytes]) -> np.ndarray:
        """``received``: sender -> ciphertext addressed to this unit by a neighbour in U2."""
        self.prepare_masked(u2, received)
        return self.mask_input(x)

    # 4 -----------------------------------------------------------------------------------
    def consistency(self, u3: list[str]) -> bytes:
        """Check the survivor set U3 and sign it (Bonawitz et al.'s consistency check)."""
        with self._stage("consistency"):
            if not self.masked_sent:
                raise SecAggError("this unit sent no masked input in this round")
            u3 = _unit_list(u3, "U3", set(self.u2))
            if self.unit not in u3:
                raise SecAggError("U3 leaves this unit out though it sent its masked input")
            self._check_survivors(u3)
            self.u3 = u3
            return crypto.sign(self.identity, consistency_payload(self.round_id, self.settings, self.seed, u3))

    def check_signatures(self, u3: list[str], signatures: dict[str, bytes]) -> None:
        """At least t valid consistency signatures over exactly ``u3``, from this unit's own share
        holders (registered units in U3). Each honest unit signs one U3 per round, so two U3 sets
        cannot both gather t signatures among one unit's k + 1 holders when t is a majority."""
        if not isinstance(signatures, dict):
            raise SecAggError("malformed consistency signatures: expected unit -> signature")
        payload = consistency_payload(self.round_id, self.settings, self.seed, u3)
        valid = {signer for signer, signature in signatures.items()
                 if signer in u3 and signer in self.holders and signer in self.registry
                 and isinstance(signature, bytes) and crypto.verify(self.registry[signer], signature, payload)}
        if len(valid) < self.threshold:
            raise SecAggError(f"only {len(valid)} valid consistency signatures over this U3 from this unit's share "
                              f"holders; {self.threshold} needed before it reveals any share")

    # 5 -----------------------------------------------------------------------------------
    def unmask(self, u3: list[str], signatures: dict[str, bytes]) -> dict[str, tuple[str, str]]:
        """For every unit this one holds shares of: ("b", share) if it is in U3, ("s", share) if it
        dropped after sharing; only for the U3 this unit signed, once t holders signed it too."""
        with self._stage("unmask"):
            u3 = _unit_list(u3, "U3", set(self.u2))
            if u3 != self.u3:
                raise SecAggError("asked to unmask for another U3 than the one this unit signed in the consistency "
                                  "round")
            self.check_signatures(u3, signatures)
            survivors = set(u3)
            out = {}
            for v, (b_share, s_share) in self.held.items():
                if v in survivors:
                    kind, share = "b", b_share
                elif v in self.u2:
                    kind, share = "s", s_share
                else:
                    continue
                if self.revealed.get(v, kind) != kind:  # cannot happen with one unmask per round; kept as a guard
                    raise SecAggError(f"this unit already revealed the other share of {v!r}")
                out[v] = (kind, hex(share))
            self.revealed.update({v: kind for v, (kind, _) in out.items()})
            return out


@dataclass
class CoordinatorSession:
    """The coordinator's state for one round; it never holds a unit's private key or seed
    except those the protocol lets it rebuild (b of survivors, s of dropped units)."""

    config: SecAggConfig
    round_id: str = field(default_factory=lambda: secrets.token_hex(16))
    adverts: dict[str, Advert] = field(default_factory=dict)
    seed: bytes = b""
    u2: list[str] = field(default_factory=list)
    u3: list[str] = field(default_factory=list)
    u4: list[str] = field(default_factory=list)
    inbox: dict[str, dict[str, bytes]] = field(default_factory=dict)  # receiver -> {sender: ciphertext}
    masked: dict[str, np.ndarray] = field(default_factory=dict)

    def collect_adverts(self, adverts: list[Advert], min_units: int) -> list[Advert]:
        """The advertisements to forward (one per unit); the view digest every unit will compute."""
        self.adverts = {a.unit: a for a in adverts}
        n = len(self.adverts)
        threshold = self.config.threshold_for(n) if n >= 3 else 3
        if n >= 3:
            self.config.survivors_for(n)  # a min_survivors above the advertisers: no round could complete
        if n < max(min_units, threshold, 3):
            raise SecAggError(f"{n} units advertised keys; secure aggregation needs at least "
                              f"{max(min_units, threshold, 3)} (threshold {threshold})")
        forwarded = list(self.adverts.values())
        self.seed = view_digest(self.round_id, self.config.settings_hash(), forwarded)
        return forwarded

    def route_shares(self, outgoing: dict[str, dict[str, bytes]]) -> dict[str, dict[str, bytes]]:
        """sender -> {receiver: ciphertext} becomes receiver -> {sender: ciphertext}; U2 = senders."""
        self.u2 = sorted(outgoing)
        n = len(self.adverts)
        need = max(3, self.config.threshold_for(n))
        if len(self.u2) < need:
            raise SecAggError(f"only {len(self.u2)} units shared keys; {need} needed (threshold "
                              f"{self.config.threshold_for(n)})")
        inbox: dict[str, dict[str, bytes]] = {u: {} for u in self.u2}
        for sender, boxes in outgoing.items():
            for receiver, ciphertext in boxes.items():
                if receiver in inbox:
                    inbox[receiver][sender] = ciphertext
        self.inbox = inbox
        return inbox

    def collect_masked(self, masked: dict[str, np.ndarray]) -> list[str]:
        self.masked = {u: np.asarray(y, dtype=np.uint64) for u, y in masked.items() if u in self.u2}
        self.u3 = sorted(self.masked)
        n = len(self.adverts)
        if len(self.u3) < 3:
            raise SecAggError(f"only {len(self.u3)} masked inputs; secure aggregation releases sums of at least 3 "
                              "units (units would refuse to unmask), so the round is abandoned")
        if len(self.u3) < self.config.threshold_for(n):
            raise SecAggError(f"only {len(self.u3)} masked inputs; threshold {self.config.threshold_for(n)}")
        if len(self.u3) < self.config.min_survivors:
            raise SecAggError(f"only {len(self.u3)} masked inputs; the round needs {self.config.min_survivors} "
                              "survivors (units would refuse to unmask), so the round is abandoned")
        if not survivors_connected(self.seed, sorted(self.adverts), self.u3, self.config.degree_for(n)):
            raise SecAggError("the surviving units' masking graph is split (too many neighbouring units dropped); "
                              "units would refuse to unmask, so the round is abandoned")
        return self.u3

    def collect_signatures(self, signatures: dict[str, bytes]) -> list[str]:
        """U4: the survivors that signed U3 in the consistency round (each unit checks the signatures)."""
        self.u4 = sorted(u for u in signatures if u in self.u3)
        threshold = self.config.threshold_for(len(self.adverts))
        if len(self.u4) < threshold:
            raise SecAggError(f"only {len(self.u4)} units signed the survivor set; threshold {threshold}")
        return self.u4

    def aggregate(self, reveals: dict[str, dict[str, tuple[str, str]]]) -> tuple[np.ndarray, int, float]:
        """Sum of the U3 units' clipped inputs (floats), their number and the decoding error bound."""
        units = sorted(self.adverts)
        n = len(units)
        index = {u: i + 1 for i, u in enumerate(units)}
        threshold = self.config.threshold_for(n)
        degree = self.config.degree_for(n)
        bits, q_bits = self.config.modulus_bits, self.config.quant_bits(n)
        length = len(next(iter(self.masked.values())))
        # as in mask_input: wrap mod 2^64 in place, reduce mod 2^b once at the end
        total = np.zeros(length, dtype=np.uint64)
        for y in self.masked.values():
            total += y
        mask = np.empty(length, dtype=np.uint64)
        b_shares: dict[str, dict[int, int]] = {}
        s_shares: dict[str, dict[int, int]] = {}
        for holder, revealed in reveals.items():
            for owner, (kind, share) in revealed.items():
                if kind == "b" and owner in self.u3:
                    b_shares.setdefault(owner, {})[index[holder]] = int(share, 16)
                elif kind == "s" and owner in self.u2 and owner not in self.u3:
                    s_shares.setdefault(owner, {})[index[holder]] = int(share, 16)
                # honest units send nothing else; anything else is ignored
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
            for u in neighbours(self.seed, units, v, degree):
                if u not in self.u3:
                    continue
                crypto.keystream_into(mask_seed(s_private, self.adverts[u].s_pk, self.round_id, u, v), mask)
                # u added +mask if u < v, else -mask: take it back out
                if u < v:
                    total -= mask
                else:
                    total += mask
        total &= np.uint64((1 << bits) - 1)
        m = len(self.u3)
        clip = self.config.clip_range
        return quantize.decode_sum(total, m, clip, q_bits), m, quantize.error_bound(m, clip, q_bits)
