"""Turns: requests that arrive together are handled round-robin by client, not in arrival order."""

from __future__ import annotations

import asyncio

from turbok.apiserver.flowcontrol import Turns


async def test_requests_arriving_together_are_served_one_per_client_in_turn() -> None:
    turns = Turns()
    served: list[str] = []

    async def request(flow: str, n: int) -> None:
        await turns.turn(flow)
        served.append(f"{flow}{n}")

    # A greedy client's five requests arrive first, then two other clients' one each.
    tasks = [asyncio.create_task(request("greedy", i)) for i in range(5)]
    tasks += [asyncio.create_task(request("polite", 0)), asyncio.create_task(request("other", 0))]
    await asyncio.gather(*tasks)
    assert served == ["greedy0", "polite0", "other0", "greedy1", "greedy2", "greedy3", "greedy4"]


async def test_a_request_cancelled_while_waiting_gives_up_its_turn() -> None:
    turns = Turns()
    served: list[str] = []

    async def request(flow: str) -> None:
        await turns.turn(flow)
        served.append(flow)

    gone = asyncio.create_task(request("gone"))
    kept = asyncio.create_task(request("kept"))
    await asyncio.sleep(0)  # both wait for their turn
    gone.cancel()
    await asyncio.gather(gone, kept, return_exceptions=True)
    assert served == ["kept"] and gone.cancelled()
    later = asyncio.create_task(request("later"))  # the turns go on
    await later
    assert served == ["kept", "later"]
