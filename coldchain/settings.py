"""One Settings object from the environment and an optional TOML file, built in main() and passed down."""

from __future__ import annotations

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

_DEV_SECRET = "development-only-secret-change-me"


def _either(name: str, default: Any) -> Any:
    """Accept both `name` and `COLDCHAIN_NAME`, as docs/contract.md spells COLDCHAIN_BOOTSTRAP_TOKEN."""
    return Field(default=default, validation_alias=AliasChoices(name, f"COLDCHAIN_{name.upper()}"))


class Settings(BaseSettings):
    """Every setting of every service; environment names as in docs/contract.md (DATABASE_URL, ...)."""

    model_config = SettingsConfigDict(
        extra="forbid", case_sensitive=False, populate_by_name=True, env_ignore_empty=True
    )

    environment: Literal["development", "production"] = "development"
    data_dir: Path = Path(".coldchain")
    database_url: str | None = None
    # auto: TimescaleDB when the server can run it, plain otherwise; see storage/migrate.py
    database_engine: Literal["auto", "timescale", "plain"] = "auto"
    mqtt_url: str | None = None
    topic_prefix: str = ""
    organization: str = "default"

    http_host: str = "127.0.0.1"
    http_port: int = 8000
    public_url: str | None = None
    http_max_body_bytes: int = Field(default=1 << 20, ge=1)  # larger request bodies get 413 before parsing
    bootstrap_token: SecretStr | None = _either("bootstrap_token", None)
    secret_key: SecretStr = _either("secret_key", SecretStr(_DEV_SECRET))
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

    @model_validator(mode="after")
    def _refuse_default_secrets(self) -> Settings:
        if self.environment == "production" and self.secret_key.get_secret_value() == _DEV_SECRET:
            raise ValueError("SECRET_KEY must be set in production")
        if self.topic_prefix and not self.topic_prefix.endswith("/"):
            raise ValueError("TOPIC_PREFIX must end with '/'")
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
