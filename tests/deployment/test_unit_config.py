"""A unit's configuration is validated before its SuperNode starts; its privacy budget is enforced
by the unit itself. Real files, real keys (`fedseg keys init` for the CA, the unit's own key from
`fedseg keys supernode`), the real CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from clients.unit_config import UnitConfigError, check_unit_data, load_unit_config
from types import SimpleNamespace

from privacy.keys import init_keys, make_unit_key
from server.deploy import DeployError, superlink_args, write_connection

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    material = init_keys(tmp_path_factory.mktemp("keys"))
    unit = make_unit_key(tmp_path_factory.mktemp("premises"), "shop_north")
    return SimpleNamespace(directory=material.directory, ca_cert=material.ca_cert, auth_key=unit.private_key)


@pytest.fixture
def unit_dir(tmp_path, keys):
    events = pd.DataFrame({"user_id": ["a", "b", "a"], "ts": ["2024-01-02", "2024-01-03", "2024-02-01"],
                           "event_type": ["purchase", "visit", "purchase"], "amount": [10.0, None, 5.5]})
    (tmp_path / "data").mkdir()
    events.to_csv(tmp_path / "data" / "events.csv", index=False)
    return tmp_path


def write(unit_dir: Path, keys, **overrides: object) -> Path:  # noqa: ANN001
    values = {"unit-id": "shop_north", "data-path": "data/events.csv", "superlink": "coordinator.example:8000",
              "root-certificates": str(keys.ca_cert), "auth-key": str(keys.auth_key)}
    values.update({k.replace("_", "-"): v for k, v in overrides.items()})
    lines = []
    for key, value in values.items():
        if value is None:
            continue
        lines.append(f'{key} = "{value}"' if isinstance(value, str) else f"{key} = {str(value).lower()}")
    path = unit_dir / "unit.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_valid_unit_config_resolves_paths_and_builds_the_supernode_command(unit_dir, keys):
    cfg = load_unit_config(write(unit_dir, keys, epsilon_budget=4.0))
    assert cfg.data_path == (unit_dir / "data" / "events.csv").resolve()
    args = cfg.supernode_args()
    assert args[:3] == ["flower-supernode", "--superlink", "coordinator.example:8000"]
    assert "--insecure" not in args
    assert args[args.index("--root-certificates") + 1] == str(keys.ca_cert)
    assert args[args.index("--auth-supernode-private-key") + 1] == str(keys.auth_key)
    node_config = args[args.index("--node-config") + 1]
    assert 'unit-id="shop_north"' in node_config and "epsilon-budget=4.0" in node_config
    # Flower's own parser reads the node config back to the same values.
    from flwr.common.config import parse_config_args

    parsed = parse_config_args([node_config])
    assert parsed["data-path"] == str(cfg.data_path) and parsed["epsilon-budget"] == 4.0
    assert check_unit_data(cfg)[0].endswith("3 rows read, 3 accepted, 0 rejected; 2 users")


@pytest.mark.parametrize("overrides, expected", [
    ({"data_path": "data/missing.csv"}, "data-path = "),
    ({"auth_key": None}, "auth-key missing"),
    ({"root_certificates": None, "auth_key": None}, "root-certificates and auth-key missing"),
    ({"superlink": "coordinator"}, "is not host:port"),
    ({"unit_id": "shop north"}, "unit-id"),
    ({"epsilon_budget": -1.0}, "epsilon-budget"),
    ({"colour": "blue"}, "colour: unknown setting"),
])
def test_bad_configs_are_clear_errors_before_anything_starts(unit_dir, keys, overrides, expected):
    with pytest.raises(UnitConfigError) as err:
        load_unit_config(write(unit_dir, keys, **overrides))
    assert expected in str(err.value)
    assert str(unit_dir / "unit.toml") in str(err.value)


def test_keys_that_are_not_keys_or_too_open_are_refused(unit_dir, keys):
    (unit_dir / "not_a_key").write_text("hello\n")
    os.chmod(unit_dir / "not_a_key", 0o600)
    with pytest.raises(UnitConfigError, match="not an unencrypted OpenSSH private key"):
        load_unit_config(write(unit_dir, keys, auth_key=str(unit_dir / "not_a_key")))
    with pytest.raises(UnitConfigError, match="not a PEM certificate"):
        load_unit_config(write(unit_dir, keys, root_certificates=str(unit_dir / "not_a_key")))
    open_key = unit_dir / "open_key"
    open_key.write_bytes(keys.auth_key.read_bytes())
    os.chmod(open_key, 0o644)
    with pytest.raises(UnitConfigError, match="chmod 600"):
        load_unit_config(write(unit_dir, keys, auth_key=str(open_key)))


def test_insecure_units_need_no_keys_and_say_so(unit_dir, keys):
    cfg = load_unit_config(write(unit_dir, keys, root_certificates=None, auth_key=None, insecure=True))
    assert "--insecure" in cfg.supernode_args()
    result = subprocess.run([str(BIN / "fedseg"), "deploy", "supernode", str(unit_dir / "unit.toml"), "--dry-run"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "warning" in result.stderr and "--insecure" in result.stdout


def test_cli_check_reports_bad_data_with_file_line_and_reason(unit_dir, keys):
    config = write(unit_dir, keys)
    ok = subprocess.run([str(BIN / "fedseg"), "deploy", "check", str(config)], capture_output=True, text=True,
                        timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert "3 rows read" in ok.stdout and "ready to connect" in ok.stdout
    with open(unit_dir / "data" / "events.csv", "a") as f:
        f.write("c,not-a-date,purchase,1.0\n")
    bad = subprocess.run([str(BIN / "fedseg"), "deploy", "check", str(config)], capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode == 2
    assert "events.csv:5: ts: unparsable timestamp 'not-a-date'" in bad.stderr
    assert 'on-error = "quarantine"' in bad.stderr and "Traceback" not in bad.stderr


def test_superlink_is_secure_unless_asked_and_connections_are_kept(tmp_path, keys):
    args = superlink_args(keys.directory, tmp_path / "state.db")
    for flag in ("--ssl-ca-certfile", "--ssl-certfile", "--ssl-keyfile", "--enable-supernode-auth",
                 "--disable-runtime-dependency-installation"):
        assert flag in args
    assert "--insecure" not in args
    with pytest.raises(DeployError, match="fedseg keys init"):
        superlink_args(tmp_path / "empty", tmp_path / "state.db")
    assert "--insecure" in superlink_args(None, tmp_path / "state.db", insecure=True)
    home = tmp_path / "home"
    write_connection("local", "127.0.0.1:9000", None, insecure=True, home=home)
    path = write_connection("fedseg", "coordinator:8000", keys.ca_cert, home=home)
    import tomllib

    config = tomllib.loads(path.read_text())["superlink"]
    assert config["default"] == "fedseg" and config["local"]["insecure"] is True
    assert config["fedseg"] == {"address": "coordinator:8000", "root-certificates": str(keys.ca_cert)}
    with pytest.raises(DeployError, match="ca.crt"):
        write_connection("x", "h:1", tmp_path / "nope.crt", home=home)


def test_the_units_privacy_settings_reach_its_node_config(tmp_path, keys):
    """Budget, ledger and dataset id live in unit.toml, on the unit's premises: the ClientApp reads
    them from its node config (tests/privacy/test_unit_account.py drives the enforcement)."""
    data = tmp_path / "events.csv"
    data.write_text("user_id,ts,event_type\nu1,2024-01-01T00:00:00,purchase\n")
    toml = tmp_path / "unit.toml"
    toml.write_text(f'unit-id = "shop_north"\ndata-path = "{data}"\nsuperlink = "127.0.0.1:8000"\n'
                    'insecure = true\nepsilon-budget = 4.0\ndelta-budget = 1e-6\ndataset-id = "north-2024"\n'
                    'output-dir = "out"\n')
    node = load_unit_config(toml).node_config()
    assert node["epsilon-budget"] == 4.0 and node["delta-budget"] == 1e-6 and node["dataset-id"] == "north-2024"
    assert node["ledger-path"] == str((tmp_path / "out" / "privacy-ledger.sqlite").resolve())
    assert "dp-seed" not in node


def test_the_units_action_list_reaches_its_node_config_and_must_exist(tmp_path):
    """The effect measurement reads the unit's CRM action list from the path in its own unit.toml
    (relative to the file), checked before the SuperNode starts."""
    data = tmp_path / "events.csv"
    data.write_text("user_id,ts,event_type\nu1,2024-01-01T00:00:00,purchase\n")
    toml = tmp_path / "unit.toml"
    toml.write_text(f'unit-id = "shop_north"\ndata-path = "{data}"\nsuperlink = "127.0.0.1:8000"\n'
                    'insecure = true\nactions-path = "out/actions.parquet"\n')
    with pytest.raises(UnitConfigError, match="actions-path"):
        load_unit_config(toml)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "actions.parquet").write_bytes(b"PAR1")
    node = load_unit_config(toml).node_config()
    assert node["actions-path"] == str((tmp_path / "out" / "actions.parquet").resolve())


def test_the_secure_aggregation_identity_is_checked_before_the_supernode_starts(unit_dir, keys, tmp_path):
    from privacy.secagg.identity import build_registry, write_unit_identity

    key, pub, _ = write_unit_identity(unit_dir / "unit-keys", "shop_north")
    _, other_pub, _ = write_unit_identity(tmp_path / "south", "shop_south")
    build_registry([pub, other_pub], unit_dir / "registry.json")
    cfg = load_unit_config(write(unit_dir, keys, secagg_key=str(key), secagg_registry="registry.json",
                                 secagg_min_units=4))
    assert cfg.node_config()["secagg-min-units"] == 4 and cfg.node_config()["secagg-key"] == str(key)
    # a registry that does not list this unit under its own key (altered, or the key replaced)
    build_registry([other_pub], unit_dir / "other.json")
    with pytest.raises(UnitConfigError, match="does not list unit 'shop_north'") as err:
        load_unit_config(write(unit_dir, keys, secagg_key=str(key), secagg_registry="other.json"))
    assert "\n" not in str(err.value)
    os.chmod(key, 0o644)
    with pytest.raises(UnitConfigError, match="chmod 600"):
        load_unit_config(write(unit_dir, keys, secagg_key=str(key), secagg_registry="registry.json"))
    with pytest.raises(UnitConfigError, match="secagg-min-units"):
        load_unit_config(write(unit_dir, keys, secagg_min_units=2))
