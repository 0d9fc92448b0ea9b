import pytest

from service.settings import Secret, Settings
from storage_adapters import (
    ConfigurationError,
    MissingExtra,
    StoreURL,
    UnknownScheme,
    adapter_for,
    registry,
)


def test_settings_from_env() -> None:
    settings = Settings.from_env(
        {
            "AOS_PORT": "9000",
            "AOS_STORAGE_URL": "memory://",
            "AOS_ADMIN_TOKEN": "t0ken",
            "AOS_ACCESS_LOG": "false",
            "AOS_DEFAULT_RETENTION": "P1D",
            "AOS_SSE_HEARTBEAT": "PT5S",
        },
        host="0.0.0.0",
    )
    assert (settings.port, settings.storage_url, settings.host) == (9000, "memory://", "0.0.0.0")
    assert settings.access_log is False
    assert settings.default_retention == 86400 and settings.sse_heartbeat == 5.0
    assert settings.admin_token == "t0ken" and "t0ken" not in repr(settings)


def test_defaults_are_the_embedded_store_and_a_week_of_retention() -> None:
    settings = Settings.from_env({})
    assert settings.storage_url == "sqlite:///aos.db"
    assert settings.default_retention == 7 * 86400
    assert Settings.from_env({"AOS_DEFAULT_RETENTION": "none"}).default_retention is None


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("AOS_PORT", "http"),
        ("AOS_ACCESS_LOG", "maybe"),
        ("AOS_MAX_CHUNK_BYTES", "0"),
        ("AOS_MAX_CHUNK_BYTES", "65MiB"),
        ("AOS_UPLOAD_CHUNK_BYTES", "1PiB"),
        ("AOS_COMPRESSION", "gzip"),
        ("AOS_COMPRESSION_LEVEL", "22"),
        ("AOS_DEFAULT_RETENTION", "P1M"),
    ],
)
def test_bad_settings_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigurationError, match=name):
        Settings.from_env({name: value})


def test_sizes_take_binary_suffixes() -> None:
    settings = Settings.from_env(
        {
            "AOS_UPLOAD_CHUNK_BYTES": "4MiB",
            "AOS_MAX_VERSION_BYTES": "2 TiB",
            "AOS_READ_BATCH_BYTES": "512KiB",
        }
    )
    assert settings.upload_chunk_bytes == 4 << 20
    assert settings.max_version_bytes == 2 << 40
    assert settings.read_batch_bytes == 512 << 10
    assert settings.largest_chunk == 4 << 20
    assert Settings.from_env({"AOS_COMPRESSION": "none"}).compression is False


def test_secret_hides_itself() -> None:
    assert repr(Secret("x")) == "Secret('**********')"


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("sqlite:///aos.db", "aos.db"),
        ("sqlite:///var/aos.db", "var/aos.db"),
        ("sqlite:////var/lib/aos.db", "/var/lib/aos.db"),
    ],
)
def test_sqlite_paths(url: str, path: str) -> None:
    assert StoreURL.parse(url).path == path


def test_store_url_parts_and_redaction() -> None:
    url = StoreURL.parse("postgresql://u:p%40ss@db.local:5433/aos?pool=5")
    assert (url.scheme, url.host, url.port, url.username, url.password, url.path) == (
        "postgresql",
        "db.local",
        5433,
        "u",
        "p@ss",
        "/aos",
    )
    assert url.options == {"pool": "5"}
    assert "p%40ss" not in url.redacted()


def test_unknown_scheme_lists_the_supported_ones() -> None:
    with pytest.raises(UnknownScheme, match=r"memory://.*sqlite://"):
        adapter_for("redis://localhost")
    with pytest.raises(ConfigurationError, match="no scheme"):
        adapter_for("aos.db")


def test_missing_driver_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    entry = registry._Entry(
        "storage_adapters.memory:MemoryAdapter", "postgresql", "surely_not_installed_driver"
    )
    monkeypatch.setitem(registry.ADAPTERS, "fake", entry)
    with pytest.raises(MissingExtra, match=r"async-output-service\[postgresql\]"):
        adapter_for("fake://x")


@pytest.mark.parametrize(
    "url",
    [
        "sqlite://",
        "sqlite:///:memory:",
        "sqlite:///a.db?synchronous=sometimes",
        "sqlite:///a.db?readers=0",
        "sqlite:///a.db?colour=blue",
    ],
)
def test_bad_sqlite_urls(url: str) -> None:
    with pytest.raises(ConfigurationError):
        adapter_for(url)


def test_a_store_that_writes_smaller_chunks_refuses_larger_chunk_settings() -> None:
    from service.app import create_app
    from storage_adapters import ConfigurationError, adapter_for

    store = adapter_for("dynamodb://127.0.0.1:1/aos?region=us-east-1")
    assert store.max_chunk_bytes == 3 * 1024 * 1024
    too_big = Settings.from_env({"AOS_UPLOAD_CHUNK_BYTES": "4MiB"})
    with pytest.raises(ConfigurationError, match="AOS_MAX_CHUNK_BYTES and AOS_UPLOAD_CHUNK_BYTES"):
        create_app(too_big, store=store)
    create_app(Settings.from_env({"AOS_UPLOAD_CHUNK_BYTES": "3MiB"}), store=store)
