"""The event hub alone: the bounded queue, where a gap goes, the log as the source."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest

from aiollmux import events
from aiollmux.events import RECENT_LIMIT, TIMELINE_EVENTS, EventHub, Frame, Reader, events_from_log


def _event(n: int) -> Frame:
    return Frame.of({"event": "test", "ts": "2026-01-01T00:00:00.000+00:00", "n": n})


def _numbers(reader: Reader) -> list[Any]:
    taken: list[Any] = []
    while (item := reader.take()) is not None:
        if isinstance(item, Frame):
            taken.append(json.loads(item.data.decode().split("data: ", 1)[1])["n"])
        else:
            taken.append(f"gap {item.count}")
    return taken


def test_a_full_queue_drops_and_marks_the_gap_where_it_was() -> None:
    reader = Reader(limit=3)
    for n in range(5):
        reader.offer(_event(n))
    assert (reader.queued, reader.dropped) == (3, 2)
    assert reader.take() is not None  # the writer took one: room again
    reader.offer(_event(5))
    assert _numbers(reader) == [1, 2, "gap 2", 5]


def test_a_gap_is_reported_once_the_queue_drains() -> None:
    reader = Reader(limit=2)
    for n in range(4):
        reader.offer(_event(n))
    assert _numbers(reader) == [0, 1, "gap 2"]
    assert reader.dropped == 0


def test_frames_name_the_event_on_the_sse_line() -> None:
    frame = _event(7)
    assert frame.name == "test"
    assert frame.data.startswith(b"event: test\ndata: {")
    assert frame.data.endswith(b"\n\n")


async def test_records_logged_from_another_thread_reach_the_readers() -> None:
    hub = EventHub(lambda: {"state": "idle"})
    reader = hub.subscribe()
    logger = logging.getLogger("aiollmux.tests.thread")
    with events_from_log(hub):
        await asyncio.to_thread(logger.info, "from a thread", extra={"event": "threaded"})
        logger.debug("below info: not an event", extra={"event": "debugged"})
        logger.info("no event field: not an event")
        await asyncio.wait_for(reader.wait(), 5)
    item = reader.take()
    assert isinstance(item, Frame)
    assert item.name == "threaded"
    document = json.loads(item.data.decode().split("data: ", 1)[1])
    assert document["message"] == "from a thread"
    assert document["level"] == "info"
    assert reader.take() is None


async def test_the_logger_level_is_restored_after_the_app() -> None:
    logger = logging.getLogger("aiollmux")
    before = logger.level
    with events_from_log(EventHub(dict)):
        assert logger.getEffectiveLevel() <= logging.INFO
    assert logger.level == before


async def test_the_snapshot_keeps_recent_events_and_last_wakes() -> None:
    hub = EventHub(lambda: {"state": "idle"})
    ts = "2026-01-01T00:00:00.000+00:00"
    hub.publish({"event": "hook_failed", "ts": ts, "hook": "wake", "model": "a", "duration": 1.5})
    hub.publish({"event": "hook_completed", "ts": ts, "hook": "sleep", "model": "a"})
    hub.publish({"event": "requests", "ts": ts, "model": "a", "count": 1, "by_status": {}})
    snapshot = hub.snapshot()
    assert snapshot["status"] == {"state": "idle"}
    assert [e["event"] for e in snapshot["recent"]] == ["hook_failed", "hook_completed"]
    assert snapshot["last_wake"] == {"a": {"seconds": 1.5, "ok": False, "ts": ts}}


async def test_requests_are_not_counted_without_a_reader() -> None:
    hub = EventHub(dict)
    hub.request_finished("a", "200")
    reader = hub.subscribe()
    hub.request_finished("a", "200")
    hub.request_finished("a", "503")
    await asyncio.wait_for(reader.wait(), 5)
    item = reader.take()
    assert isinstance(item, Frame)
    document = json.loads(item.data.decode().split("data: ", 1)[1])
    assert (document["count"], document["by_status"]) == (2, {"200": 1, "503": 1})
    await hub.close()
    assert reader.closed


async def test_a_failing_event_never_reaches_the_code_that_logged(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    hub = EventHub(dict)

    def broken(document: dict[str, Any]) -> None:
        raise RuntimeError("a bug in the hub")

    monkeypatch.setattr(hub, "publish", broken)
    monkeypatch.setattr(logging, "raiseExceptions", False)  # handleError stays quiet
    with events_from_log(hub):
        logging.getLogger("aiollmux.tests").info("still fine", extra={"event": "test"})


def _document(item: object) -> dict[str, Any]:
    assert isinstance(item, Frame)
    document: dict[str, Any] = json.loads(item.data.decode().split("data: ", 1)[1])
    return document


async def test_per_request_noise_cannot_push_the_timeline_out_of_the_snapshot() -> None:
    hub = EventHub(dict)
    ts = "2026-01-01T00:00:00.000+00:00"
    hub.publish({"event": "switch_started", "ts": ts, "from": "idle", "to": "a"})
    hub.publish({"event": "hook_completed", "ts": ts, "hook": "wake", "model": "a"})
    hub.publish({"event": "model_activated", "ts": ts, "from": "idle", "to": "a"})
    for n in range(RECENT_LIMIT + 10):
        hub.publish({"event": "backend_error", "ts": ts, "model": "a"})
        hub.publish({"event": "health_changed", "ts": ts, "model": "a", "n": n})
    recent = hub.snapshot()["recent"]
    timeline = [e["event"] for e in recent if e["event"] in TIMELINE_EVENTS]
    assert timeline == ["switch_started", "hook_completed", "model_activated"]
    assert recent[:3] == [e for e in recent if e["event"] in TIMELINE_EVENTS]  # in order
    assert "backend_error" not in {e["event"] for e in recent}
    others = [e for e in recent if e["event"] == "health_changed"]
    assert [e["n"] for e in others] == list(range(10, RECENT_LIMIT + 10))


async def test_per_request_events_are_folded_into_the_summary(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(events, "SUMMARY_EVERY_SECS", 0.01)
    hub = EventHub(dict)
    reader = hub.subscribe()
    ts = "2026-01-01T00:00:00.000+00:00"
    for _ in range(210):
        hub.publish({"event": "backend_error", "ts": ts, "model": "a"})
        hub.request_finished("a", "502")
    hub.publish({"event": "request_timeout", "ts": ts, "model": "b", "waited": 1.0})
    hub.publish({"event": "client_disconnected", "ts": ts, "model": "b"})
    await asyncio.wait_for(reader.wait(), 5)
    summaries = [_document(reader.take()), _document(reader.take())]
    assert reader.take() is None  # nothing one per request
    assert summaries == [
        {
            "event": "requests",
            "ts": summaries[0]["ts"],
            "model": "a",
            "count": 210,
            "by_status": {"502": 210},
            "errors": {"backend_error": 210},
        },
        {
            "event": "requests",
            "ts": summaries[0]["ts"],
            "model": "b",
            "count": 0,
            "by_status": {},
            "errors": {"client_disconnected": 1, "request_timeout": 1},
        },
    ]
    # A new page's log shows that errors happened, as summaries.
    assert [e["model"] for e in hub.snapshot()["recent"]] == ["a", "b"]
    await hub.close()


async def test_a_reload_ends_the_streams_the_new_rules_do_not_admit() -> None:
    allowed = {"new"}
    hub = EventHub(dict, admits=lambda credentials: credentials in allowed)
    old, new = hub.subscribe("old"), hub.subscribe("new")
    ts = "2026-01-01T00:00:00.000+00:00"
    hub.publish({"event": "test", "ts": ts})  # queued for both, not sent yet
    hub.publish({"event": "config_reloaded", "ts": ts, "generation": 2})
    assert old.closed
    assert old.take() is None  # nothing more, not even what was queued
    assert not new.closed
    assert [_document(new.take())["event"] for _ in range(3)] == [
        "test",
        "config_reloaded",
        "snapshot",
    ]


async def test_two_apps_share_the_logger_level_until_the_last_stops() -> None:
    logger = logging.getLogger("aiollmux")
    before = logger.level
    logger.setLevel(logging.WARNING)
    try:
        first, second = EventHub(dict), EventHub(dict)
        reader = second.subscribe()
        first_app, second_app = events_from_log(first), events_from_log(second)
        first_app.__enter__()
        second_app.__enter__()
        first_app.__exit__(None, None, None)  # the first to start stops first
        # The other app stopped: this one's events still flow.
        assert logger.getEffectiveLevel() <= logging.INFO
        logger.info("still an event", extra={"event": "test_still"})
        second_app.__exit__(None, None, None)
        assert logger.level == logging.WARNING  # the last to stop restores the level
        assert _document(reader.take())["event"] == "test_still"
    finally:
        logger.setLevel(before)
