"""SecAgg+: exact sums, dropouts, what the coordinator can and cannot learn, authentication."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from privacy.secagg import crypto, quantize, shamir
from privacy.secagg.config import SecAggConfig, SecAggError
from privacy.secagg.protocol import Advert, UnitSession
from tests.privacy.secagg.harness import Federation


@pytest.mark.parametrize("n", [3, 5, 20])
def test_aggregate_equals_the_plain_sum_within_the_quantisation_bound(n):
    fed = Federation(n)
    total, u3, bound = fed.run()
    truth = sum(fed.x[u] for u in u3)
    assert len(u3) == n
    assert np.abs(total - truth).max() <= bound
    assert bound < 1e-9


def test_dropouts_after_sharing_up_to_n_minus_threshold_still_give_the_sum():
    # complete masking graph (degree n - 1): every unit's shares are held by all n units, so any
    # n - t units may drop after sharing. (With a sparse SecAgg+ graph the tolerance is
    # degree + 1 - t within each neighbourhood; docs/secure-aggregation.md.)
    fed = Federation(10, SecAggConfig(threshold=0.6, degree=9))
    t = fed.config.threshold_for(10)
    assert t == 6
    dropped = {f"u{i:02d}" for i in range(10 - t)}         # as many as the threshold allows
    total, u3, bound = fed.run(drop_after=dropped)
    assert set(u3) == set(fed.units) - dropped
    assert np.abs(total - sum(fed.x[u] for u in u3)).max() <= bound
    too_many = Federation(10, SecAggConfig(threshold=0.6, degree=9))
    with pytest.raises(SecAggError, match="masked inputs; threshold"):
        too_many.run(drop_after={f"u{i:02d}" for i in range(10 - t + 1)})


def test_a_unit_dropping_before_sharing_is_excluded_cleanly():
    fed = Federation(8)
    total, u3, bound = fed.run(drop_before={"u03"}, drop_after={"u05"})
    assert "u03" not in u3 and "u05" not in u3
    assert np.abs(total - sum(fed.x[u] for u in u3)).max() <= bound


def test_the_coordinator_cannot_recover_a_single_update():
    fed = Federation(6, dim=20_000)
    fed.run()
    bits = fed.config.modulus_bits
    for unit, y in fed.masked_inputs.items():
        # masked values look uniform on Z_(2^b): chi-square over 64 buckets of the top bits
        buckets = np.bincount((y >> np.uint64(bits - 6)).astype(np.int64), minlength=64)
        assert stats.chisquare(buckets).pvalue > 1e-4
        # with everything it holds, the coordinator can strip the self-mask of a survivor...
        shares = {fed.units[h].index[h]: int(fed.reveals[h][unit][1], 16) for h in fed.reveals if unit in fed.reveals[h]}
        t = fed.config.threshold_for(6)
        seed = shamir.reconstruct(dict(list(shares.items())[:t])).to_bytes(32, "big")
        stripped = (y - crypto.prg(seed, len(y), bits)) & np.uint64((1 << bits) - 1)
        guess = quantize.decode_sum(stripped, 1, 1.0, fed.config.quant_bits(6))
        # ...but the pairwise masks remain: the guess is unrelated to the unit's update
        assert np.mean(np.abs(guess - fed.x[unit]) < 1e-6) < 1e-3
        assert abs(np.corrcoef(guess, fed.x[unit])[0, 1]) < 0.05
        # and no unit ever reveals an s-share of a survivor
        assert all(fed.reveals[h][unit][0] == "b" for h in fed.reveals if unit in fed.reveals[h])


def test_forged_replayed_and_unknown_advertisements_are_rejected():
    def fresh() -> tuple[Federation, list[Advert]]:   # a unit refusing its share stage abandons the round
        fed = Federation(4)
        return fed, [s.advertise(fed.coordinator.round_id) for s in fed.units.values()]

    fed, adverts = fresh()
    forged = Advert("u01", fed.coordinator.round_id, adverts[1].settings, adverts[1].c_pk,
                    crypto.public_bytes(crypto.new_x25519()), adverts[1].signature)
    with pytest.raises(SecAggError, match="invalid signature"):
        fed.units["u00"].share_keys([adverts[0], forged, adverts[2], adverts[3]])
    fed, adverts = fresh()
    old = Federation(4)
    old_adverts = [s.advertise("an-earlier-round") for s in old.units.values()]
    fed.units["u00"].registry = {**fed.registry, **{"u09": old.registry["u01"]}}
    a = old_adverts[1]
    replay = Advert("u09", "an-earlier-round", a.settings, a.c_pk, a.s_pk, a.signature)
    with pytest.raises(SecAggError, match="replay"):
        fed.units["u00"].share_keys([*adverts, replay])
    fed, adverts = fresh()
    sybil_key = crypto.new_identity()
    sybil = UnitSession("mallory", sybil_key, fed.registry, fed.config).advertise(fed.coordinator.round_id)
    with pytest.raises(SecAggError, match="unknown unit 'mallory'"):
        fed.units["u00"].share_keys([*adverts, sybil])
    fed, adverts = fresh()
    with pytest.raises(SecAggError, match="own advertisement"):
        fed.units["u00"].share_keys(adverts[1:])


def test_configuration_is_validated():
    with pytest.raises(ValueError, match="whole count"):
        SecAggConfig(threshold=1.5)
    with pytest.raises(SecAggError, match="at least 3 units"):
        SecAggConfig().threshold_for(2)
    with pytest.raises(SecAggError, match="exceeds"):
        SecAggConfig(threshold=9, degree=4).threshold_for(20)
    with pytest.raises(SecAggError, match="raise modulus_bits"):
        SecAggConfig(modulus_bits=24).quant_bits(1000)
    # t must be a strict majority of the k + 1 share holders (docs: threat model)
    with pytest.raises(SecAggError, match="not a majority of the 5 holders"):
        SecAggConfig(threshold=2, degree=4).threshold_for(12)
    with pytest.raises(SecAggError, match="not a majority"):
        SecAggConfig(threshold=0.5).threshold_for(4)
    assert SecAggConfig(threshold=3, degree=4).threshold_for(12) == 3
    assert all(2 * SecAggConfig().threshold_for(n) > SecAggConfig().degree_for(n) + 1 for n in range(3, 300))
    # the settings hash covers every setting, the L2 clip included
    hashes = {SecAggConfig().settings_hash(), SecAggConfig(threshold=3).settings_hash(),
              SecAggConfig(degree=4).settings_hash(), SecAggConfig(clip_range=2).settings_hash(),
              SecAggConfig(modulus_bits=40).settings_hash(), SecAggConfig(l2_clip=1.0).settings_hash()}
    assert len(hashes) == 6


@given(secret=st.integers(0, shamir.PRIME - 1), n=st.integers(2, 12), data=st.data())
@settings(max_examples=60, deadline=None)
def test_shamir_any_threshold_subset_reconstructs_and_fewer_do_not(secret, n, data):
    t = data.draw(st.integers(1, n))
    shares = shamir.split(secret, list(range(1, n + 1)), t)
    subset = data.draw(st.permutations(sorted(shares)))[:t]
    assert shamir.reconstruct({x: shares[x] for x in subset}) == secret
    if t >= 2:
        # t - 1 shares leave the secret undetermined: the interpolation is (almost surely) wrong
        fewer = subset[: t - 1]
        assert shamir.reconstruct({x: shares[x] for x in fewer}) != secret


@given(values=st.lists(st.floats(-5, 5, allow_nan=False), min_size=1, max_size=50), n=st.integers(1, 64),
       clip=st.floats(0.1, 10), bits=st.integers(24, 62))
@settings(max_examples=80, deadline=None)
def test_quantisation_round_trip_within_the_stated_error(values, n, clip, bits):
    q = SecAggConfig(modulus_bits=bits, clip_range=clip).quant_bits(max(n, 3)) if bits - np.ceil(np.log2(max(n, 3))) >= 16 else None
    if q is None:
        return
    x = np.asarray(values)
    total = sum(quantize.encode(x, clip, q).astype(object) for _ in range(n))
    decoded = quantize.decode_sum(np.asarray(total, dtype=np.float64), n, clip, q)
    assert np.all(np.abs(decoded - n * np.clip(x, -clip, clip)) <= quantize.error_bound(n, clip, q))


@pytest.mark.parametrize("bits,n", [(62, 4), (62, 3), (48, 4), (55, 2)])
def test_values_at_the_clip_edge_never_wrap_the_ring(bits, n):
    # the largest levels must stay below 2^q: n of them then sum below 2^b. Before q was capped
    # at 52, float(2^60 - 1) rounded up to 2^60 and four units at +R summed to 2^62 = 0 mod 2^62.
    config = SecAggConfig(modulus_bits=bits, clip_range=0.5)
    q = config.quant_bits(n)
    assert q <= quantize.MAX_QUANT_BITS
    x = np.array([0.5, 7.0, np.inf, -np.inf, -0.5, 0.49999999999999994])
    enc = quantize.encode(x, 0.5, q)
    assert enc.max() == quantize.levels(q)
    total = (enc * np.uint64(n)) & np.uint64((1 << bits) - 1)
    decoded = quantize.decode_sum(total, n, 0.5, q)
    assert np.all(np.abs(decoded - n * np.clip(x, -0.5, 0.5)) <= quantize.error_bound(n, 0.5, q))
    with pytest.raises(ValueError, match="NaN"):
        quantize.encode(np.array([0.1, np.nan]), 0.5, q)


@pytest.mark.parametrize("length", [1, 131_071, 131_073, 300_001])   # around the 1 MiB chunk (131,072 words)
def test_chunked_keystream_is_the_one_shot_chacha20_stream(length):
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

    seed = bytes(range(32))
    one_shot = Cipher(algorithms.ChaCha20(seed, b"\x00" * 16), mode=None).encryptor().update(b"\x00" * (8 * length))
    words = crypto.keystream_into(seed, np.empty(length, dtype=np.uint64))
    assert words.tobytes() == one_shot
    assert np.array_equal(crypto.prg(seed, length, 48), words & np.uint64((1 << 48) - 1))
    with pytest.raises(ValueError, match="uint64"):
        crypto.keystream_into(seed, np.empty(length, dtype=np.int64))


def test_units_refuse_to_unmask_when_dropouts_split_the_masking_graph():
    # 12 units on a ring, 2 neighbours each side, t = 3 (a majority of 5 holders): dropping two
    # opposite pairs after sharing leaves every dropped unit's mask key recoverable but splits the
    # survivors into two arcs of 4, whose separate sums the coordinator could unmask. The round
    # must stop instead.
    from privacy.secagg.protocol import survivors_connected

    config = SecAggConfig(threshold=3, degree=4)
    fed = Federation(12, config)
    fed.advertise()
    fed.share()
    order = fed.order()
    dropped = {order[0], order[1], order[6], order[7]}
    survivors = [u for u in order if u not in dropped]
    assert not survivors_connected(fed.coordinator.seed, order, survivors, 4)
    with pytest.raises(SecAggError, match="masking graph is split"):
        fed.masked(drop_after=dropped)
    # a coordinator that skips its own check still gets nothing from the units
    with pytest.raises(SecAggError, match="masking graph is split"):
        fed.units[survivors[0]].consistency(sorted(survivors))
    # one dropped pair leaves the ring connected: the sum of all 10 survivors comes out
    fed = Federation(12, config)
    fed.advertise()
    order = fed.order()
    total, u3, bound = fed.run(drop_after={order[0], order[1]})
    assert len(u3) == 10 and np.abs(total - sum(fed.x[u] for u in u3)).max() <= bound


def test_units_refuse_replayed_round_ids_and_rounds_below_their_own_floor():
    from flwr.app import Context, RecordDict

    from privacy.secagg.flower import remember_round

    context = Context(run_id=1, node_id=7, node_config={}, state=RecordDict(), run_config={})
    remember_round(context, "r1")
    remember_round(context, "r2")
    with pytest.raises(SecAggError, match="replayed round id"):
        remember_round(context, "r1")
    fed = Federation(4, min_units=5)                       # the unit's floor: 5 units
    fed.advertise()
    with pytest.raises(SecAggError, match="at least 5 .secagg-min-units"):
        fed.units["u00"].share_keys(fed.adverts)
    config = SecAggConfig(threshold=3)
    fed = Federation(5, config)
    fed.units["u01"].min_threshold = 4                     # its floor under t: 4
    fed.advertise()
    with pytest.raises(SecAggError, match="secagg-min-threshold 4"):
        fed.units["u01"].share_keys(fed.adverts)
    fed.units["u02"].min_threshold = 3
    assert fed.units["u02"].share_keys(fed.adverts)


def test_units_drop_out_at_consistency_and_the_sum_still_comes_out():
    fed = Federation(10, SecAggConfig(threshold=0.6, degree=9))
    total, u3, bound = fed.run(drop_after={"u01"}, drop_at_consistency={"u02", "u03"})
    assert "u02" in u3 and "u01" not in u3 and fed.signers == sorted(set(u3) - {"u02", "u03"})
    assert np.abs(total - sum(fed.x[u] for u in u3)).max() <= bound


def test_simulate_refuses_secure_aggregation_that_would_hide_nothing():
    from typer.testing import CliRunner

    from fedseg.cli import app

    result = CliRunner().invoke(app, ["simulate", "--secagg", "--units", "2", "--rounds", "1"])
    assert result.exit_code == 2
    assert "at least 3 units" in result.output and "Traceback" not in result.output
    result = CliRunner().invoke(app, ["simulate", "--secagg", "--units", "4", "--secagg-threshold", "5"])
    assert result.exit_code == 2 and "exceeds the 4 units" in result.output
    result = CliRunner().invoke(app, ["simulate", "--secagg", "--units", "10", "--secagg-threshold", "3"])
    assert result.exit_code == 2 and "not a majority" in result.output and "Traceback" not in result.output
