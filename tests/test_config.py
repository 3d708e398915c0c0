"""Settings: defaults, precedence (overrides > env > TOML > defaults), errors naming the key."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from edgestore.codec.erasure import ReedSolomon
from edgestore.config import Settings, load_settings
from edgestore.errors import ConfigError
from edgestore.types import ChunkerParams, EcParams
from edgestore.units import SIZE_FORMS, WHOLE_DURATION_FORMS

MiB = 1024 * 1024


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    """No EDGESTORE_* variable from the outside world; a scratch working directory."""
    for name in list(os.environ):
        if name.upper().startswith("EDGESTORE_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def write_toml(tmp_path: Path, text: str, name: str = "edgestore.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_defaults():
    s = load_settings()
    assert isinstance(s, Settings)
    assert s.home == Path("./data")
    assert (s.redundancy, s.ec_k, s.ec_m) == ("ec", 6, 3)
    assert s.ec == EcParams(6, 3)
    assert s.zstd_level == 3
    assert s.chunker == ChunkerParams(1 * MiB, 4 * MiB, 8 * MiB)
    assert s.database_url is None and s.data_dirs is None


def test_settings_are_immutable():
    s = load_settings()
    with pytest.raises(Exception):  # noqa: B017 - pydantic's frozen-instance error
        s.ec_k = 4  # type: ignore[misc]


def test_environment_overrides_defaults(monkeypatch, tmp_path):
    monkeypatch.setenv("EDGESTORE_HOME", str(tmp_path / "srv"))
    monkeypatch.setenv("EDGESTORE_EC_K", "4")
    monkeypatch.setenv("EDGESTORE_EC_M", "2")
    monkeypatch.setenv("EDGESTORE_ZSTD_LEVEL", "9")
    monkeypatch.setenv("EDGESTORE_CHUNK_MIN_SIZE", "65536")
    monkeypatch.setenv("EDGESTORE_DATA_DIRS", '["/mnt/a", "/mnt/b"]')
    monkeypatch.setenv("EDGESTORE_DATABASE_URL", "postgresql+psycopg://u@db/edgestore")
    s = load_settings()
    assert s.home == tmp_path / "srv"
    assert s.ec == EcParams(4, 2)
    assert s.zstd_level == 9
    assert s.chunker == ChunkerParams(65536, 4 * MiB, 8 * MiB)
    assert s.resolved_data_dirs == [Path("/mnt/a"), Path("/mnt/b")]
    assert s.resolved_database_url == "postgresql+psycopg://u@db/edgestore"


TOML = """
home = "/srv/edgestore"
ec_k = 4
ec_m = 2
zstd_level = 5
chunk_avg_size = 2097152
"""


def _assert_toml_values(s: Settings) -> None:
    assert s.home == Path("/srv/edgestore")
    assert s.ec == EcParams(4, 2)
    assert s.zstd_level == 5
    assert s.chunk_avg_size == 2 * MiB


def test_toml_file_argument(tmp_path):
    _assert_toml_values(load_settings(config_file=write_toml(tmp_path, TOML)))
    _assert_toml_values(load_settings(config_file=str(write_toml(tmp_path, TOML))))


def test_toml_file_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("EDGESTORE_CONFIG", str(write_toml(tmp_path, TOML)))
    _assert_toml_values(load_settings())


def test_config_file_argument_beats_the_environment_variable(monkeypatch, tmp_path):
    monkeypatch.setenv("EDGESTORE_CONFIG", str(write_toml(tmp_path, "zstd_level = 1\n", "a.toml")))
    s = load_settings(config_file=write_toml(tmp_path, "zstd_level = 7\n", "b.toml"))
    assert s.zstd_level == 7


def test_environment_beats_toml(monkeypatch, tmp_path):
    monkeypatch.setenv("EDGESTORE_EC_K", "8")
    monkeypatch.setenv("EDGESTORE_HOME", "/from/env")
    s = load_settings(config_file=write_toml(tmp_path, TOML))
    assert s.ec_k == 8
    assert s.home == Path("/from/env")
    assert s.ec_m == 2 and s.zstd_level == 5  # the rest still comes from the file


def test_overrides_beat_environment_and_toml(monkeypatch, tmp_path):
    monkeypatch.setenv("EDGESTORE_EC_K", "8")
    monkeypatch.setenv("EDGESTORE_ZSTD_LEVEL", "12")
    s = load_settings(config_file=write_toml(tmp_path, TOML), ec_k=10, home=tmp_path, ec_m=None)
    assert s.ec_k == 10  # override beats env
    assert s.home == tmp_path  # override beats TOML
    assert s.ec_m == 2  # None means "flag not given": TOML still applies
    assert s.zstd_level == 12  # env beats TOML


@pytest.mark.parametrize(
    ("var", "value", "key"),
    [
        ("EDGESTORE_EC_K", "0", "ec_k"),
        ("EDGESTORE_EC_K", "six", "ec_k"),
        ("EDGESTORE_ZSTD_LEVEL", "99", "zstd_level"),
        ("EDGESTORE_CHUNK_MIN_SIZE", "2097152", "chunk_min_size"),  # above pyfastcdc's 1 MiB
        ("EDGESTORE_REDUNDANCY", "raid5", "redundancy"),
        ("EDGESTORE_PORT", "70000", "port"),
        ("EDGESTORE_BUCKET_QUOTAS", "photos=1", "bucket_quotas"),  # not JSON: decoded early
        ("EDGESTORE_BUCKET_QUOTAS", '{"photos": "lots"}', "bucket_quotas"),
        ("EDGESTORE_DATA_DIRS", '["/a"', "data_dirs"),  # a JSON list cut short
    ],
)
def test_invalid_environment_value_names_key_and_variable(monkeypatch, var, value, key):
    monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert key in str(info.value)
    assert var in str(info.value)
    assert "Source" not in str(info.value)  # no internal class name, e.g. "_EnvSource"
    assert "Value error, " not in str(info.value)  # pydantic's wrapping, not ours
    assert info.value.code == "invalid_config"


def test_invalid_override_names_the_key():
    with pytest.raises(ConfigError, match="ec_m"):
        load_settings(ec_m=-1)


def test_inconsistent_chunk_sizes_are_refused():
    with pytest.raises(ConfigError, match="chunk_min_size"):
        load_settings(chunk_min_size=1 * MiB, chunk_avg_size=512 * 1024, chunk_max_size=2 * MiB)
    with pytest.raises(ConfigError, match="chunk_max_size"):
        load_settings(chunk_min_size=64 * 1024, chunk_avg_size=4 * MiB, chunk_max_size=2 * MiB)


def test_empty_data_dirs_are_refused():
    with pytest.raises(ConfigError, match="data_dirs"):
        load_settings(data_dirs=[])


def test_unknown_key_in_toml_is_named(tmp_path):
    path = write_toml(tmp_path, "ec_k = 4\nreplication_factor = 3\n")
    with pytest.raises(ConfigError, match="replication_factor") as caught:
        load_settings(config_file=path)
    # It says what is wrong and where, not an environment variable that does not exist.
    assert f"replication_factor (in {path}): unknown setting" in str(caught.value)
    assert "EDGESTORE_REPLICATION_FACTOR" not in str(caught.value)


def test_invalid_value_in_toml_is_named(tmp_path):
    path = write_toml(tmp_path, 'ec_k = "many"\n')
    with pytest.raises(ConfigError, match="ec_k") as caught:
        load_settings(config_file=path)
    # Where the value is: the file, not a variable the user never set.
    assert f"ec_k (in {path}):" in str(caught.value)
    assert "EDGESTORE_EC_K" not in str(caught.value)


def test_malformed_toml_is_a_config_error_naming_the_file(tmp_path):
    path = write_toml(tmp_path, "ec_k = = 4\n", "broken.toml")
    with pytest.raises(ConfigError, match=r"broken\.toml: .*line 1"):
        load_settings(config_file=path)


def test_missing_config_file(tmp_path):
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match=r"nope\.toml"):
        load_settings(config_file=missing)


def test_an_empty_config_variable_names_no_file(monkeypatch):
    """`EDGESTORE_CONFIG=` was 'config file . does not exist': empty is unset, as for every
    other variable."""
    monkeypatch.setenv("EDGESTORE_CONFIG", "")
    assert load_settings().home == Path("./data")


def test_missing_config_file_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("EDGESTORE_CONFIG", str(tmp_path / "gone.toml"))
    with pytest.raises(ConfigError, match=r"gone\.toml"):
        load_settings()


def test_resolved_database_url_defaults_to_sqlite_under_home(tmp_path):
    s = load_settings(home=tmp_path / "h")
    assert s.resolved_database_url == f"sqlite:///{tmp_path / 'h' / 'edgestore.db'}"
    relative = load_settings()  # ./data, resolved against the working directory
    assert relative.resolved_database_url == f"sqlite:///{tmp_path / 'data' / 'edgestore.db'}"
    explicit = load_settings(database_url="sqlite:////elsewhere/meta.db")
    assert explicit.resolved_database_url == "sqlite:////elsewhere/meta.db"


def test_resolved_data_dirs_default_to_k_plus_m_under_home(tmp_path):
    home = tmp_path / "h"
    assert load_settings(home=home).resolved_data_dirs == [
        home / "shards" / f"d{i}" for i in range(9)
    ]
    assert load_settings(home=home, ec_k=4, ec_m=2).resolved_data_dirs == [
        home / "shards" / f"d{i}" for i in range(6)
    ]


def test_resolved_data_dirs_in_replication_mode(tmp_path):
    home = tmp_path / "h"
    s = load_settings(home=home, redundancy="replication", replicas=2)
    assert s.resolved_data_dirs == [home / "shards" / "d0", home / "shards" / "d1"]


def test_explicit_data_dirs_win(tmp_path):
    dirs = [tmp_path / "x", tmp_path / "y"]
    assert load_settings(home=tmp_path, data_dirs=dirs).resolved_data_dirs == dirs


def test_every_accepted_ec_shape_builds_a_codec():
    try:
        s = load_settings(ec_m=0)
    except ConfigError as exc:
        assert "ec_m" in str(exc)
        return
    ReedSolomon(s.ec_k, s.ec_m)


def test_a_variable_set_but_empty_counts_as_unset(monkeypatch, tmp_path):
    """`EDGESTORE_HOME=` (a unit file's blank line, `export EDGESTORE_HOME=$UNSET`) must not
    turn the TOML's home into "" - the working directory, where a new empty store appeared."""
    path = write_toml(tmp_path, 'home = "/srv/edgestore"\nec_k = 4\n')
    for name in ("HOME", "EC_K", "DATA_DIRS", "TLS_CERTFILE", "CORS_ORIGINS", "BUCKET_QUOTAS"):
        monkeypatch.setenv(f"EDGESTORE_{name}", "")
    s = load_settings(config_file=path)
    assert s.home == Path("/srv/edgestore") and s.ec_k == 4
    assert s.data_dirs is None and s.tls_certfile is None and s.bucket_quotas == {}
    assert load_settings().home == Path("./data")


def test_an_empty_rate_limit_variable_still_turns_it_off(monkeypatch, tmp_path):
    """'' is a value there (documented: empty turns it off), not an absent variable."""
    monkeypatch.setenv("EDGESTORE_RATE_LIMIT", "")
    assert (
        load_settings(config_file=write_toml(tmp_path, 'rate_limit = "5/second"\n')).rate_limit
        == ""
    )


def test_a_rate_limit_the_limiter_cannot_parse_is_refused():
    with pytest.raises(ConfigError, match="rate_limit"):
        load_settings(rate_limit="500 per fortnight")
    assert load_settings(rate_limit=" 10/second;500/minute ").rate_limit == "10/second;500/minute"


def test_the_default_rate_limit_is_one_the_limiter_parses():
    """Settings does not parse the default (importing `limits` slowed every CLI command), so
    this does: a default the limiter refuses would otherwise pass until `serve` started."""
    from limits import parse_many

    assert parse_many(load_settings().rate_limit)


def test_paths_expand_a_leading_tilde(monkeypatch, tmp_path):
    """No shell expands `~` in a TOML file or a systemd Environment=: it meant the user's
    home, not a directory literally named '~' under the working directory."""
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    path = write_toml(
        tmp_path,
        'home = "~/es"\ndata_dirs = ["~/d1", "/mnt/d2"]\n'
        'tls_certfile = "~/cert.pem"\ntls_keyfile = "~/key.pem"\n',
    )
    s = load_settings(config_file=path)
    assert s.home == tmp_path / "user" / "es"
    assert s.data_dirs == [tmp_path / "user" / "d1", Path("/mnt/d2")]
    assert s.tls_certfile == tmp_path / "user" / "cert.pem"
    assert s.tls_keyfile == tmp_path / "user" / "key.pem"
    assert load_settings(home="~/x").resolved_database_url.startswith(f"sqlite:///{tmp_path}")


@pytest.mark.parametrize("url", ["files.example.com", "example.com/edge", "ftp://example.com"])
def test_a_public_url_without_http_scheme_is_refused(url):
    """It becomes every Location header: without a scheme, clients took it for a path."""
    with pytest.raises(ConfigError, match=r"public_url \(EDGESTORE_PUBLIC_URL\)"):
        load_settings(public_url=url)
    assert load_settings(public_url="https://files.example.com/edge/").public_url


def test_a_setting_below_the_bucket_quotas_table_is_refused(tmp_path):
    """TOML puts every key after `[bucket_quotas]` in that table: `ec_k = 4` written below it
    became the quota of a bucket named ec_k, and the store ran with k=6 without a word."""
    path = write_toml(tmp_path, "[bucket_quotas]\nphotos = 1\nec_k = 4\n")
    with pytest.raises(ConfigError, match=r"bucket_quotas \(in .*\): ec_k is a setting.*above"):
        load_settings(config_file=path)


@pytest.mark.parametrize(("text", "wrong"), [("Photos = 1", "'Photos'"), ("photos = -1", "-1")])
def test_a_bucket_quota_that_could_never_apply_is_refused(tmp_path, text, wrong):
    """A bucket name no bucket can have (upper case) was a quota that never applied; a
    negative one refused every upload of the bucket with 507."""
    with pytest.raises(ConfigError, match=r"bucket_quotas") as caught:
        load_settings(config_file=write_toml(tmp_path, f"[bucket_quotas]\n{text}\n"))
    assert wrong in str(caught.value)


@pytest.mark.parametrize(
    ("text", "hint"),
    [
        ('data_dir = ["/mnt/a"]\n', "did you mean data_dirs?"),
        ("[server]\nport = 9000\n", "settings are top-level keys"),
    ],
)
def test_an_unknown_key_in_the_file_says_what_was_meant(tmp_path, text, hint):
    with pytest.raises(ConfigError, match="unknown setting") as caught:
        load_settings(config_file=write_toml(tmp_path, text))
    assert hint in str(caught.value)


def test_an_unknown_edgestore_variable_is_not_ignored_silently(monkeypatch, caplog):
    """`EDGESTORE_DATA_DIR=/mnt/a` configured nothing, and nothing said so."""
    monkeypatch.setenv("EDGESTORE_DATA_DIR", "/mnt/a")
    monkeypatch.setenv("EDGESTORE_API_KEY", "k")  # the client commands' own: no warning
    monkeypatch.setenv("EDGESTORE_REQUIRE_PG", "1")  # the test suite's (CI sets them): none
    monkeypatch.setenv("EDGESTORE_TEST_PG_URL", "postgresql+psycopg://x@y/z")
    with caplog.at_level("WARNING", logger="edgestore.config"):
        assert load_settings().data_dirs is None
    assert "EDGESTORE_DATA_DIR is no setting" in caplog.text
    assert "did you mean EDGESTORE_DATA_DIRS?" in caplog.text
    assert "EDGESTORE_API_KEY" not in caplog.text
    assert "EDGESTORE_REQUIRE_PG" not in caplog.text and "EDGESTORE_TEST_" not in caplog.text


@pytest.mark.parametrize(
    ("var", "value", "allowed"),
    [
        ("EDGESTORE_MAX_UPLOAD_SIZE", "8.5", SIZE_FORMS),  # a number, not a whole one
        ("EDGESTORE_UPLOAD_EXPIRY_SECONDS", "1e400", WHOLE_DURATION_FORMS),
        ("EDGESTORE_METRICS_PUBLIC", "maybe", "true or false"),
    ],
)
def test_a_value_of_the_wrong_kind_says_what_is_allowed(monkeypatch, var, value, allowed):
    monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert allowed in str(caught.value) and repr(value) in str(caught.value)


def test_an_unsupported_database_url_in_the_file_names_the_file_not_the_password(tmp_path):
    """`postgres://` (no such SQLAlchemy dialect) was reported as EDGESTORE_DATABASE_URL, a
    variable nobody had set, once the store was being opened."""
    path = write_toml(tmp_path, 'database_url = "postgres://u:s3cret@db/edgestore"\n')
    with pytest.raises(
        ConfigError, match=rf"database_url \(in {path}\): .*postgresql\+psycopg"
    ) as caught:
        load_settings(config_file=path)
    assert "s3cret" not in str(caught.value)
