"""/metrics: Prometheus text behind a bearer token, counting a scripted scenario exactly."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from sentri import sse

from .logsweep import remember_secret
from .services import wait_until
from .sseclient import open_request

METRICS_TOKEN = remember_secret("metrics-token-for-tests-5b1f")


@pytest.fixture
def settings(settings):
    return settings.replace(metrics_token=METRICS_TOKEN)


async def scrape(port):
    response = await open_request(port, "/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    assert response.status == 200
    assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    text = (await response.read_to_end()).decode("utf-8")
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples, name, **labels):
    return samples[(name, tuple(sorted(labels.items())))]


@pytest.mark.gen_test
async def test_metrics_without_the_bearer_token_is_401(port):
    response = await open_request(port, "/metrics")
    assert response.status == 401
    assert response.headers["www-authenticate"] == 'Bearer realm="metrics"'
    assert await response.read_json() == {"error": "Authentication required."}


@pytest.mark.gen_test
async def test_metrics_with_a_wrong_token_is_401(port):
    response = await open_request(port, "/metrics", headers={"Authorization": "Bearer not-the-token"})
    assert response.status == 401
    assert await response.read_json() == {"error": "Authentication required."}


@pytest.mark.gen_test
async def test_metrics_is_404_when_no_token_is_configured(port, context):
    context.settings = context.settings.replace(metrics_token="")
    response = await open_request(port, "/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    assert response.status == 404
    assert await response.read_json() == {"error": "not found"}


@pytest.mark.gen_test
async def test_metrics_count_a_scripted_scenario_exactly(port, world, rows, context):
    finished = rows.run(world.project, id="RUN-2", status="completed", passed=1, failed=0, total=1)
    first = await open_request(port, world.events_path())
    second = await open_request(port, world.events_path())
    done_on_connect = await open_request(port, world.events_path(run_id=finished["id"]))
    for response in (first, second):
        assert (await response.next_event())["type"] == "snapshot"
    await done_on_connect.read_to_end()

    samples = await scrape(port)
    assert value(samples, "sentri_streams_open") == 2
    assert value(samples, "sentri_streams_opened_total") == 3
    assert value(samples, "sentri_streams_closed_total", reason="done") == 1
    # Database calls, not connects: the second connect to RUN-1 reused the first one's read.
    assert value(samples, "sentri_db_lookup_seconds_count") == 2

    context.hub.emit("RUN-1", "log", {"message": "[2026-01-01T00:00:00.000Z] one"})
    log_frame = sse.event_frame({"type": "log", "message": "[2026-01-01T00:00:00.000Z] one"})
    received_logs = [await response.next_frame() for response in (first, second)]
    assert all(frame.endswith(log_frame) for frame in received_logs)  # after the event's id line
    second.close()
    await wait_until(lambda: context.hub.listener_count("RUN-1") == 1, what="the closed client released")
    context.hub.emit("RUN-1", "done", {"status": "completed"})
    done_frame = sse.event_frame({"type": "done", "status": "completed"})
    received_done = await first.next_frame()
    assert received_done.endswith(done_frame)
    samples = await scrape(port)
    assert value(samples, "sentri_streams_open") == 0
    assert value(samples, "sentri_streams_opened_total") == 3
    for reason, expected in {"done": 2, "client_gone": 1, "drained": 0, "too_slow": 0, "too_old": 0,
                             "revoked": 0}.items():
        assert value(samples, "sentri_streams_closed_total", reason=reason) == expected, reason
    assert value(samples, "sentri_events_emitted_total") == 2
    assert value(samples, "sentri_events_delivered_total") == 3
    assert value(samples, "sentri_stream_bytes_written_total") == sum(map(len, received_logs)) + len(received_done)
    assert value(samples, "sentri_heartbeats_total") == 0
    assert value(samples, "sentri_relay_connected") == 1
    assert value(samples, "sentri_relay_reconnects_total") == 0


@pytest.mark.gen_test
async def test_heartbeats_counted_equal_the_heartbeats_the_client_received(port, world, context):
    context.hub.stop()
    context.hub.heartbeat_interval_s = 0.05
    context.hub.start()
    response = await open_request(port, world.events_path())
    assert (await response.next_event())["type"] == "snapshot"
    for _ in range(3):
        assert await response.next_frame() == sse.HEARTBEAT
    context.hub.stop()  # no heartbeat after this; every one sent is already in the socket
    context.hub.emit("RUN-1", "done", {"status": "completed"})
    frames = [await response.next_frame()]
    while frames[-1] == sse.HEARTBEAT:
        frames.append(await response.next_frame())
    assert frames[-1].endswith(b'data: {"type":"done","status":"completed"}\n\n')
    received = 3 + len(frames) - 1
    samples = await scrape(port)
    assert value(samples, "sentri_heartbeats_total") == received
    assert value(samples, "sentri_stream_bytes_written_total") == received * len(sse.HEARTBEAT) + len(frames[-1])


@pytest.mark.gen_test
async def test_each_resume_is_counted_by_how_it_was_answered_and_a_plain_connect_is_not(port, world, context):
    seen = context.hub.emit("RUN-1", "llm_token", {"token": "1"})
    context.hub.emit("RUN-1", "llm_token", {"token": "2"})
    plain = await open_request(port, world.events_path())
    replayed = await open_request(port, world.events_path(), headers={"Last-Event-ID": seen})
    forged = await open_request(port, world.events_path(), headers={"Last-Event-ID": "99999999999999-1"})
    assert (replayed.headers["sentri-resume"], forged.headers["sentri-resume"]) == ("replay", "snapshot")
    done = context.hub.emit("RUN-1", "done", {"status": "completed"})
    finished = await open_request(port, world.events_path(), headers={"Last-Event-ID": done})
    assert finished.status == 204
    samples = await scrape(port)
    counted = {key[1][0][1]: count for key, count in samples.items() if key[0] == "sentri_resume_outcomes_total"}
    assert counted == {"replayed": 1, "snapshot": 1, "done": 1}
    for response in (plain, replayed, forged):
        response.close()
