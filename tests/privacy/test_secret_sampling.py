"""The DP-SGD sample and noise are secret: the coordinator knows the run seed, the round and the
node id, and none of them lets it replay which users were sampled (issue 13, point 1).

Two fresh processes get exactly the same public inputs (global model, round config with the
run seed, node id) and train one round with almost no noise: the weights they return must
differ. Before the fix the sampler was seeded from the run seed, round and node id and the noise
came from torch's default generator, whose seed is fixed in a fresh process: the two weights
were identical, so the coordinator could replay the sample. A unit-local research seed (node
config ``dp-seed``, never sent by the coordinator) makes the run reproducible again.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import sys
    from pathlib import Path
    from clients.client_app import make_client_app
    from fedseg.models import model_version
    from privacy.training_dp import dpsgd_release
    from tests.privacy.harness import Unit, unit_file, user_round_config

    folder, seed = Path(sys.argv[1]), sys.argv[2]
    node = {} if seed == "none" else {"dp-seed": int(seed)}
    unit = Unit(make_client_app([unit_file(folder)], dataset_id="t"), node)
    cfg = user_round_config("run-1", z=1e-3)
    assert not unit.propose("run-1", [dpsgd_release(1e-3, 0.05, 20)], delta=1e-6).has_error()
    reply = unit.train(cfg)
    assert not reply.has_error(), reply.error.reason
    print(model_version(reply.content.array_records["arrays"].to_torch_state_dict()))
""")


def _weights_hash(folder, seed: str) -> str:
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(folder), seed], capture_output=True, text=True,
                         timeout=300, cwd=str(__import__("pathlib").Path(__file__).parents[2]))
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from tests.privacy.harness import unit_file

    path = tmp_path_factory.mktemp("secret-sampling")
    unit_file(path)
    return path


def test_same_public_inputs_give_different_dpsgd_weights(folder):
    first, second = _weights_hash(folder, "none"), _weights_hash(folder, "none")
    assert first != second, "the DP-SGD sample and noise are predictable from what the coordinator knows"


def test_a_unit_local_research_seed_reproduces_a_run(folder):
    assert _weights_hash(folder, "7") == _weights_hash(folder, "7")
    assert _weights_hash(folder, "7") != _weights_hash(folder, "8")


def _request(run_id: str, centre: float, weights: list[float]):
    import numpy as np
    from flwr.app import ArrayRecord, ConfigRecord, RecordDict

    from fedseg import protocol

    return RecordDict({protocol.CONFIG: ConfigRecord({protocol.RUN_ID: run_id, "centre": centre}),
                       protocol.ARRAYS: ArrayRecord([np.asarray(weights, dtype=np.float32)])})


def _draw(node_config: dict, research_seed, request) -> float:
    from clients.unit_privacy import private_generators

    return float(private_generators(node_config, research_seed, "unit_0|query.seg_lloyd", request)[2].normal())


def test_a_seeded_unit_never_reuses_noise_across_different_requests():
    """With a unit seed, the noise is keyed by the whole request: two Lloyd iterations of one run
    (other centres, same run id and message type) or another model get independent noise, so
    their difference does not cancel it; the very same request gets the very same answer."""
    seeded = {"dp-seed": 7}
    first = _draw(seeded, None, _request("run-a", 0.1, [1.0, 2.0]))
    assert _draw(seeded, None, _request("run-a", 0.1, [1.0, 2.0])) == first
    assert _draw(seeded, None, _request("run-a", 0.2, [1.0, 2.0])) != first      # next iteration
    assert _draw(seeded, None, _request("run-a", 0.1, [1.0, 2.5])) != first      # another model
    assert _draw(seeded, None, _request("run-b", 0.1, [1.0, 2.0])) != first      # a unit seed keys the run id


def test_a_simulation_research_seed_ignores_the_run_id_so_runs_repeat():
    """The coordinator of a simulation draws a fresh run id per run; a research seed reproduces the
    run anyway (the same holdouts and noise for the same requests), and OS entropy never repeats."""
    assert _draw({}, 5, _request("run-a", 0.1, [1.0])) == _draw({}, 5, _request("run-b", 0.1, [1.0]))
    assert _draw({}, 5, _request("run-a", 0.1, [1.0])) != _draw({}, 5, _request("run-a", 0.2, [1.0]))
    assert _draw({}, 5, _request("run-a", 0.1, [1.0])) != _draw({}, 6, _request("run-a", 0.1, [1.0]))
    assert _draw({}, None, _request("run-a", 0.1, [1.0])) != _draw({}, None, _request("run-a", 0.1, [1.0]))
