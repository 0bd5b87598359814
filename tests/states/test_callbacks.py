"""Callbacks, heartbeats, activities and timeouts in virtual time (engine level)."""

from __future__ import annotations

import asyncio
import json
import random
from typing import Any

from kiln.states.engine import Outcome
from kiln.states.history import History
from tests.states.helpers import (
    ACCOUNT,
    REGION,
    START,
    FakeClock,
    FakeFunctions,
    interpreter,
    make_services,
    run,
)

ACTIVITY = f"arn:aws:states:{REGION}:{ACCOUNT}:activity:work"


def _callback_machine(**task: Any) -> dict[str, Any]:
    catch = task.pop("Catch", None)
    state: dict[str, Any] = {
        "Type": "Task", "Resource": "arn:aws:states:::lambda:invoke.waitForTaskToken",
        "Parameters": {"FunctionName": "notify", "Payload": {"token.$": "$$.Task.Token"}},
        "End": True, **task}
    states: dict[str, Any] = {"Cb": state}
    if catch:
        state["Catch"] = catch
        states["Caught"] = {"Type": "Pass", "End": True}
    return {"StartAt": "Cb", "States": states}


class Rig:
    def __init__(self) -> None:
        self.clock = FakeClock()
        self.functions = FakeFunctions(self.clock)
        self.services = make_services(self.clock, self.functions)
        self.tokens: list[str] = []

        async def notify(payload: Any) -> tuple[Any, str | None]:
            self.tokens.append(payload["token"])
            return None, None

        self.functions.extra["notify"] = notify

    async def token(self) -> str:
        while not self.tokens:
            await asyncio.sleep(0)
        return self.tokens[-1]

    def run(self, definition: dict[str, Any], actor: Any) -> tuple[Outcome, History]:
        async def main() -> tuple[Outcome, History]:
            interp, history = interpreter(definition, None, self.services)
            outcome, _ = await self.clock.drive(asyncio.gather(interp.execute(), actor()))
            return outcome, history

        return asyncio.run(main())


def test_heartbeats_keep_a_callback_alive() -> None:
    rig = Rig()

    async def actor() -> None:
        token = await rig.token()
        for _ in range(3):
            await rig.clock.sleep(8)
            assert rig.services.tokens.heartbeat(token)
        assert rig.services.tokens.succeed(token, {"done": True})

    outcome, _ = rig.run(_callback_machine(HeartbeatSeconds=10), actor)
    assert outcome.output == {"done": True}
    assert rig.clock.now() - START == 24


def test_missed_heartbeat_times_out_and_matches_heartbeat_timeout() -> None:
    rig = Rig()

    async def actor() -> None:
        await rig.token()

    definition = _callback_machine(HeartbeatSeconds=10, Catch=[
        {"ErrorEquals": ["States.HeartbeatTimeout"], "Next": "Caught"}])
    outcome, history = rig.run(definition, actor)
    assert outcome.output == {"Error": "States.Timeout"}
    assert rig.clock.now() - START == 10
    timed_out = next(e for e in history.events if e["type"] == "TaskTimedOut")
    assert timed_out["taskTimedOutEventDetails"]["error"] == "States.Timeout"


def test_overall_timeout_is_not_a_heartbeat_timeout() -> None:
    rig = Rig()

    async def actor() -> None:
        token = await rig.token()
        for _ in range(10):
            await rig.clock.sleep(5)
            rig.services.tokens.heartbeat(token)

    definition = _callback_machine(HeartbeatSeconds=10, TimeoutSeconds=30, Catch=[
        {"ErrorEquals": ["States.HeartbeatTimeout"], "Next": "Caught"}])
    outcome, history = rig.run(definition, actor)
    assert outcome.status == "FAILED"
    assert outcome.error == "States.Timeout"
    assert history.events[-1]["timestamp"] - START == 30


def test_task_failure_via_token() -> None:
    rig = Rig()

    async def actor() -> None:
        token = await rig.token()
        await rig.clock.sleep(3)
        rig.services.tokens.fail(token, "Denied", "by reviewer")

    outcome, history = rig.run(_callback_machine(), actor)
    assert (outcome.error, outcome.cause) == ("Denied", "by reviewer")
    assert history.types()[-2:] == ["TaskFailed", "ExecutionFailed"]


def test_activity_timeout_before_pickup() -> None:
    rig = Rig()

    async def actor() -> None:
        return None

    definition = {"StartAt": "A", "States": {"A": {
        "Type": "Task", "Resource": ACTIVITY, "TimeoutSeconds": 5, "End": True}}}
    outcome, history = rig.run(definition, actor)
    assert outcome.error == "States.Timeout"
    assert history.types() == ["ExecutionStarted", "TaskStateEntered", "ActivityScheduled",
                               "ActivityTimedOut", "ExecutionFailed"]
    assert rig.clock.now() - START == 5


def test_activity_worker_with_heartbeat() -> None:
    rig = Rig()

    async def actor() -> None:
        await rig.clock.sleep(2)
        task = await rig.services.activities.poll(ACTIVITY, "w1", rig.clock, 60)
        assert task is not None
        assert json.loads(task.input) == {"n": 1}
        await rig.clock.sleep(4)
        assert rig.services.tokens.heartbeat(task.token)
        await rig.clock.sleep(4)
        rig.services.tokens.succeed(task.token, "ok")

    definition = {"StartAt": "A", "States": {"A": {
        "Type": "Task", "Resource": ACTIVITY, "HeartbeatSeconds": 5,
        "Parameters": {"n": 1}, "End": True}}}
    outcome, history = rig.run(definition, actor)
    assert outcome.output == "ok"
    assert rig.clock.now() - START == 10
    started = next(e for e in history.events if e["type"] == "ActivityStarted")
    assert started["activityStartedEventDetails"] == {"workerName": "w1"}


def test_empty_activity_poll_returns_none_after_timeout() -> None:
    async def main() -> None:
        clock = FakeClock()
        services = make_services(clock)
        task = await clock.drive(services.activities.poll(ACTIVITY, "w", clock, 60))
        assert task is None
        assert clock.now() - START == 60

    asyncio.run(main())


def test_timed_out_polls_leave_no_pollers_behind() -> None:
    async def main() -> None:
        clock = FakeClock()
        broker = make_services(clock).activities
        for _ in range(3):
            assert await clock.drive(broker.poll(ACTIVITY, "w", clock, 60)) is None
        assert not broker._pollers[ACTIVITY]
        task = broker.schedule(ACTIVITY, "t", "{}")
        assert await broker.poll(ACTIVITY, "w", clock, 60) is task

    asyncio.run(main())


def test_jitter_full_stays_within_backoff() -> None:
    definition = {"StartAt": "T", "States": {"T": {
        "Type": "Task", "Resource": f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:fail",
        "Retry": [{"ErrorEquals": ["States.ALL"], "IntervalSeconds": 4, "MaxAttempts": 5,
                   "BackoffRate": 2, "MaxDelaySeconds": 20, "JitterStrategy": "FULL"}],
        "End": True}}}
    clock = FakeClock()
    outcome, _ = run(definition, {}, clock=clock)
    assert outcome.status == "FAILED"
    caps = [4, 8, 16, 20, 20]
    assert len(clock.sleeps) == 5
    assert all(0 <= s <= cap for s, cap in zip(clock.sleeps, caps, strict=True))
    assert clock.sleeps != [float(c) for c in caps]


def test_retry_delay_function() -> None:
    from kiln.states.engine import retry_delay

    rng = random.Random(1)
    assert [retry_delay(1, 2, n, None, False, rng) for n in range(4)] == [1, 2, 4, 8]
    assert [retry_delay(3, 1.5, n, 5, False, rng) for n in range(3)] == [3, 4.5, 5]
    jittered = [retry_delay(10, 1, 0, None, True, rng) for _ in range(50)]
    assert all(0 <= j <= 10 for j in jittered) and len(set(jittered)) > 1


def test_data_limit_exceeded() -> None:
    definition = {"StartAt": "P", "States": {"P": {
        "Type": "Pass", "Parameters": {"big.$": "States.ArrayRange(1, 1000, 1)",
                                       "pad.$": "$.pad"}, "End": True}}}
    outcome, _ = run(definition, {"pad": "x" * 300_000})
    assert outcome.status == "FAILED"
    assert outcome.error == "States.DataLimitExceeded"
