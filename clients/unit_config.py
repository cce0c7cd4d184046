"""A partner unit's deployment configuration: one TOML file, validated before anything starts.

A unit runs one Flower SuperNode on its own premises (see ``docs/deployment.md``). Everything
that SuperNode needs is in ``unit.toml``::

    unit-id = "shop_north"                      # the name the unit's key was made for
    data-path = "data/events.parquet"           # events (CSV or Parquet, the data contract)
    users-path = "data/users.parquet"           # optional: users with audit attributes
    on-error = "fail"                           # or "quarantine" (rejected rows kept aside)
    output-dir = "fedseg-output"                # local per-user outputs (scores, segments)
    # actions-path = "fedseg-output/actions.parquet"  # the CRM action list, for the effect measurement
    epsilon-budget = 8.0                        # optional: total epsilon per user over all runs
    # delta-budget = 1e-5                       # total delta (default 1e-5 with epsilon-budget)
    # ledger-path = "fedseg-output/privacy-ledger.sqlite"  # this unit's own privacy ledger
    # dataset-id = "shop_north_2024"            # spend is recorded per dataset (default: data fingerprint)
    superlink = "coordinator.example.com:8000"  # the SuperLink's Fleet API, host:port
    root-certificates = "keys/ca.crt"           # the federation's CA (TLS)
    auth-key = "unit-keys/shop_north"           # this unit's SuperNode private key (fedseg keys supernode)
    clientapp-port = 9094                       # local port of the SuperNode's runtime API
    # insecure = true                           # no TLS, no authentication: testing only
    # secagg-key / secagg-registry              # secure-aggregation identity (fedseg keys secagg, registry)
    # secagg-min-threshold / secagg-min-units   # this unit's floor under the coordinator's choice (units: >= 3)

Relative paths are relative to the TOML file's folder. :func:`load_unit_config` checks what
can be checked before a SuperNode starts: every file exists and is readable, the key parses
as a private key, the CA parses as a certificate, the data file passes the data contract.
Errors name the file, the field and what to do; nothing is discovered mid-round.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

if TYPE_CHECKING:
    from clients.ingest import FileFormat

_UNIT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_ADDRESS = re.compile(r"^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):(\d{1,5})$")


class UnitConfigError(ValueError):
    """The unit configuration is unusable; the message says what, where and what to do."""


class UnitConfig(BaseModel):
    """One unit's SuperNode settings (kebab-case keys in TOML, snake_case here)."""

    model_config = ConfigDict(extra="forbid")

    unit_id: str = Field(description="The unit's name: letters, digits, '_', '.', '-' (<= 64).")
    data_path: Path = Field(description="Events file (CSV or Parquet) read through the data contract.")
    users_path: Path | None = Field(None, description="Optional users file (audit attributes).")
    actions_path: Path | None = Field(None, description="The unit's CRM action list (fedseg segment's "
                                      "actions file, CSV or Parquet) for the federated effect measurement.")
    on_error: Literal["fail", "quarantine"] = Field("fail", description="Malformed rows: stop, or set aside.")
    sep: str = Field(",", description="Field delimiter of CSV data files.")
    encoding: str = Field("utf-8", description="Text encoding of CSV data files.")
    date_format: str | None = Field(None, description="strftime pattern of the timestamps (default: ISO-8601 or "
                                    "integer epoch seconds/milliseconds).")
    output_dir: Path = Field(Path("fedseg-output"), description="Where local per-user outputs are written.")
    epsilon_budget: float | None = Field(None, gt=0, description="Total epsilon per end user this unit allows on "
                                         "its dataset, over every run and task (its ledger adds them up); runs "
                                         "without DP are refused when set.")
    delta_budget: float | None = Field(None, gt=0, lt=1, description="Total delta allowed on the dataset (deltas of "
                                       "runs add up); default 1e-5 when epsilon-budget is set.")
    ledger_path: Path | None = Field(None, description="This unit's privacy ledger (SQLite); default "
                                     "<output-dir>/privacy-ledger.sqlite.")
    dataset_id: str | None = Field(None, description="Name the unit's privacy spend is recorded under; default: a "
                                   "fingerprint of the events file's content.")
    dp_seed: int | None = Field(None, description="RESEARCH ONLY: a local seed for DP-SGD's sample and noise "
                                "(reproducible runs). Leave unset in production: they then come from OS entropy.")
    superlink: str = Field(description="SuperLink Fleet API address, host:port.")
    root_certificates: Path | None = Field(None, description="CA certificate of the federation (TLS).")
    auth_key: Path | None = Field(None, description="SuperNode authentication private key (OpenSSH PEM).")
    insecure: bool = Field(False, description="No TLS and no authentication (local testing only).")
    clientapp_port: int = Field(9094, ge=1, le=65535, description="Local port of the SuperNode's runtime API.")
    secagg_key: Path | None = Field(None, description="Secure-aggregation identity key (Ed25519 PEM).")
    secagg_registry: Path | None = Field(None, description="Registry of all units' secure-aggregation public keys.")
    secagg_min_threshold: int | None = Field(None, ge=2, description="Refuse secure-aggregation rounds whose "
                                             "reconstruction threshold is lower.")
    secagg_min_units: int | None = Field(None, ge=3, description="Refuse secure-aggregation rounds with fewer units.")
    max_retries: int | None = Field(None, ge=0, description="Reconnection attempts; None: keep trying.")

    @field_validator("unit_id")
    @classmethod
    def _unit_id(cls, value: str) -> str:
        if not _UNIT_ID.match(value):
            raise ValueError("use letters, digits, '_', '.' or '-' (at most 64, starting with a letter or digit)")
        return value

    @field_validator("superlink")
    @classmethod
    def _address(cls, value: str) -> str:
        match = _ADDRESS.match(value)
        if not match or not 0 < int(match.group(2)) < 65536:
            raise ValueError(f"{value!r} is not host:port (for example 'coordinator.example.com:8000')")
        return value

    @model_validator(mode="after")
    def _file_format(self) -> "UnitConfig":
        self.file_format()  # a bad delimiter or encoding is an error at start, naming the setting
        return self

    @model_validator(mode="after")
    def _security(self) -> "UnitConfig":
        if not self.insecure:
            missing = [name for name, value in (("root-certificates", self.root_certificates),
                                                ("auth-key", self.auth_key)) if value is None]
            if missing:
                raise ValueError(f"{' and '.join(missing)} missing: a unit connects with TLS and node "
                                 "authentication (the federation's ca.crt, and this unit's own key from `fedseg "
                                 "keys supernode`), or set insecure = true for local testing")
        if (self.secagg_key is None) != (self.secagg_registry is None):
            raise ValueError("secagg-key and secagg-registry go together")
        return self

    def file_format(self) -> "FileFormat":
        """How the unit's CSV files are written (:class:`clients.ingest.FileFormat`)."""
        from clients.ingest import FileFormat

        return FileFormat(sep=self.sep, encoding=self.encoding, date_format=self.date_format)

    def node_config(self) -> dict[str, str | float | int]:
        """What the ClientApp reads from ``context.node_config``."""
        out: dict[str, str | float | int] = {"unit-id": self.unit_id, "data-path": str(self.data_path),
                                       "on-error": self.on_error, "output-dir": str(self.output_dir),
                                       "sep": self.sep, "encoding": self.encoding}
        if self.date_format is not None:
            out["date-format"] = self.date_format
        if self.users_path is not None:
            out["users-path"] = str(self.users_path)
        if self.actions_path is not None:
            out["actions-path"] = str(self.actions_path)
        out["ledger-path"] = str(self.ledger_path or self.output_dir / "privacy-ledger.sqlite")
        if self.epsilon_budget is not None:
            out["epsilon-budget"] = float(self.epsilon_budget)
        if self.delta_budget is not None:
            out["delta-budget"] = float(self.delta_budget)
        if self.dataset_id is not None:
            out["dataset-id"] = self.dataset_id
        if self.dp_seed is not None:
            out["dp-seed"] = int(self.dp_seed)
        if self.secagg_key is not None and self.secagg_registry is not None:
            out["secagg-key"], out["secagg-registry"] = str(self.secagg_key), str(self.secagg_registry)
        if self.secagg_min_threshold is not None:
            out["secagg-min-threshold"] = self.secagg_min_threshold
        if self.secagg_min_units is not None:
            out["secagg-min-units"] = self.secagg_min_units
        return out

    def node_config_arg(self) -> str:
        """``--node-config`` value: space-separated ``key=value`` with TOML values."""
        parts = []
        for key, value in self.node_config().items():
            if isinstance(value, str):
                if '"' in value or "\\" in value:
                    raise UnitConfigError(f"{key} = {value!r}: quotes and backslashes are not allowed in paths")
                parts.append(f'{key}="{value}"')
            else:
                parts.append(f"{key}={value!r}")
        return " ".join(parts)

    def supernode_args(self, executable: str = "flower-supernode") -> list[str]:
        """The ``flower-supernode`` command line for this unit."""
        args = [executable, "--superlink", self.superlink, "--port", str(self.clientapp_port),
                "--node-config", self.node_config_arg()]
        if self.insecure:
            args.append("--insecure")
        else:
            args += ["--root-certificates", str(self.root_certificates),
                     "--auth-supernode-private-key", str(self.auth_key)]
        if self.max_retries is not None:
            args += ["--max-retries", str(self.max_retries)]
        return args


def _readable(path: Path, field: str, source: Path) -> None:
    if not path.exists():
        raise UnitConfigError(f"{source}: {field} = {str(path)!r} does not exist; fix the path (relative paths "
                              f"are relative to {source.parent}).")
    if not path.is_file():
        raise UnitConfigError(f"{source}: {field} = {str(path)!r} is not a file.")
    if not os.access(path, os.R_OK):
        raise UnitConfigError(f"{source}: {field} = {str(path)!r} is not readable by this user; fix its "
                              "permissions.")


def _check_key(path: Path, source: Path) -> None:
    from cryptography.hazmat.primitives.serialization import load_ssh_private_key

    try:
        load_ssh_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError) as exc:
        raise UnitConfigError(f"{source}: auth-key = {str(path)!r} is not an unencrypted OpenSSH private key "
                              f"({exc}); use the private key `fedseg keys supernode` wrote.") from None
    if os.name == "posix" and path.stat().st_mode & 0o077:
        raise UnitConfigError(f"{source}: auth-key = {str(path)!r} is readable by other users "
                              f"(mode {path.stat().st_mode & 0o777:o}); run `chmod 600 {path}`.")


def _check_ca(path: Path, source: Path) -> None:
    from cryptography import x509

    try:
        x509.load_pem_x509_certificates(path.read_bytes())
    except ValueError as exc:
        raise UnitConfigError(f"{source}: root-certificates = {str(path)!r} is not a PEM certificate ({exc}); "
                              "use the federation's ca.crt.") from None


def load_unit_config(path: str | Path, check_files: bool = True) -> UnitConfig:
    """Read and validate ``path``; with ``check_files`` also check every file it names."""
    source = Path(path)
    if not source.is_file():
        raise UnitConfigError(f"{source}: no such unit configuration file.")
    try:
        raw = tomllib.loads(source.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UnitConfigError(f"{source}: not valid TOML ({exc}).") from None
    values = {k.replace("-", "_"): v for k, v in raw.items()}
    base = source.resolve().parent
    for key in ("data_path", "users_path", "actions_path", "output_dir", "root_certificates", "auth_key",
                "secagg_key", "secagg_registry", "ledger_path"):
        if isinstance(values.get(key), str):
            values[key] = (base / values[key]).resolve()
    try:
        cfg = UnitConfig.model_validate(values)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            where = ".".join(str(p).replace("_", "-") for p in err["loc"]) or "(file)"
            message = "unknown setting" if err["type"] == "extra_forbidden" else err["msg"]
            lines.append(f"  {where}: {message}")
        raise UnitConfigError(f"{source}: invalid unit configuration:\n" + "\n".join(lines)) from None
    if check_files:
        _readable(cfg.data_path, "data-path", source)
        if cfg.users_path is not None:
            _readable(cfg.users_path, "users-path", source)
        if cfg.actions_path is not None:
            _readable(cfg.actions_path, "actions-path", source)
        if cfg.root_certificates is not None:
            _readable(cfg.root_certificates, "root-certificates", source)
            _check_ca(cfg.root_certificates, source)
        if cfg.auth_key is not None:
            _readable(cfg.auth_key, "auth-key", source)
            _check_key(cfg.auth_key, source)
        for field_name in ("secagg_key", "secagg_registry"):
            value = getattr(cfg, field_name)
            if value is not None:
                _readable(value, field_name.replace("_", "-"), source)
        if cfg.secagg_key is not None and cfg.secagg_registry is not None:
            from privacy.secagg.config import SecAggError
            from privacy.secagg.identity import load_identity

            try:
                load_identity(cfg.secagg_key, cfg.secagg_registry, cfg.unit_id)
            except SecAggError as exc:
                raise UnitConfigError(f"{source}: {exc}") from None
    return cfg


def check_unit_data(cfg: UnitConfig) -> list[str]:
    """Read the unit's files through the data contract, as the ClientApp will; one summary line
    per file (rows read, accepted, rejected), or :class:`clients.ingest.IngestError` with file,
    line and reason. With ``on-error = "quarantine"`` rejected rows go to the quarantine file
    beside the data file, exactly as during a run."""
    from clients.ingest import read_events, read_users

    fmt = cfg.file_format()
    events = read_events(cfg.data_path, on_error=cfg.on_error, file_format=fmt)
    lines = [events.report.summary() + f"; {events.frame['user_id'].nunique():,} users"]
    if cfg.users_path is not None:
        lines.append(read_users(cfg.users_path, on_error=cfg.on_error, file_format=fmt).report.summary())
    return lines
