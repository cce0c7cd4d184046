"""A coordinator that deviates from the protocol: it chooses every value it sends (stages, U2, U3,
settings, round ids, repeated messages). Each test is an attack; the units must refuse with
SecAggError and the victim's update must stay out of reach.

Protocol classes first (``Federation``), then the same attacks through the real Flower mod
(``make_secagg_mod`` with real ``Context`` and ``Message`` objects)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from privacy.secagg import crypto
from privacy.secagg.config import SecAggConfig, SecAggError
from privacy.secagg.protocol import Advert, UnitSession
from tests.privacy.secagg.harness import Federation, FlowerRound, recover, reply_values
from tests.privacy.secagg.harness import flower_units as make_flower_units


# ------------------------------------------------------------------------------------------
# 7. one state machine per round: each stage once, in order, with pinned settings
# ------------------------------------------------------------------------------------------
def test_a_repeated_masked_stage_is_refused_so_two_inputs_never_leak_their_difference():
    fed = Federation(5)
    fed.advertise()
    fed.share()
    co, victim = fed.coordinator, fed.units["u00"]
    first = victim.masked_input(fed.x["u00"], co.u2, fed.inbox["u00"])
    # a second masked input of the same round carries the same masks: y1 - y2 = encode(x1) - encode(x2)
    with pytest.raises(SecAggError, match="already answered"):
        victim.masked_input(np.zeros_like(fed.x["u00"]), co.u2, fed.inbox["u00"])
    assert first.dtype == np.uint64


@pytest.mark.parametrize("stage", ["advertise", "share", "consistency", "unmask"])
def test_every_stage_is_answered_at_most_once(stage):
    fed = Federation(5)
    fed.advertise()
    u = fed.units["u01"]
    co = fed.coordinator
    if stage == "advertise":
        with pytest.raises(SecAggError, match="already answered"):
            u.advertise(co.round_id)
        return
    fed.share()
    if stage == "share":
        with pytest.raises(SecAggError, match="already answered"):
            u.share_keys(fed.adverts)
        return
    fed.masked()
    fed.consistency()
    if stage == "consistency":
        with pytest.raises(SecAggError, match="already answered"):
            u.consistency(co.u3)
        return
    first = u.unmask(co.u3, fed.signatures)
    with pytest.raises(SecAggError, match="already answered"):
        u.unmask(co.u3, fed.signatures)
    assert first


def test_skipped_or_out_of_order_stages_are_refused():
    fed = Federation(5)
    with pytest.raises(SecAggError, match="before"):
        fed.units["u00"].masked_input(fed.x["u00"], sorted(fed.units), {})   # never advertised nor shared
    fed = Federation(5)
    co = fed.coordinator
    fed.advertise()
    with pytest.raises(SecAggError, match="before"):
        fed.units["u01"].consistency(sorted(fed.units))                     # skips share and masked
    fed.share(drop_before={"u01"})                                           # u01 abandoned the round
    fed.masked()
    with pytest.raises(SecAggError, match="before"):
        fed.units["u02"].unmask(co.u3, {})                                   # skips the consistency round
    # a unit that refused a stage has abandoned the round: nothing more from it
    with pytest.raises(SecAggError, match="abandoned"):
        fed.units["u02"].consistency(co.u3)


def test_units_refuse_an_advertisement_made_under_other_settings():
    # The settings are pinned when a unit advertises and signed in its advertisement: a unit told a
    # lower threshold (or another degree, ring, clip) than the others is caught at share.
    fed = Federation(5)
    co = fed.coordinator
    odd = UnitSession("u04", fed.identities["u04"], fed.registry, SecAggConfig(threshold=2, degree=2))
    fed.units["u04"] = odd
    adverts = [s.advertise(co.round_id) for s in fed.units.values()]
    with pytest.raises(SecAggError, match="settings"):
        fed.units["u00"].share_keys(adverts)
    with pytest.raises(SecAggError, match="settings"):
        odd.share_keys(adverts)


def test_the_masking_graph_is_drawn_from_every_advertisement_not_from_the_round_id():
    # Today's coordinator picks the round id and so the graph (it could grind ids until it likes
    # the neighbourhoods). The graph seed now hashes all units' fresh signed keys: with the same
    # round id, two rounds get different graphs.
    a, b = Federation(20, round_id="chosen"), Federation(20, round_id="chosen")
    for fed in (a, b):
        fed.advertise()
    assert a.coordinator.seed != b.coordinator.seed
    assert a.order() != b.order()


# ------------------------------------------------------------------------------------------
# 8. neighbourhood checks, and never both shares of one peer
# ------------------------------------------------------------------------------------------
def test_a_victim_sent_a_u2_with_too_few_of_its_neighbours_keeps_its_input():
    # 20 units, degree 10, t = 7: the coordinator tells the victim that all its neighbours dropped
    # before sharing. Today the victim masks with its self-mask only, and the t holders of its
    # self-mask seed (told it survived) hand the update over.
    fed = Federation(20)
    fed.advertise()
    fed.share()
    victim = "u00"
    t = fed.config.threshold_for(20)
    strangers = [u for u in sorted(fed.units) if u not in fed.holders(victim)]
    fake_u2 = sorted([victim, *strangers])
    assert len(fake_u2) >= t
    with pytest.raises(SecAggError, match="neighbours"):
        fed.units[victim].masked_input(fed.x[victim], fake_u2, {})
    # nor with just t - 1 of its neighbours (their shares delivered)
    fed2 = Federation(20)
    fed2.advertise()
    fed2.share()
    near = sorted(fed2.holders(victim) - {victim})[: t - 1]
    u2 = sorted({victim, *near, *[u for u in sorted(fed2.units) if u not in fed2.holders(victim)]})
    inbox = {s: c for s, c in fed2.inbox[victim].items() if s in near}
    with pytest.raises(SecAggError, match="neighbours"):
        fed2.units[victim].masked_input(fed2.x[victim], u2, inbox)


def test_a_neighbour_in_u2_whose_share_was_withheld_stops_the_unit():
    fed = Federation(6)
    fed.advertise()
    fed.share()
    inbox = dict(fed.inbox["u00"])
    inbox.pop(next(iter(inbox)))
    with pytest.raises(SecAggError, match="no share from"):
        fed.units["u00"].masked_input(fed.x["u00"], fed.coordinator.u2, inbox)


def test_asking_unmask_twice_with_the_victim_alive_then_dropped_yields_nothing_more():
    # Today a unit answers every unmask request: told the victim survived it reveals the b share,
    # told it dropped it reveals the s share, and the coordinator rebuilds both.
    fed = Federation(5)
    fed.run()
    co = fed.coordinator
    victim = "u00"
    without = [u for u in co.u3 if u != victim]
    for u in co.u3:
        with pytest.raises(SecAggError):
            fed.units[u].unmask(without, fed.signatures)
    assert all(kind == "b" for r in fed.reveals.values() for owner, (kind, _) in r.items() if owner == victim)
    assert recover(fed, victim, fed.masked_inputs[victim], fed.reveals, [u for u in co.u2 if u != victim]) is None


# ------------------------------------------------------------------------------------------
# 9. the consistency round
# ------------------------------------------------------------------------------------------
def _split_survivors_attack(unit_cls: type) -> tuple[Federation, dict, np.ndarray | None]:
    """12 units on a ring of degree 4 (5 holders each, t = 3). The coordinator tells each unit a
    U3 of its own: the victim and its second neighbours that the victim's first neighbours
    dropped, those neighbours that the second ones dropped, and so on, so that it collects the
    victim's self-mask and the mask keys of all four neighbours the victim masked with."""
    config = SecAggConfig(threshold=3, degree=4)
    fed = Federation(12, config, unit_cls=unit_cls)
    fed.advertise()
    fed.share()
    fed.masked()
    order = fed.order()
    at = {i: order[i % 12] for i in range(-6, 12)}
    victim = at[0]
    everyone = set(order)
    views = {at[0]: everyone - {at[-1], at[1]}, at[2]: everyone - {at[-1], at[1]},
             at[-2]: everyone - {at[-1], at[1]},
             at[1]: everyone - {at[-1], at[2], at[-2]}, at[-1]: everyone - {at[1], at[2], at[-2]}}
    for i in (3, 4, -3, -4, 5, -5, 6):
        views[at[i]] = everyone - {at[0], at[1], at[-1], at[2], at[-2]}
    signatures, reveals = {}, {}
    for unit, u3 in views.items():
        try:
            signatures[unit] = fed.units[unit].consistency(sorted(u3))
        except SecAggError:
            pass
    for unit, u3 in views.items():
        try:
            reveals[unit] = fed.units[unit].unmask(sorted(u3), signatures)
        except SecAggError:
            pass
    return fed, reveals, recover(fed, victim, fed.masked_inputs[victim], reveals,
                                 [u for u in fed.holders(victim) if u != victim])


def test_the_consistency_round_stops_a_coordinator_telling_units_different_survivor_sets():
    fed, reveals, guess = _split_survivors_attack(UnitSession)
    assert guess is None
    victim = fed.order()[0]
    assert len([r for r in reveals.values() if victim in r]) < fed.config.threshold_for(12)


def test_without_the_signature_check_the_same_attack_reads_the_victim():
    # The control: a unit that signs but does not check the others' signatures over its U3.
    class Unchecking(UnitSession):
        def check_signatures(self, u3, signatures):  # noqa: ANN001, ANN202
            return None

    fed, _, guess = _split_survivors_attack(Unchecking)
    victim = fed.order()[0]
    assert guess is not None
    assert np.abs(guess - fed.x[victim]).max() <= 1e-9


def test_unmask_needs_t_valid_signatures_from_the_units_holders_over_exactly_its_u3():
    fed = Federation(5)
    fed.advertise()
    fed.share()
    fed.masked()
    co = fed.coordinator
    t = fed.config.threshold_for(5)
    sigs = {u: fed.units[u].consistency(co.u3) for u in co.u3}
    few = dict(list(sigs.items())[: t - 1])
    with pytest.raises(SecAggError, match="signatures"):
        fed.units["u00"].unmask(co.u3, few)
    # signatures over another U3 do not count, nor forged ones, nor a stranger's
    other = Federation(5)
    other.advertise()
    other.share()
    other.masked()
    foreign = {u: other.units[u].consistency(other.coordinator.u3) for u in other.coordinator.u3}
    with pytest.raises(SecAggError, match="signatures"):
        fed.units["u01"].unmask(co.u3, {**few, **{u: foreign[u] for u in foreign if u not in few}})
    forged = {u: bytes(64) for u in co.u3}
    with pytest.raises(SecAggError, match="signatures"):
        fed.units["u02"].unmask(co.u3, {**few, **{u: forged[u] for u in forged if u not in few}})
    # a U3 other than the one the unit signed is refused whatever the signatures
    with pytest.raises(SecAggError, match="signed"):
        fed.units["u03"].unmask(co.u3[:-1], sigs)
    # the honest case goes through
    assert fed.units["u04"].unmask(co.u3, sigs)


# ------------------------------------------------------------------------------------------
# 10. at least three survivors, and the unit's own floor
# ------------------------------------------------------------------------------------------
def test_no_unit_helps_release_a_sum_of_two():
    fed = Federation(3)                        # t = 2 of 3: today a round of two survivors completes
    fed.advertise()
    fed.share()
    co = fed.coordinator
    inputs = {u: fed.units[u].masked_input(fed.x[u], co.u2, fed.inbox[u]) for u in ("u00", "u01")}
    co.masked = inputs
    for u in inputs:
        with pytest.raises(SecAggError, match="at least 3"):
            fed.units[u].consistency(["u00", "u01"])
    with pytest.raises(SecAggError, match="at least 3"):
        co.collect_masked(inputs)


def test_a_units_own_floor_of_survivors_is_enforced_at_consistency_and_unmask():
    fed = Federation(6, min_units=6)
    fed.advertise()
    fed.share()
    fed.masked(drop_after={"u05"})
    with pytest.raises(SecAggError, match="secagg-min-units"):
        fed.units["u00"].consistency(fed.coordinator.u3)


def test_the_rounds_survivor_floor_is_enforced_by_every_unit_not_by_the_coordinator():
    """min_survivors 5 of 5 (distributed DP noise sized for 5 shares): a coordinator that drops a
    unit and skips its own check gets no signature, so no share is revealed for a sum of 4."""
    config = SecAggConfig(threshold=0.6, clip_range=1.0, min_survivors=5)
    fed = Federation(5, config=config)
    fed.advertise()
    fed.share()
    co = fed.coordinator
    inputs = {u: fed.units[u].masked_input(fed.x[u], co.u2, fed.inbox[u]) for u in co.u2 if u != "u04"}
    with pytest.raises(SecAggError, match="needs 5 survivors"):
        co.collect_masked(inputs)
    for u in inputs:                           # the coordinator goes on regardless
        with pytest.raises(SecAggError, match="at least 5 survivors"):
            fed.units[u].consistency(sorted(inputs))
    # the floor is inside the settings every advertisement signs: a unit told another floor refuses
    assert config.settings_hash() != SecAggConfig(threshold=0.6, clip_range=1.0, min_survivors=4).settings_hash()
    assert SecAggConfig(threshold=0.6).canonical() == SecAggConfig(threshold=0.6, min_survivors=0).canonical()
    assert "min_survivors" not in SecAggConfig().canonical()  # rounds without a floor keep their hash


def test_a_survivor_floor_above_the_advertisers_stops_the_round_at_once():
    fed = Federation(4, config=SecAggConfig(threshold=0.6, min_survivors=5))
    with pytest.raises(SecAggError, match="at least 5 surviving units but only 4"):
        fed.advertise()


# ------------------------------------------------------------------------------------------
# 12. keys and malformed advertisements
# ------------------------------------------------------------------------------------------
LOW_ORDER = [bytes(32), (1).to_bytes(32, "little"), (2**255 - 20).to_bytes(32, "little"),
             bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800")]


def _signed(fed: Federation, unit: str, c_pk: bytes, s_pk: bytes) -> Advert:
    """An advertisement a unit really signed, with keys of its choosing (a malicious unit)."""
    co = fed.coordinator
    ad = Advert(unit, co.round_id, fed.config.settings_hash(), c_pk, s_pk, b"")
    return Advert(ad.unit, ad.round_id, ad.settings, c_pk, s_pk, crypto.sign(fed.identities[unit], ad.payload()))


@pytest.mark.parametrize("which", ["c", "s"])
@pytest.mark.parametrize("low", LOW_ORDER)
def test_low_order_keys_are_refused(which, low):
    fed = Federation(4)
    adverts = [s.advertise(fed.coordinator.round_id) for s in fed.units.values()]
    good = adverts[1]
    bad = _signed(fed, "u01", low if which == "c" else good.c_pk, low if which == "s" else good.s_pk)
    with pytest.raises(SecAggError, match="low-order|not a valid"):
        fed.units["u00"].share_keys([adverts[0], bad, *adverts[2:]])


def test_duplicate_and_wrong_length_keys_are_refused():
    fed = Federation(4)
    adverts = [s.advertise(fed.coordinator.round_id) for s in fed.units.values()]
    same = _signed(fed, "u01", adverts[1].c_pk, adverts[1].c_pk)                 # c == s
    with pytest.raises(SecAggError, match="twice"):
        fed.units["u00"].share_keys([adverts[0], same, *adverts[2:]])
    copied = _signed(fed, "u02", adverts[0].c_pk, crypto.public_bytes(crypto.new_x25519()))   # u00's c key
    with pytest.raises(SecAggError, match="twice"):
        fed.units["u03"].share_keys([*adverts[:2], copied, adverts[3]])
    short = _signed(fed, "u01", adverts[1].c_pk[:31], adverts[1].s_pk)
    with pytest.raises(SecAggError, match="32 bytes"):
        fed.units["u02"].share_keys([adverts[0], short, *adverts[2:]])


# ------------------------------------------------------------------------------------------
# The same attacks through the real Flower mod (real Context and Message objects)
# ------------------------------------------------------------------------------------------
@pytest.fixture
def flower_units(tmp_path):
    return make_flower_units(tmp_path / "ids", 5)


def _error(reply) -> str:  # noqa: ANN001
    assert reply.has_error(), "expected the unit to refuse"
    reason = reply.error.reason
    assert "\n" not in reason and "Traceback" not in reason
    return reason


def test_flower_a_replayed_masked_stage_is_refused(flower_units):
    rnd = FlowerRound(flower_units, SecAggConfig(threshold=3))
    got = rnd.honest_until("share")
    names = sorted(rnd.units)
    first = rnd.masked(names, got["inboxes"], names=["unit_0"])["unit_0"]
    assert not first.has_error()
    again = rnd.masked(names, got["inboxes"], names=["unit_0"])["unit_0"]
    assert "already answered" in _error(again)
    assert rnd.units["unit_0"].trained == 1           # not trained twice, nothing masked twice


def test_flower_repeated_and_skipped_stages_are_refused(flower_units):
    rnd = FlowerRound(flower_units, SecAggConfig(threshold=3))
    names = sorted(rnd.units)
    adverts = [json.loads(reply_values(r)["advert"]) for r in rnd.advertise(names).values()]
    assert "already answered" in _error(rnd.advertise(["unit_1"])["unit_1"])   # replayed round id
    # the unmask stage straight after share: no masked input, no consistency round
    rnd.share(adverts, names)
    assert "before" in _error(rnd.unmask(names, {}, names=["unit_2"])["unit_2"])
    # the unit has abandoned that round: even the right next stage is refused now
    assert _error(rnd.masked(names, {}, names=["unit_2"])["unit_2"])
    # a stage of a round the unit never advertised for
    other = FlowerRound(flower_units, SecAggConfig(threshold=3), round_id="never-advertised")
    assert "round" in _error(other.consistency(names, names=["unit_3"])["unit_3"])


def test_flower_settings_switched_within_a_round_are_refused(flower_units):
    rnd = FlowerRound(flower_units, SecAggConfig(threshold=3))
    got = rnd.honest_until("consistency")
    names = sorted(rnd.units)
    switched = SecAggConfig(threshold=3, degree=2)
    reply = rnd.units["unit_0"].send({**rnd.base("unmask", switched), "secagg-u3": json.dumps(names),
                                      "secagg-signatures": json.dumps(got["signatures"])})
    assert "settings" in _error(reply)
    clip = SecAggConfig(threshold=3, l2_clip=5.0)
    reply = rnd.units["unit_1"].send({**rnd.base("unmask", clip), "secagg-u3": json.dumps(names),
                                      "secagg-signatures": json.dumps(got["signatures"])})
    assert "settings" in _error(reply)
    # with the pinned settings, the same request goes through
    assert reply_values(rnd.unmask(names, got["signatures"], names=["unit_2"])["unit_2"])["reveals"]


def test_flower_unmask_without_a_consistency_round_or_with_another_u3_is_refused(flower_units):
    rnd = FlowerRound(flower_units, SecAggConfig(threshold=3))
    got = rnd.honest_until("masked")
    names = sorted(rnd.units)
    # today's units answer unmask straight after masked, for any U3 they are sent
    for n in names[:2]:
        assert "before" in _error(rnd.unmask(names, {}, names=[n])[n])
    rest = names[2:]
    sigs = {n: reply_values(r)["signature"] for n, r in rnd.consistency(names, names=rest).items()}
    # tell unit_2 that unit_0 dropped, with the signatures collected over the real U3
    assert "signed" in _error(rnd.unmask(names[1:], sigs, names=["unit_2"])["unit_2"])
    del got


def test_flower_malformed_advertisements_are_refused_in_one_line(flower_units):
    rnd = FlowerRound(flower_units, SecAggConfig(threshold=3))
    names = sorted(rnd.units)
    adverts = [json.loads(reply_values(r)["advert"]) for r in rnd.advertise(names).values()]
    broken = [
        [{**adverts[0], "c": "zz" * 32}, *adverts[1:]],                  # bad hex
        [{k: v for k, v in adverts[0].items() if k != "s"}, *adverts[1:]],  # missing field
        [{**adverts[0], "unit": 7}, *adverts[1:]],                        # wrong type
        [{**adverts[0], "c": adverts[0]["c"][:-2]}, *adverts[1:]],        # 31-byte key
        {"not": "a list"},
    ]
    for k, bad in enumerate(broken):
        unit = names[k % len(names)]
        reason = _error(rnd.share(bad, names=[unit])[unit])
        assert "advert" in reason.lower(), reason
    assert _error(rnd.units["unit_0"].send({**rnd.base("share"), "secagg-adverts": "{not json"}))


def test_flower_piggybacked_next_round_is_kept_apart_from_the_current_one(flower_units):
    """Round 1's consistency exchange carries round 2's advertisement, its unmask exchange carries
    round 2's share stage; replays of round 1 after that are refused and round 2 completes."""
    config = SecAggConfig(threshold=3)
    r1 = FlowerRound(flower_units, config, round_id="r1")
    got = r1.honest_until("masked")
    names = sorted(r1.units)
    replies = r1.consistency(names, **{"secagg-next-round": "r2"})
    sigs = {n: reply_values(r)["signature"] for n, r in replies.items()}
    adverts2 = [json.loads(reply_values(r)["next-advert"]) for r in replies.values()]
    assert {a["round"] for a in adverts2} == {"r2"}
    replies = r1.unmask(names, sigs, **{"secagg-next-round": "r2", "secagg-next-adverts": json.dumps(adverts2)})
    boxes2 = {n: json.loads(reply_values(r)["next-boxes"]) for n, r in replies.items()}
    assert all(reply_values(r)["reveals"] for r in replies.values())
    # round 1 is over: a replayed unmask or masked stage of round 1 is refused ...
    assert _error(r1.unmask(names, sigs, names=["unit_0"])["unit_0"])
    assert _error(r1.masked(names, got["inboxes"], names=["unit_1"])["unit_1"])
    # ... and round 2 (whose share stage rode on round 1's unmask) completes untouched
    r2 = FlowerRound(flower_units, config, round_id="r2")
    inboxes2: dict[str, dict[str, str]] = {n: {} for n in names}
    for sender, per in boxes2.items():
        for receiver, c in per.items():
            inboxes2[receiver][sender] = c
    masked2 = r2.masked(names, inboxes2)
    assert not any(r.has_error() for r in masked2.values())
    sigs2 = {n: reply_values(r)["signature"] for n, r in r2.consistency(names).items()}
    assert all(reply_values(r)["reveals"] for r in r2.unmask(names, sigs2).values())


def test_flower_the_outgoing_guard_lets_out_the_new_stages_and_nothing_more(flower_units):
    from flwr.app import ConfigRecord, Message, RecordDict

    from clients.guard import check_secagg_reply, outgoing_guard_mod
    from clients.guard import OutgoingRefused

    rnd = FlowerRound(flower_units, SecAggConfig(threshold=3))
    rnd.honest_until("masked")
    names = sorted(rnd.units)
    unit = rnd.units["unit_0"]
    config = {**rnd.base("consistency"), "secagg-u3": json.dumps(names), "secagg-next-round": "r-next"}
    msg = Message(content=RecordDict({"config": ConfigRecord(config)}), dst_node_id=unit.node_id, message_type="train")
    reply = outgoing_guard_mod(msg, unit.context, lambda m, c: unit.mod(m, c, unit._train))
    assert not reply.has_error() and set(reply.content["secagg"].keys()) == {"signature", "next-advert"}
    leaky = Message(RecordDict({"secagg": ConfigRecord({"signature": "00", "update": "1,2,3"})}), reply_to=msg)
    with pytest.raises(OutgoingRefused):
        check_secagg_reply(leaky, "consistency", None)
    leaky = Message(RecordDict({"secagg": ConfigRecord({"reveals": "{}", "next-advert": "{}"})}), reply_to=msg)
    with pytest.raises(OutgoingRefused):
        check_secagg_reply(leaky, "unmask", None)
