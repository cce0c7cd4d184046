"""Secure aggregation for fedseg (SecAgg+, Bell et al. 2020, on Bonawitz et al. 2017, with its
consistency round).

The coordinator learns only the sum of the units' (quantised) updates, also when it deviates
from the protocol: each unit runs its own per-round state machine and checks every value the
coordinator sends. Masks come from X25519 key agreement, HKDF and ChaCha20 (``cryptography``);
self-mask seeds and mask keys are Shamir shared so units may drop out after sharing; key
advertisements and survivor sets are signed with each unit's Ed25519 identity key, checked
against a registry the coordinator cannot change.

- :mod:`privacy.secagg.quantize`: floats to a modular ring and back, with the error bound.
- :mod:`privacy.secagg.shamir`: secret sharing over the prime field 2^521 - 1.
- :mod:`privacy.secagg.crypto`: key agreement, mask expansion, share encryption, signatures.
- :mod:`privacy.secagg.protocol`: the unit and coordinator state machines (no Flower).
- :mod:`privacy.secagg.identity`: identity keys (one per unit, made on its premises) and the registry.
- :mod:`privacy.secagg.flower`: the ClientApp mod and the coordinator's aggregation step.
"""

from privacy.secagg.config import SecAggConfig, SecAggError

__all__ = ["SecAggConfig", "SecAggError"]
