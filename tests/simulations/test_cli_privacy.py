"""No silent non-private runs: noise flags without a privacy mode are usage errors, and every
run's header states the privacy mode, epsilon, delta and secure aggregation (issue 13, point 5)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from fedseg.cli import app

runner = CliRunner()


@pytest.mark.parametrize("args", [["simulate", "--epsilon", "2"], ["simulate", "--delta", "1e-6"],
                                  ["simulate", "--noise-multiplier", "1.0"],
                                  ["simulate", "--privacy", "user"],
                                  ["simulate", "--privacy", "user", "--epsilon", "2", "--noise-multiplier", "1"],
                                  ["segment", "--delta", "1e-6"]])
def test_noise_settings_without_a_privacy_mode_are_usage_errors(args, tmp_path):
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "run")])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    assert not (tmp_path / "run").exists()


def test_the_header_states_privacy_delta_and_secure_aggregation(tmp_path):
    common = ["simulate", "--dataset", "synthetic", "--synthetic-users", "600", "--units", "3", "--partition", "iid",
              "--rounds", "1",
              "--no-baselines"]
    plain = runner.invoke(app, [*common, "--out", str(tmp_path / "plain")])
    assert plain.exit_code == 0, plain.output
    text = " ".join(plain.output.split())
    assert "iid partition" in text
    assert "privacy: none (exact updates; no differential privacy) | secure aggregation: off" in text
    private = runner.invoke(app, [*common, "--privacy", "user", "--epsilon", "4", "--sample-rate", "0.05",
                                  "--out", str(tmp_path / "dp")])
    assert private.exit_code == 0, private.output
    text = " ".join(private.output.split())
    # 600 users: the default delta is the largest power of ten at most 1 / 6000
    assert "privacy: user-level DP, epsilon 4.000 per end user (target 4), delta 0.0001 | secure aggregation: off" \
        in text
