"""One Settings object from the environment and an optional TOML file, built in main() and passed down."""

from __future__ import annotations

import secrets
from functools import cache
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, Field, SecretStr, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from coldchain.errors import ConfigurationError

MIN_SECRET_KEY_BYTES = 32


@cache
def _development_secret() -> str:
    """A random key per process for explicit development mode: never a public default."""
    return secrets.token_urlsafe(32)


def _either(name: str, default: Any) -> Any:
    """Accept both `name` and `COLDCHAIN_NAME`, as docs/contract.md spells COLDCHAIN_BOOTSTRAP_TOKEN."""
    return Field(default=default, validation_alias=AliasChoices(name, f"COLDCHAIN_{name.upper()}"))


class Settings(BaseSettings):
    """Every setting of every service; environment names as in docs/contract.md (DATABASE_URL, ...)."""

    model_config = SettingsConfigDict(
        extra="forbid", case_sensitive=False, populate_by_name=True, env_ignore_empty=True
    )

    # Production unless ENVIRONMENT=development is set explicitly: only then may SECRET_KEY be missing.
    environment: Literal["development", "production"] = "production"
    data_dir: Path = Path(".coldchain")
    database_url: str | None = None
    # auto: TimescaleDB when the server can run it, plain otherwise; see storage/migrate.py
    database_engine: Literal["auto", "timescale", "plain"] = "auto"
    mqtt_url: str | None = None
    # the broker's account-changing login (Mosquitto dynamic security), for device credentials;
    # `coldchain up` fills it in for its own broker
    mqtt_control_url: SecretStr | None = None
    topic_prefix: str = ""
    organization: str = "default"

    http_host: str = "127.0.0.1"
    http_port: int = 8000
    public_url: str | None = None
    http_max_body_bytes: int = Field(default=1 << 20, ge=1)  # larger request bodies get 413 before parsing
    bootstrap_token: SecretStr | None = _either("bootstrap_token", None)
    secret_key: SecretStr = _either("secret_key", SecretStr(""))
    log_level: str = "INFO"
    log_json: bool = False

    # ingest
    ingest_group_max_batches: int = 2000
    ingest_group_max_wait_ms: int = 50
    ingest_max_payload_bytes: int = 1 << 20
    ingest_min_celsius: float = -100.0
    ingest_max_celsius: float = 100.0
    ingest_max_future_s: int = 300
    ingest_max_past_days: int = 400
    ingest_metrics_port: int | None = None

    # the API's config publisher: how often it looks for configs the broker does not hold yet
    # (a NOTIFY wakes it at once; the poll is the safety net)
    config_publish_poll_s: float = Field(default=5.0, gt=0, le=3600)

    # rules and notifications
    rules_no_data_check_s: int = 60
    twilio_account_sid: str | None = None
    twilio_auth_token: SecretStr | None = None
    twilio_from: str | None = None
    twilio_messaging_service_sid: str | None = None
    twilio_api_base_url: str | None = None
    smtp_host: str | None = None
    smtp_port: int = 587
    smtp_user: str | None = None
    smtp_password: SecretStr | None = None
    smtp_from: str | None = None
    smtp_security: Literal["starttls", "tls", "none"] = "starttls"

    # identity: people, sessions, lockout (21 CFR Part 11 §11.300)
    access_token_ttl_s: int = Field(default=900, ge=30, le=3600)
    refresh_token_ttl_s: int = Field(default=14 * 86400, ge=300)
    lockout_failures: int = Field(default=5, ge=1)
    lockout_window_s: int = Field(default=900, ge=1)
    lockout_duration_s: int = Field(default=900, ge=1)
    password_min_length: int = Field(default=12, ge=8)
    argon2_memory_kib: int = Field(default=19_456, ge=1024)
    argon2_passes: int = Field(default=2, ge=1)
    argon2_lanes: int = Field(default=1, ge=1)
    # how often `coldchain up` signs the audit trail's heads with the platform key
    audit_checkpoint_interval_s: float = Field(default=600.0, gt=0)
    # the OpenAPI pages (/docs, /openapi.json), as the contract has them; DOCS_ENABLED=false hides them
    docs_enabled: bool = True
    # webhooks may only go to public https endpoints; tests on loopback turn this on
    webhook_allow_private: bool = False

    @model_validator(mode="after")
    def _refuse_default_secrets(self) -> Settings:
        key = self.secret_key.get_secret_value()
        if key and len(key.encode()) < MIN_SECRET_KEY_BYTES:
            raise ValueError(f"SECRET_KEY must hold at least {MIN_SECRET_KEY_BYTES} random bytes")
        if not key and self.environment == "development":
            self.secret_key = SecretStr(_development_secret())
        elif not key and "environment" in self.model_fields_set:
            # ENVIRONMENT=production said out loud: refuse at once. Left unset, tools that sign
            # nothing still run, and every service refuses at its start (require_secret_key).
            raise ValueError("SECRET_KEY must be set in production")
        if self.topic_prefix and not self.topic_prefix.endswith("/"):
            raise ValueError("TOPIC_PREFIX must end with '/'")
        return self

    @property
    def secret_key_generated(self) -> bool:
        """True when SECRET_KEY was not given (development mode made one for this process only)."""
        key = self.secret_key.get_secret_value()
        return not key or key == _development_secret()

    def require_secret_key(self) -> str:
        """The key that signs ack links and access tokens; a service without one refuses to start."""
        key = self.secret_key.get_secret_value()
        if not key:
            raise ConfigurationError(
                "SECRET_KEY is not set: give one of at least 32 random bytes"
                " (`coldchain up` makes one in its data folder), or set ENVIRONMENT=development"
            )
        return key

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        toml_file = settings_cls.model_config.get("toml_file")
        if toml_file:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml_file))
        return tuple(sources)


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Build the settings: explicit overrides, then the environment, then the TOML file."""
    cls: type[Settings] = Settings
    if config_file is not None:
        if not config_file.is_file():
            raise ConfigurationError(f"config file {config_file} does not exist")
        cls = type(
            "Settings", (Settings,), {"model_config": {**Settings.model_config, "toml_file": config_file}}
        )
    try:
        return cls(**{k: v for k, v in overrides.items() if v is not None})
    except ValueError as exc:
        raise ConfigurationError(str(exc)) from None
