"""``dlq`` filters: durations, --older-than, and purge refusing to delete everything."""

from __future__ import annotations

import pytest

from sa01.core.errors import ConfigurationError
from sa01.core.settings import Settings
from sa01.outbox.dead_letter_store import DeadLetterFilter, _where
from streams.console import Console
from streams.dlq import build_filter, parse_duration, parse_since, run_dlq

SETTINGS = Settings(topic_prefix="p.")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90", 90), ("45s", 45), ("30m", 1800), ("2h", 7200), ("30d", 2_592_000), ("2w", 1_209_600)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text, "--older-than") == seconds
    assert parse_since(text) == seconds


def test_a_wrong_duration_names_its_option() -> None:
    with pytest.raises(ConfigurationError, match="--older-than '30x'"):
        parse_duration("30x", "--older-than")
    with pytest.raises(ConfigurationError, match="--since 'soon'"):
        parse_since("soon")


def test_older_than_selects_rows_created_before_now_minus_the_duration() -> None:
    where, params = _where(DeadLetterFilter(older_than_seconds=86400.0, include_replayed=True))
    assert where.as_string(None) == "created_at < now() - %s * interval '1 second'"
    assert params == [86400.0]


def test_since_keeps_meaning_newer_than_and_both_select_the_span_between() -> None:
    selection = build_filter(SETTINGS, "list", since="36d", older_than="1d")
    where, params = _where(selection)
    assert where.as_string(None) == (
        "created_at >= now() - %s * interval '1 second'"
        " AND created_at < now() - %s * interval '1 second'"
    )
    assert params == [36 * 86400.0, 86400.0]


def test_a_span_that_cannot_hold_anything_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="selects nothing"):
        build_filter(SETTINGS, "purge", since="1d", older_than="30d")


def test_the_topic_takes_the_prefix_and_purge_includes_replayed_letters() -> None:
    selection = build_filter(SETTINGS, "purge", topic="conversation.inbound")
    assert selection.topic == "p.conversation.inbound"
    assert selection.include_replayed
    assert build_filter(SETTINGS, "replay", topic="p.x").topic == "p.x"
    assert not build_filter(SETTINGS, "replay").include_replayed


@pytest.mark.parametrize(
    "selection",
    [
        DeadLetterFilter(ids=(1,)),
        DeadLetterFilter(topic="t"),
        DeadLetterFilter(error="Decode"),
        DeadLetterFilter(since_seconds=60),
        DeadLetterFilter(older_than_seconds=60),
    ],
)
def test_any_filter_narrows_a_selection(selection: DeadLetterFilter) -> None:
    assert selection.narrowed


async def test_purge_with_no_filter_is_refused_before_touching_the_database() -> None:
    nowhere = Settings(database_url="postgresql://nobody@127.0.0.1:1/none")
    selection = DeadLetterFilter(include_replayed=True)
    assert not selection.narrowed
    for dry_run in (False, True):
        with pytest.raises(ConfigurationError, match="add --all"):
            await run_dlq(
                nowhere,
                "purge",
                selection,
                limit=100,
                dry_run=dry_run,
                as_json=False,
                console=Console(colour=False),
            )
