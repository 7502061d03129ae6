"""A watch that was healthy and then broke starts its backoff afresh (found by the cluster fault suite: cuts
minutes apart grew the backoff towards its 30 s cap, leaving nmi blind for longer after each one)."""

from __future__ import annotations

from nmi.pod_index import PodIndex
from nmi.kube import Informer
from nmi.kube.watches import pods_target
from nmi.kube.watchstream import backoff_delay

from tests.kube.conftest import NODE, RecordingSleep, eventually, running


class SteppedClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_cuts_of_healthy_watches_do_not_add_up_but_failures_in_a_row_do(apiserver, api_client):
    clock, sleep = SteppedClock(), RecordingSleep()
    informer = Informer(pods_target(api_client, NODE), PodIndex(), watch_timeout_seconds=30, clock=clock,
                        sleep=sleep, min_watch_seconds=1.0, backoff=lambda n: backoff_delay(n, rand=lambda: 1.0))
    async with running(informer):
        for cut in range(1, 4):  # three healthy watches, each cut after a while
            await eventually(lambda: apiserver.open_watches("pods") == 1)
            clock.now += 60
            apiserver.cut_watches()
            await eventually(lambda: len(sleep.delays) == cut)
        assert sleep.delays == [0.5, 0.5, 0.5]
        await eventually(lambda: apiserver.open_watches("pods") == 1)
        for _ in range(3):  # now cut at once, again and again: that is a broken path, back off more each time
            count = len(sleep.delays)
            apiserver.cut_watches()
            await eventually(lambda: len(sleep.delays) == count + 1)
            await eventually(lambda: apiserver.open_watches("pods") == 1)
        assert sleep.delays[3:] == [1.0, 2.0, 4.0]  # in a row with the last cut above
