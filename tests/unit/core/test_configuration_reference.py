"""docs/configuration.md is generated from the settings and must not go stale."""

from sa01.core.configuration_reference import REFERENCE_PATH, render_reference
from sa01.core.settings import Settings


def test_configuration_reference_matches_the_settings() -> None:
    assert REFERENCE_PATH.read_text() == render_reference(), (
        "docs/configuration.md is stale: run `python -m sa01.core.configuration_reference`"
    )


def test_configuration_reference_lists_every_setting_and_the_seed_variables() -> None:
    text = render_reference()
    for name in Settings.model_fields:
        field = Settings.model_fields[name]
        alias = field.validation_alias if isinstance(field.validation_alias, str) else None
        assert f"`{alias or 'SA01_' + name.upper()}`" in text
    for seed_variable in (
        "SA01_KAFKA_BOOTSTRAP_SERVERS",
        "SA01_DATABASE_URL",
        "SA01_REDIS_URL",
        "SA01_SOMABRAIN_URL",
        "SA01_TEMPORAL_HOST",
    ):
        assert seed_variable in text
