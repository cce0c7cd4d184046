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

__version__ = "0.1.0"
