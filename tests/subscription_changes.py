"""A stream that registers while the relay is part way through unsubscribing its instance's
left runs: the relay yields to the loop between two commands, and the stream may find its run's
channel, about to be unsubscribed, still confirmed (``RedisBus._still_leaving``)."""

from __future__ import annotations

from typing import Any, List

import redis.asyncio.client

from sentri.bus import messages as wire

from .services import wait_until

UNSUBSCRIBES = ("UNSUBSCRIBE", "SUNSUBSCRIBE")


def wanted_again_at_the_first_unsubscribe(bus: Any, monkeypatch: Any, run_id: str) -> List[List[str]]:
    """Every channel list the relay unsubscribes from here on, in order. As the first command
    goes out, ``run_id`` is wanted again (a stream registers) while its channel is confirmed."""
    unsubscribed: List[List[str]] = []
    real_execute = redis.asyncio.client.PubSub.execute_command

    async def execute(pubsub: Any, *args: Any) -> Any:
        if args and args[0] in UNSUBSCRIBES:
            unsubscribed.append([channel if isinstance(channel, str) else channel.decode() for channel in args[1:]])
            if len(unsubscribed) == 1:
                bus.subscribe(run_id)
                # What that stream is told: confirmed, so it goes live without waiting or a repair.
                assert wire.run_channel(run_id) in bus._confirmed
        return await real_execute(pubsub, *args)

    monkeypatch.setattr(redis.asyncio.client.PubSub, "execute_command", execute)
    return unsubscribed


async def all_leave_and_the_last_comes_back(bus: Any, monkeypatch: Any, runs: List[str]) -> List[List[str]]:
    """``runs`` subscribed and confirmed; then all leave, and the last is wanted again as the
    first unsubscribe goes out. Returns the channels unsubscribed, once the relay is done."""
    for run_id in runs:
        bus.subscribe(run_id)
    for run_id in runs:
        assert await bus.wait_subscribed(run_id, 5.0) is True
    unsubscribed = wanted_again_at_the_first_unsubscribe(bus, monkeypatch, runs[-1])
    for run_id in runs:
        bus.unsubscribe(run_id)
    await wait_until(lambda: bus._sent == {wire.run_channel(runs[-1])} and not bus._replies_due,
                     what="the changes made")
    return unsubscribed
