"""Settings: one pydantic-settings object, the only reader of the environment.

Precedence, highest first: explicit overrides (CLI flags), `EDGESTORE_*` environment variables,
the TOML file named by `--config` or `EDGESTORE_CONFIG`, then the defaults below. Every option
is documented in docs/configuration.md.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    TomlConfigSettingsSource,
)

from edgestore import config_hints as hints
from edgestore.errors import ConfigError
from edgestore.types import BUCKET_NAME_PATTERN, BUCKET_NAME_RULE, ChunkerParams, EcParams
from edgestore.units import ByteRate, Seconds, Size, WholeSeconds

MiB = 1024 * 1024
_DEFAULT_DIR = re.compile(r"d[0-9]{1,3}")  # HOME/shards/d0…, the default data dirs
ENV_PREFIX = "EDGESTORE_"
_EMPTY_IS_A_VALUE = {"rate_limit"}  # '' turns it off; any other empty variable is unset
DEFAULT_RATE_LIMIT = "500/second"
# `EDGESTORE_*` variables that are no setting but read elsewhere (--config, client commands).
READ_ELSEWHERE = {"CONFIG", "API_KEY", "SERVER", "CA_CERT", "TIMEOUT"}
TEST_SUITE_PREFIXES = ("REQUIRE_", "TEST_")  # the test suite's (README, Development)
log = logging.getLogger(__name__)


class _EnvSource(EnvSettingsSource):
    """`EDGESTORE_*` variables, where one set but empty counts as unset: `EDGESTORE_HOME=`
    (a blank unit-file line, `$UNSET` expanded) meant "not set", not home="" (the working dir)."""

    def _load_env_vars(self) -> dict[str, str | None]:  # type: ignore[override]
        keep = {(ENV_PREFIX + name).lower() for name in _EMPTY_IS_A_VALUE}
        return {k: v for k, v in super()._load_env_vars().items() if v != "" or k in keep}


class Settings(BaseSettings):
    """Everything an edgestore node can be told; immutable once loaded."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="forbid", frozen=True, validate_default=True
    )

    home: Path = Field(Path("./data"), description="Root for the default database and data dirs.")
    database_url: str | None = Field(
        None, description="SQLAlchemy URL; default sqlite under HOME. postgresql+psycopg://…"
    )
    data_dirs: Annotated[list[Path] | None, NoDecode] = Field(
        None,
        description="One directory per disk for shards (comma-separated or a JSON list); "
        "default k+m dirs under HOME.",
    )

    redundancy: Literal["ec", "replication"] = "ec"
    ec_k: int = Field(6, ge=1, le=32)
    ec_m: int = Field(3, ge=1, le=16)
    replicas: int = Field(3, ge=1, le=16, description="Copies per chunk in replication mode.")
    inline_max_bytes: Size = Field(
        64 * 1024, ge=0, le=1 * MiB, description="Stored chunks up to this size live in the DB."
    )
    small_chunk_max_bytes: Size = Field(
        128 * 1024,
        ge=0,
        description="Stored chunks up to this size are replicated (m+1 copies), not EC'd.",
    )

    zstd_level: int = Field(3, ge=-7, le=22)
    compress_min_saving: float = Field(
        0.03, ge=0.0, lt=1.0, description="Keep a chunk raw unless zstd saves at least this."
    )

    chunk_min_size: Size = Field(1 * MiB, ge=64, le=1 * MiB)
    chunk_avg_size: Size = Field(4 * MiB, ge=256, le=4 * MiB)
    chunk_max_size: Size = Field(8 * MiB, ge=1024, le=16 * MiB)

    cpu_workers: int = Field(0, ge=0, le=64, description="CPU pool size; 0 means one per core.")
    read_ahead_chunks: int = Field(
        4, ge=0, le=64, description="Chunks a download decodes ahead of the one being sent."
    )
    read_ahead_budget_chunks: int = Field(
        32,
        ge=0,
        le=4096,
        description="Chunks decoded ahead across all downloads at once (memory: up to this "
        "many max-size chunks); past it a download decodes one chunk at a time.",
    )
    native_hash_buffer_bytes: Size = Field(
        128 * MiB,
        ge=0,
        description="Memory for native chunks that arrive ahead of their turn in the whole-file "
        "SHA-256; beyond it they are read back instead.",
    )
    gc_grace_seconds: WholeSeconds = Field(6 * 3600, ge=0)
    upload_expiry_seconds: WholeSeconds = Field(7 * 24 * 3600, ge=60)
    upload_lock_seconds: Seconds = Field(
        6.0, gt=0, le=300, description="Write lease of an upload; a dead writer blocks no longer."
    )
    upload_warm_bytes: Size = Field(
        64 * MiB,
        ge=0,
        description="Memory for the chunkers of uploads between requests, so the next request "
        "goes on without reading the staged tail back; 0 keeps none.",
    )

    maintenance_interval_seconds: WholeSeconds = Field(
        600, ge=0, description="Server upkeep (expiry, gc, repair) every this often; 0 disables it."
    )
    orphan_sweep_interval_seconds: WholeSeconds = Field(
        4 * 3600,
        ge=0,
        description="The upkeep's sweep of the data dirs for orphan shard files (it lists every "
        "file) runs at most this often; 0: every round.",
    )
    scrub_bytes_per_round: Size = Field(
        1 << 30,
        ge=0,
        description="Shard bytes an upkeep round reads and checks (a background scrub going "
        "round the store, pass after pass; nodes sharing a database take turns at one scrub); "
        "0 disables it.",
    )

    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    public_url: str | None = Field(None, description="Base URL clients see, behind a proxy.")
    max_upload_size: Size = Field(1 << 40, ge=0, description="Tus-Max-Size, bytes.")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["text", "json"] = "text"

    # Access control and abuse protection: docs/security.md explains each of these.
    auth_enabled: bool = Field(
        True, description="Require an API key or a pre-signed URL (serve --no-auth: loopback only)."
    )
    admin_key: SecretStr | None = Field(
        None, description="An admin API key made sure of at start (bootstrap, automation)."
    )
    metrics_public: bool = Field(False, description="Serve /metrics without credentials.")
    trusted_proxies: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Peers (IPs or CIDRs) whose X-Forwarded-For / -Proto are believed.",
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Browser origins allowed by CORS; none by default."
    )
    rate_limit: str = Field(
        DEFAULT_RATE_LIMIT,
        description="Requests per client, e.g. '500/second;10000/minute'; '' = off.",
    )
    rate_limit_storage: str = Field(
        "memory://", description="memory:// (per node) or redis://host:port[/db] (shared)."
    )
    upload_bandwidth: ByteRate = Field(
        0, ge=0, description="Request-body bytes per second per client (throttled); 0 = off."
    )
    max_concurrent_uploads: int = Field(
        32, ge=0, description="Upload requests streaming at once per client; 0 = unlimited."
    )
    request_head_timeout: Seconds = Field(
        30.0,
        gt=0,
        description="Seconds a connection has to send a whole request head (408 past it).",
    )
    send_timeout: Seconds = Field(
        60.0,
        gt=0,
        description="Seconds a client may take no response bytes (its receive window full) "
        "before its connection is closed.",
    )
    max_connections_per_client: int = Field(
        256,
        ge=0,
        description="Open connections per client address (not trusted_proxies); more are "
        "closed on arrival; 0 = unlimited.",
    )
    max_concurrent_downloads: int = Field(
        64,
        ge=0,
        description="Object bodies being sent at once per node (each holds up to a chunk); "
        "more wait a second, then get 503; 0 = unlimited.",
    )
    bucket_quota_bytes: Size = Field(
        0, ge=0, description="Logical bytes a bucket may hold (versions + open uploads); 0 = off."
    )
    bucket_quotas: dict[str, Annotated[Size, Field(ge=0)]] = Field(
        default_factory=dict, description="Per-bucket overrides of bucket_quota_bytes."
    )
    presign_max_seconds: WholeSeconds = Field(
        7 * 24 * 3600, ge=60, description="Longest lifetime a pre-signed URL may be given."
    )
    tls_certfile: Path | None = Field(None, description="PEM certificate chain: serve HTTPS.")
    tls_keyfile: Path | None = Field(None, description="PEM private key of tls_certfile.")

    @field_validator("data_dirs", "trusted_proxies", "cors_origins", mode="before")
    @classmethod
    def _split_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [part.strip() for part in text.split(",") if part.strip()]
        return value

    @field_validator("home", "data_dirs", "tls_certfile", "tls_keyfile")
    @classmethod
    def _expand_user(cls, value: Any) -> Any:
        """`~` as a shell would: nothing expands it in a TOML file or a unit's Environment=."""
        if isinstance(value, Path):
            return value.expanduser()
        if isinstance(value, list):
            return [p.expanduser() for p in value]
        return value

    @field_validator("cors_origins")
    @classmethod
    def _browser_origins(cls, value: list[str]) -> list[str]:
        """Each origin as a browser sends it (`scheme://host[:port]`, lowercase, no default
        port): `https://App.example/` matched no request, and every preflight was refused."""
        return [_origin(item) for item in value]

    @field_validator("public_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value and not re.match(r"https?://[^/\s]+", value.strip()):
            raise ValueError(f"{value!r} is not an http:// or https:// URL (with a host)")
        return value.strip() if value else value

    @field_validator("database_url")
    @classmethod
    def _database_scheme(cls, value: str | None) -> str | None:
        """Refused here, not when the store opens, so the message names where the value came
        from; it never repeats the URL, whose password must not reach a log."""
        if value and not re.match(r"(sqlite|postgresql)(\+\w+)?://", value.strip()):
            scheme = value.partition("://")[0] if "://" in value else "no scheme"
            raise ValueError(
                f"unsupported database ({scheme[:40]!r}); use sqlite:///PATH or "
                "postgresql+psycopg://user@host/db"
            )
        return value

    @field_validator("admin_key")
    @classmethod
    def _long_admin_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < 32:
            raise ValueError("must be at least 32 characters (use `edgestore keys create`)")
        return value

    @field_validator("rate_limit")
    @classmethod
    def _parse_rate_limit(cls, value: str) -> str:
        # The default is not parsed here (tests/test_config.py parses it): importing `limits`
        # cost every CLI command ~20 ms of its start, and only `serve` enforces the limit.
        if value.strip() and value.strip() != DEFAULT_RATE_LIMIT:
            from limits import parse_many  # the library that enforces it parses it

            try:
                parse_many(value)
            except ValueError:
                raise ValueError(
                    f"{value!r} is not like '200/second' or '10/second;500/minute'"
                ) from None
        return value.strip()

    @field_validator("rate_limit_storage")
    @classmethod
    def _storage_scheme(cls, value: str) -> str:
        if value.split("://", 1)[0] not in ("memory", "redis", "rediss", "redis+unix"):
            raise ValueError("use memory:// or redis://host:port[/db]")
        return value

    @field_validator("bucket_quotas")
    @classmethod
    def _quota_buckets(cls, value: dict[str, int]) -> dict[str, int]:
        """A quota no bucket can match never applied, silently; a setting's name is one written
        below the `[bucket_quotas]` table, which TOML puts in that table."""
        for name in value:
            if name in Settings.model_fields:
                raise ValueError(
                    f"{name} is a setting, not a bucket: TOML puts every key below "
                    "[bucket_quotas] in that table; move it above [bucket_quotas]"
                )
            if not re.fullmatch(BUCKET_NAME_PATTERN, name):
                raise ValueError(f"{name!r} is not a bucket name: use {BUCKET_NAME_RULE}")
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _proxy_networks(cls, value: list[str]) -> list[str]:
        import ipaddress

        for item in value:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(f"{item!r} is not an IP address or CIDR network") from None
        return value

    @model_validator(mode="after")
    def _check_tls(self) -> Settings:
        if (self.tls_certfile is None) != (self.tls_keyfile is None):
            raise ValueError(
                "tls_certfile (EDGESTORE_TLS_CERTFILE, serve --certfile) and tls_keyfile "
                "(EDGESTORE_TLS_KEYFILE, serve --keyfile) go together: give both or neither"
            )
        return self

    @model_validator(mode="after")
    def _check_sizes(self) -> Settings:
        if not self.chunk_min_size <= self.chunk_avg_size <= self.chunk_max_size:
            raise ValueError(
                "chunk sizes must satisfy chunk_min_size (EDGESTORE_CHUNK_MIN_SIZE) <= "
                "chunk_avg_size (EDGESTORE_CHUNK_AVG_SIZE) <= chunk_max_size "
                "(EDGESTORE_CHUNK_MAX_SIZE)"
            )
        if self.data_dirs is not None and len(self.data_dirs) == 0:
            raise ValueError("data_dirs (EDGESTORE_DATA_DIRS) must name at least one directory")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, _EnvSource(settings_cls)]
        if settings_cls.model_config.get("toml_file"):
            sources.append(TomlConfigSettingsSource(settings_cls))
        return tuple(sources)

    # --- derived values -----------------------------------------------------------------------

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.home / 'edgestore.db').resolve()}"

    @property
    def resolved_data_dirs(self) -> list[Path]:
        """The data dirs; by default HOME/shards/d0…: one per shard of a chunk, and every one
        an earlier configuration created, which holds shards of old chunks (lowering k+m or
        switching to replication must not leave those chunks short of shards)."""
        if self.data_dirs:
            return [Path(d) for d in self.data_dirs]
        root = self.home / "shards"
        count = self.ec_k + self.ec_m if self.redundancy == "ec" else self.replicas
        try:
            existing = [
                int(p.name[1:]) + 1
                for p in root.iterdir()
                if _DEFAULT_DIR.fullmatch(p.name) and p.is_dir()
            ]
        except OSError:  # no HOME/shards yet (a new store), or unreadable: opening says so
            existing = []
        count = max([count, *existing])
        return [root / f"d{i}" for i in range(count)]

    @property
    def chunker(self) -> ChunkerParams:
        return ChunkerParams(self.chunk_min_size, self.chunk_avg_size, self.chunk_max_size)

    @property
    def ec(self) -> EcParams:
        return EcParams(self.ec_k, self.ec_m)

    @property
    def workers(self) -> int:
        return self.cpu_workers or (os.cpu_count() or 2)


def _origin(text: str) -> str:
    """`text` as the Origin header a browser would send for it; ValueError if it has a path
    (an origin has none) or no scheme. `*` (any origin) and `null` pass as they are."""
    if text in ("*", "null"):
        return text
    scheme, sep, rest = text.partition("://")
    host = rest.removesuffix("/")
    if not sep or not scheme or not host or any(c in host for c in "/?#@ "):
        raise ValueError(
            f"cors_origins: {text!r} is not an origin; write it as scheme://host[:port], "
            "e.g. https://app.example"
        )
    scheme, host = scheme.lower(), host.lower()
    default = {"http": ":80", "https": ":443"}.get(scheme)
    if default and host.endswith(default):
        host = host.removesuffix(default)
    return f"{scheme}://{host}"


def load_settings(
    config_file: str | Path | None = None, *, flags: dict[str, str] | None = None, **overrides: Any
) -> Settings:
    """Load settings, failing with a ConfigError that names the offending key and where its
    value came from: `flags` names the command-line flag behind each override (`--port`)."""
    path = config_file or os.environ.get(ENV_PREFIX + "CONFIG") or None  # set but empty: unset
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist (from --config/EDGESTORE_CONFIG)")
    settings_cls = Settings
    if path is not None:

        class FileSettings(Settings):
            model_config = SettingsConfigDict(**{**Settings.model_config, "toml_file": path})

        settings_cls = FileSettings
    given = {k: v for k, v in overrides.items() if v is not None}
    _warn_unknown_variables()
    try:
        return settings_cls(**given)
    except ValidationError as exc:
        problems = [_problem(err, given, path, flags or {}) for err in exc.errors()]
        raise ConfigError("invalid configuration: " + "; ".join(problems)) from None
    except SettingsError as exc:  # a variable's JSON that does not even decode
        name = re.search(r'field "(\w+)" from source "\w*EnvSource"', str(exc))
        if name is None:
            raise ConfigError(f"invalid configuration: {exc}") from None
        key = name.group(1)
        raise ConfigError(
            f"invalid configuration: {key} ({ENV_PREFIX}{key.upper()}): not valid JSON "
            f"({_JSON_SHAPES.get(key, 'see docs/configuration.md')})"
        ) from None
    except ValueError as exc:  # e.g. a malformed TOML file
        where = f"{path}: " if path is not None and isinstance(exc, tomllib.TOMLDecodeError) else ""
        raise ConfigError(f"invalid configuration: {where}{exc}") from None


def _problem(err: Any, given: dict[str, Any], path: Path | None, flags: dict[str, str]) -> str:
    """One invalid value as the user can fix it: the key, where it came from, what was wrong
    with it, the value (never that of a string setting: a URL may hold a password) and what is
    allowed."""
    message = err["msg"].removeprefix("Value error, ")
    if not err["loc"]:  # a cross-field check: its message names the keys
        return message
    key = ".".join(str(p) for p in err["loc"])
    if err["type"] == "extra_forbidden":  # a file's (unknown variables are warned about)
        if isinstance(err["input"], dict):
            hint = "settings are top-level keys, above any [table] but [bucket_quotas]"
        else:
            hint = hints.did_you_mean(key, Settings.model_fields, "")
        return f"{key} (in {path}): unknown setting" + (f"; {hint}" if hint else "")
    where = _source(str(err["loc"][0]), given, path, flags)
    if err["type"] in hints.PARSING | hints.BOUNDS:
        allowed = hints.allowed(key, err["type"])
        message += f", got {err['input']!r}" + (f" ({allowed})" if allowed else "")
    return f"{key} ({where}): {message}"


def _warn_unknown_variables() -> None:
    """An `EDGESTORE_*` variable that names no setting configures nothing: say so (a warning,
    not a refusal: the environment is shared with the client commands, scripts and tests)."""
    for var in sorted(os.environ):
        name = var.upper().removeprefix(ENV_PREFIX)
        if (
            var.upper().startswith(ENV_PREFIX)
            and name.lower() not in Settings.model_fields
            and name not in READ_ELSEWHERE
            and not name.startswith(TEST_SUITE_PREFIXES)
        ):
            hint = hints.did_you_mean(name, Settings.model_fields, ENV_PREFIX)
            log.warning("%s is no setting (ignored)%s", var, f"; {hint}" if hint else "")


# What a variable decoded as JSON must look like, for the message when it does not decode.
_JSON_SHAPES = {"bucket_quotas": 'a JSON object, e.g. {"photos": "1TiB"}'}


def _source(key: str, given: dict[str, Any], path: Path | None, flags: dict[str, str]) -> str:
    """Where to fix an invalid value: the flag the user gave, the file when it came from there
    (naming a variable nobody set sent users looking for one), else its variable."""
    if key in given and key in flags:
        return flags[key]
    env = ENV_PREFIX + key.upper()
    from_env = bool(os.environ.get(env)) or (key in _EMPTY_IS_A_VALUE and env in os.environ)
    if path is not None and key not in given and not from_env:
        return f"in {path}"
    return env
