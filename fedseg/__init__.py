"""fedseg: privacy-preserving federated user segmentation, churn prediction and audits.

The distribution has one package per role:

- :mod:`fedseg` (this package): what every role shares, the data contract
  (:mod:`fedseg.contract`), run configuration (:mod:`fedseg.config`), model definitions
  (:mod:`fedseg.models`) and the ``fedseg`` command line (:mod:`fedseg.cli`);
- :mod:`clients`: the Flower ClientApp a business unit runs, ingestion, features, local training;
- :mod:`server`: the Flower ServerApp, strategies and checkpoints;
- :mod:`privacy`: clipping, noise, accounting, the budget ledger, secure aggregation, keys;
- :mod:`audit`: fairness and pricing audits, reports and the signed trail;
- :mod:`simulations`: datasets, generators, partitioning, experiment runner and plots.
"""

import os as _os

__version__ = "0.1.0"

#: Flower's telemetry (``flwr.supercore.telemetry``) POSTs, from a thread, a persistent machine id
#: and the host's platform details to telemetry.flower.ai whenever a Flower component starts. A
#: unit trusts only its own code: fedseg turns it off unless the operator set
#: ``FLWR_TELEMETRY_ENABLED`` themselves. Flower reads the variable when it is first imported, so
#: every fedseg package imports this one first; Flower's programs started by ``fedseg deploy``
#: inherit it (:func:`fedseg.flower_exec.flower_env`). On this machine (no network) the thread also
#: crashed a test run once: a segmentation fault in ``ssl.create_default_context`` while the main
#: thread imported Ray.
_os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
