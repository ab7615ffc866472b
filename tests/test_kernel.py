"""The kernel's small pure parts: GS1 identifiers, settings, broker URLs, log redaction, lifecycle."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from coldchain.access import Permission, Principal, Role
from coldchain.alert_lifecycle import next_state
from coldchain.domain import AlertState, Device, Lot
from coldchain.errors import ConfigurationError, ConflictError, PermissionDeniedError, ValidationError
from coldchain.gs1 import digital_link, gtin_check_digit, normalize_gtin, validate_lot
from coldchain.log import configure_logging, redact
from coldchain.mqtt_url import BrokerAddress
from coldchain.settings import load_settings


@pytest.mark.parametrize(
    "gtin", ["09506000134352", "9506000134352", "4006381333931", "96385074", "036000291452"]
)
def test_valid_gtins_normalise_to_14_digits(gtin: str) -> None:
    assert normalize_gtin(gtin) == gtin.zfill(14)


@given(st.text(alphabet="0123456789", min_size=13, max_size=13))
def test_exactly_one_check_digit_is_valid(body: str) -> None:
    good = gtin_check_digit(body)
    assert normalize_gtin(body + str(good)) == (body + str(good)).zfill(14)
    for wrong in set(range(10)) - {good}:
        with pytest.raises(ValidationError, match="check digit"):
            normalize_gtin(body + str(wrong))


def test_lots_and_digital_links() -> None:
    assert validate_lot("A123-b/7") == "A123-b/7"
    for bad in ("", "x" * 21, "lot with space", "é"):
        with pytest.raises(ValidationError):
            validate_lot(bad)
    assert digital_link("9506000134352", "A1/2") == "https://id.gs1.org/01/09506000134352/10/A1%2F2"
    with pytest.raises(ValidationError):
        Lot("09506000134352", "A1", stability_budget_s=-1)
    with pytest.raises(ValidationError):
        Device(id="bad/id")


def test_settings_from_environment_and_toml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "coldchain.toml"
    config.write_text('database_url = "postgresql://file/db"\nhttp_port = 9000\n')
    monkeypatch.setenv("HTTP_PORT", "9100")
    monkeypatch.setenv("COLDCHAIN_BOOTSTRAP_TOKEN", "cc_from_env")
    settings = load_settings(config)
    assert settings.database_url == "postgresql://file/db"
    assert settings.http_port == 9100  # the environment wins over the file
    assert settings.bootstrap_token is not None
    assert settings.bootstrap_token.get_secret_value() == "cc_from_env"
    assert "cc_from_env" not in repr(settings)


def test_settings_refuse_what_cannot_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "typo.toml"
    config.write_text("databse_url = 'postgresql://x'\n")
    with pytest.raises(ConfigurationError, match="databse_url"):
        load_settings(config)
    with pytest.raises(ConfigurationError, match="does not exist"):
        load_settings(tmp_path / "missing.toml")
    monkeypatch.setenv("ENVIRONMENT", "production")
    with pytest.raises(ConfigurationError, match="SECRET_KEY"):
        load_settings()
    monkeypatch.setenv("SECRET_KEY", "a-real-secret-of-enough-length-0123456789")
    assert load_settings().environment == "production"


def test_broker_urls_hide_their_password() -> None:
    address = BrokerAddress.parse("mqtts://dev%2F1:s3cret@broker.example:8884")
    assert (address.host, address.port, address.tls, address.username, address.password) == (
        "broker.example",
        8884,
        True,
        "dev/1",
        "s3cret",
    )
    assert "s3cret" not in repr(address) and "s3cret" not in address.display()
    assert BrokerAddress.parse("mqtt://localhost").port == 1883
    with pytest.raises(ConfigurationError):
        BrokerAddress.parse("http://localhost")


def test_logs_never_show_url_passwords(capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        redact("connecting to mqtt://ingest:hunter2@broker:1883")
        == "connecting to mqtt://ingest:***@broker:1883"
    )
    configure_logging("INFO", json_lines=True)
    logging.getLogger("coldchain.test").info(
        "db %s", "postgresql://app:pw123@db/cold", extra={"device": "D1"}
    )
    err = capsys.readouterr().err
    assert "pw123" not in err and '"device":"D1"' in err
    configure_logging("WARNING")


def test_lifecycle_and_roles() -> None:
    assert next_state(AlertState.OPEN, "acknowledge") is AlertState.ACKNOWLEDGED
    with pytest.raises(ConflictError, match="only from resolved"):
        next_state(AlertState.OPEN, "close")
    driver = Principal(org_id=1, organization="default", role=Role.DRIVER, name="cab-12")
    driver.require(Permission.ACKNOWLEDGE)
    with pytest.raises(PermissionDeniedError):
        driver.require(Permission.DISPOSITION)
