"""Sizes and durations with units in the settings (edgestore/units.py): every such setting takes
them from the file and the environment; plain numbers keep their meaning; an invalid one names
the key, where it came from, why, and the accepted forms."""

from __future__ import annotations

import pytest

from edgestore.config import Settings, load_settings
from edgestore.errors import ConfigError
from edgestore.units import DURATION_FORMS, SIZE_FORMS, WHOLE_DURATION_FORMS
from tests.test_config import clean_env, write_toml  # noqa: F401 (clean_env: autouse fixture)

MiB = 1024 * 1024


# Every size or duration setting, a value with a unit unlike its default, and what it reads as.
WITH_UNITS = [
    ("inline_max_bytes", "32KiB", 32 * 1024),
    ("small_chunk_max_bytes", "64 kib", 64 * 1024),
    ("chunk_min_size", "0.5MiB", MiB // 2),
    ("chunk_avg_size", "2M", 2 * MiB),
    ("chunk_max_size", "16MiB", 16 * MiB),
    ("native_hash_buffer_bytes", "1GB", 10**9),
    ("upload_warm_bytes", "0B", 0),
    ("scrub_bytes_per_round", "256 MB", 256 * 10**6),
    ("max_upload_size", "2TiB", 2 << 40),
    ("upload_bandwidth", "10MiB/s", 10 * MiB),
    ("bucket_quota_bytes", "1.5TB", 15 * 10**11),
    ("gc_grace_seconds", "1h30m", 5400),
    ("upload_expiry_seconds", "14d", 14 * 86400),
    ("upload_lock_seconds", "2500ms", 2.5),
    ("maintenance_interval_seconds", "5m", 300),
    ("orphan_sweep_interval_seconds", "1d", 86400),
    ("presign_max_seconds", "2w", 14 * 86400),
    ("request_head_timeout", "1.5s", 1.5),
    ("send_timeout", "2 min", 120),
]


def test_every_size_and_duration_setting_takes_units():
    """One without would refuse `8MiB` with the message that promises units."""
    says_unit = {
        name
        for name in Settings.model_fields
        if "_bytes" in name or name.endswith(("_size", "_bandwidth", "_seconds", "_timeout"))
    }
    assert says_unit == {name for name, _, _ in WITH_UNITS}


@pytest.mark.parametrize(("key", "text", "value"), WITH_UNITS)
@pytest.mark.parametrize("source", ["file", "variable"])
def test_a_size_or_duration_with_a_unit(monkeypatch, tmp_path, source, key, text, value):
    if source == "file":
        settings = load_settings(config_file=write_toml(tmp_path, f'{key} = "{text}"\n'))
    else:
        monkeypatch.setenv(f"EDGESTORE_{key.upper()}", text)
        settings = load_settings()
    assert getattr(settings, key) == value
    assert type(getattr(settings, key)) is type(Settings.model_fields[key].default)


def test_plain_numbers_keep_their_meaning(monkeypatch, tmp_path):
    """Bytes and seconds, as an int, a float or a string, as before units."""
    path = write_toml(
        tmp_path,
        "max_upload_size = 1048576\nupload_lock_seconds = 2.5\ngc_grace_seconds = 60.0\n"
        'upload_expiry_seconds = "3600"\n',
    )
    monkeypatch.setenv("EDGESTORE_SEND_TIMEOUT", "7.5")
    monkeypatch.setenv("EDGESTORE_BUCKET_QUOTA_BYTES", " 4096 ")
    s = load_settings(config_file=path)
    assert (s.max_upload_size, s.upload_lock_seconds, s.gc_grace_seconds) == (MiB, 2.5, 60)
    assert (s.upload_expiry_seconds, s.send_timeout, s.bucket_quota_bytes) == (3600, 7.5, 4096)


def test_bucket_quotas_take_units(monkeypatch, tmp_path):
    path = write_toml(tmp_path, '[bucket_quotas]\nphotos = "1TiB"\nlogs = 1000\n')
    assert load_settings(config_file=path).bucket_quotas == {"photos": 1 << 40, "logs": 1000}
    monkeypatch.setenv("EDGESTORE_BUCKET_QUOTAS", '{"photos": "500 GB"}')
    assert load_settings().bucket_quotas == {"photos": 500 * 10**9}


@pytest.mark.parametrize(
    ("key", "value", "why", "forms"),
    [
        ("max_upload_size", "8XB", "unknown unit 'XB'", SIZE_FORMS),
        ("chunk_max_size", "1.5.2MiB", "not a size", SIZE_FORMS),
        ("inline_max_bytes", "1.5B", "not a whole number of bytes", SIZE_FORMS),
        (
            "bucket_quota_bytes",
            "8192PiB",
            "above the largest size, 9223372036854775807 bytes (8 EiB)",
            SIZE_FORMS,
        ),
        ("upload_bandwidth", "100Mb/s", "'Mb' is bits: write MB or MiB", SIZE_FORMS),
        ("upload_expiry_seconds", "-1d", "not a duration", WHOLE_DURATION_FORMS),
        ("gc_grace_seconds", "7y", "unknown unit 'y'", WHOLE_DURATION_FORMS),
        ("gc_grace_seconds", "1500ms", "not a whole number of seconds", WHOLE_DURATION_FORMS),
        ("upload_lock_seconds", "7y", "unknown unit 'y'", DURATION_FORMS),
        (
            "send_timeout",
            "1M",
            "'M' is months to some (systemd): write m or min for minutes",
            DURATION_FORMS,
        ),
        (
            "presign_max_seconds",
            "999999w",
            "above the longest duration, 100 years (3155760000 s)",
            WHOLE_DURATION_FORMS,
        ),
    ],
)
@pytest.mark.parametrize("source", ["file", "variable"])
def test_an_invalid_size_or_duration_says_why_and_what_is_accepted(
    monkeypatch, tmp_path, source, key, value, why, forms
):
    var = f"EDGESTORE_{key.upper()}"
    if source == "file":
        path = write_toml(tmp_path, f'{key} = "{value}"\n')
        where = f"in {path}"
    else:
        path = None
        monkeypatch.setenv(var, value)
        where = var
    with pytest.raises(ConfigError) as caught:
        load_settings(config_file=path)
    assert str(caught.value) == (
        f"invalid configuration: {key} ({where}): {why}, got {value!r} ({forms})"
    )


def test_overflow_is_refused_as_a_plain_number_too(monkeypatch):
    """Nothing holds a size past 64 bits (the database, Tus-Max-Size readers) or a duration of
    centuries (clocks, timers): refused at start, not where it first overflows."""
    monkeypatch.setenv("EDGESTORE_MAX_UPLOAD_SIZE", str(2**63))
    monkeypatch.setenv("EDGESTORE_GC_GRACE_SECONDS", str(10**12))
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert "max_upload_size (EDGESTORE_MAX_UPLOAD_SIZE): Input should be less than or" in str(
        caught.value
    )
    assert "gc_grace_seconds (EDGESTORE_GC_GRACE_SECONDS): Input should be less than" in str(
        caught.value
    )


@pytest.mark.parametrize(
    ("key", "text", "bound"),
    [
        ("upload_expiry_seconds", "30s", "greater than or equal to 60"),
        ("upload_lock_seconds", "10m", "less than or equal to 300"),
        ("inline_max_bytes", "2MiB", "less than or equal to 1048576"),
        ("chunk_min_size", "32B", "greater than or equal to 64"),
        ("request_head_timeout", "0s", "greater than 0"),
    ],
)
def test_a_value_with_a_unit_keeps_the_setting_s_bounds(tmp_path, key, text, bound):
    with pytest.raises(ConfigError, match=rf"{key} \(in .*\): Input should be {bound}"):
        load_settings(config_file=write_toml(tmp_path, f'{key} = "{text}"\n'))


def test_zero_keeps_its_meaning_with_a_unit(tmp_path):
    path = write_toml(tmp_path, 'maintenance_interval_seconds = "0s"\nupload_bandwidth = "0 MB"\n')
    s = load_settings(config_file=path)
    assert (s.maintenance_interval_seconds, s.upload_bandwidth) == (0, 0)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("gc_grace_seconds", "1500ms"),
        ("presign_max_seconds", "2.5s"),
        ("maintenance_interval_seconds", "1.5"),  # pydantic's int_parsing
        ("orphan_sweep_interval_seconds", 1.5),  # a TOML float: int_from_float
    ],
)
def test_a_whole_second_setting_s_hint_lists_only_what_it_takes(tmp_path, key, value):
    """`1500ms` was refused as "not a whole number of seconds" with a hint offering `500ms`."""
    toml = f'"{value}"' if isinstance(value, str) else str(value)
    with pytest.raises(ConfigError) as caught:
        load_settings(config_file=write_toml(tmp_path, f"{key} = {toml}\n"))
    assert str(caught.value).endswith(f"({WHOLE_DURATION_FORMS})")
    assert "500ms" not in WHOLE_DURATION_FORMS


def test_a_boolean_is_no_size(tmp_path):
    """TOML's `true` was read as 1 byte."""
    with pytest.raises(ConfigError, match=r"max_upload_size \(in .*\): not a size, got True"):
        load_settings(config_file=write_toml(tmp_path, "max_upload_size = true\n"))
    with pytest.raises(ConfigError, match=r"gc_grace_seconds \(in .*\): not a duration, got"):
        load_settings(config_file=write_toml(tmp_path, "gc_grace_seconds = true\n"))
