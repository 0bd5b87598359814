"""Running executions: start, stop, resume after restart, callbacks and activities.

Standard executions persist through ``StatesStore`` (events + checkpoint before each side
effect); Express executions run in memory only.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kiln.states.definition import parse_definition
from kiln.states.engine import (
    ExecutionInfo,
    Frame,
    Interpreter,
    Outcome,
    Services,
    error_matches,
    iso,
)
from kiln.states.history import Event, FrameWrites, History
from kiln.states.maprun import MapRun, MapRuns
from kiln.states.model import Machine
from kiln.states.payload import dumps
from kiln.states.store import StatesStore
from kiln.states.types import JSON, Clock, FunctionInvoker, StatesFailure

TERMINAL_EVENTS = {
    "ExecutionSucceeded": "SUCCEEDED",
    "ExecutionFailed": "FAILED",
    "ExecutionTimedOut": "TIMED_OUT",
    "ExecutionAborted": "ABORTED",
}


@dataclass(eq=False)
class Running:
    interpreter: Interpreter
    done: asyncio.Future[Outcome]
    task: asyncio.Task[None] | None = None
    stopping: bool = False

    @property
    def arn(self) -> str:
        return self.interpreter.info.arn

    @property
    def started(self) -> float:
        return self.interpreter.info.start_time

    @property
    def express(self) -> bool:
        return self.interpreter.info.express

    @property
    def history(self) -> History:
        return self.interpreter.history


class ExecutionService:
    def __init__(self, store: StatesStore, invoker: FunctionInvoker, region: str,
                 account_id: str, clock: Clock) -> None:
        self.store = store
        self.clock = clock
        self.region = region
        self.account_id = account_id
        self.services = Services(
            invoker=invoker, clock=clock, region=region, account_id=account_id,
            activity_exists=lambda arn: store.activity(arn) is not None,
            start_child=self.start_child,
            map_runs=MapRuns(save=self._save_map_run, loader=self._load_map_run),
        )
        self.running: dict[str, Running] = {}
        self._machines: dict[tuple[str, bool], Machine] = {}

    def _save_map_run(self, run: MapRun) -> None:
        # Express executions live in memory only; so do their Map Runs.
        if run.execution_arn.split(":")[5] == "execution":
            self.store.put_map_run(run.arn, run.execution_arn, run.status, run.to_json())

    def _load_map_run(self, arn: str) -> MapRun | None:
        stored = self.store.map_run(arn)
        return None if stored is None else MapRun.from_json(stored)

    def map_run(self, arn: str) -> MapRun | None:
        """A live Map Run, else the stored record."""
        return self.services.map_runs.live.get(arn) or self._load_map_run(arn)

    def compile(self, definition: str, express: bool) -> Machine:
        key = (definition, express)
        machine = self._machines.get(key)
        if machine is None:
            if len(self._machines) > 256:
                self._machines.clear()
            machine = self._machines[key] = parse_definition(definition, express)
        return machine

    # ------------------------------------------------------------------ start

    def start_standard(self, machine: Mapping[str, Any] | sqlite3.Row, arn: str, name: str,
                       input_text: str) -> float:
        machine = dict(machine)
        started = self.clock.now()
        self.store.insert_execution({
            "arn": arn, "machine_arn": machine["arn"], "name": name, "input": input_text,
            "started": started, "definition": machine["definition"],
            "role_arn": machine["role_arn"], "revision_id": machine["revision_id"],
            "version_arn": machine.get("version_arn"), "alias_arn": machine.get("alias_arn"),
        })
        compiled = self.compile(machine["definition"], False)
        info = ExecutionInfo(arn, name, machine["arn"], machine["name"], machine["role_arn"],
                             json.loads(input_text), started)
        self._launch(compiled, info, resume=None, first_id=1)
        return started

    def _launch(self, machine: Machine, info: ExecutionInfo, resume: dict[str, Any] | None,
                first_id: int) -> Running:
        """Run a Standard execution, its history written through to the store."""
        arn = info.arn

        def sink(events: list[Event], checkpoint: dict[str, Any] | None,
                 frames: FrameWrites) -> None:
            self.store.append(arn, events, checkpoint, frames)

        history = History(self.clock, sink=sink, keep=False, first_id=first_id)
        return self._spawn(machine, info, history, resume)

    def _spawn(self, machine: Machine, info: ExecutionInfo, history: History,
               resume: dict[str, Any] | None) -> Running:
        interp = Interpreter(self.services, machine, info, history)
        running = Running(interp, asyncio.get_running_loop().create_future())
        self.running[info.arn] = running
        running.task = asyncio.create_task(self._run(running, resume))
        return running

    async def _run(self, running: Running, resume: dict[str, Any] | None) -> None:
        try:
            outcome = await running.interpreter.execute(resume)
        except asyncio.CancelledError:
            if not running.done.done():
                running.done.cancel()
            raise
        except Exception as exc:  # noqa: BLE001 - an engine bug must not leave it RUNNING
            outcome = Outcome("FAILED", error="States.Runtime",
                              cause=f"Internal error in Kiln's Step Functions engine: {exc!r}")
            history = running.history
            history.add("ExecutionFailed", history.next_id - 1,
                        {"error": outcome.error, "cause": outcome.cause})
            history.flush()
        finally:
            if self.running.get(running.arn) is running and not running.stopping:
                self.running.pop(running.arn, None)
        if not running.express:
            self.store.finish_execution(
                running.arn, outcome.status, self.clock.now(),
                dumps(outcome.output) if outcome.status == "SUCCEEDED" else None,
                outcome.error, outcome.cause,
            )
        if not running.done.done():
            running.done.set_result(outcome)

    def start_express(self, machine: Mapping[str, Any] | sqlite3.Row, arn: str, name: str,
                      input_text: str,
                      record: bool = False) -> Running:
        compiled = self.compile(machine["definition"], True)
        started = self.clock.now()
        info = ExecutionInfo(arn, name, machine["arn"], machine["name"], machine["role_arn"],
                             json.loads(input_text), started, express=True)
        return self._spawn(compiled, info, History(self.clock, keep=record), None)

    # ------------------------------------------------------------------ stop / shutdown

    async def stop(self, arn: str, error: str | None, cause: str | None) -> float:
        running = self.running.get(arn)
        history: History | None = None
        if running is not None and running.task is not None:
            running.stopping = True
            running.task.cancel()
            await asyncio.gather(running.task, return_exceptions=True)
            history = running.history
            self.running.pop(arn, None)
        details: dict[str, Any] = {}
        if error is not None:
            details["error"] = error
        if cause is not None:
            details["cause"] = cause
        last = self.store.last_event_id(arn)
        if history is None:
            history = History(self.clock, sink=lambda ev, cp, fr: self.store.append(arn, ev, cp),
                              keep=False, first_id=last + 1)
        else:
            history.next_id = max(history.next_id, last + 1)
        history.add("ExecutionAborted", history.next_id - 1, details)
        if running is not None:
            running.interpreter.commit()  # with the frames' checkpoints, for a redrive
        else:
            history.flush()
        stopped = self.clock.now()
        self.store.finish_execution(arn, "ABORTED", stopped, None, error, cause)
        if running is not None and not running.done.done():
            running.done.set_result(Outcome("ABORTED", error=error, cause=cause))
        return stopped

    async def shutdown(self) -> None:
        """Cancel work without closing executions: Standard ones resume on the next start."""
        tasks = [r.task for r in self.running.values() if r.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.running.clear()

    # ------------------------------------------------------------------ resume

    def resume_all(self) -> int:
        # A Map Run cut off by the restart is over: its Map state runs again with a new one.
        for stored in self.store.running_map_runs():
            self.services.map_runs.finish(MapRun.from_json(stored), "ABORTED", self.clock.now())
        resumed = 0
        for row in self.store.running():
            arn = row["arn"]
            if arn in self.running:
                continue
            events = self.store.events(arn)
            if events and events[-1]["type"] in TERMINAL_EVENTS:
                self._close_from_event(row, events[-1])
                continue
            try:
                machine = self.compile(row["definition"], False)
            except Exception:  # noqa: BLE001 - a stored definition that no longer compiles
                self.store.finish_execution(arn, "FAILED", self.clock.now(), None,
                                            "States.Runtime", "Definition could not be loaded")
                continue
            info = self._info(row)
            checkpoint = json.loads(row["checkpoint"]) if row["checkpoint"] else None
            first_id = (events[-1]["id"] + 1) if events else 1
            if checkpoint is None and events:
                checkpoint = {"state": machine.start_at, "input": info.input,
                              "prev": events[-1]["id"]}
            running = self._launch(machine, info, checkpoint, first_id)
            running.interpreter.saved_frames = self.store.frames(arn)
            resumed += 1
        return resumed

    def redrive(self, row: sqlite3.Row) -> float:
        """Re-run a failed execution from the state where it stopped; inside Parallel and
        inline Map states only the branches and iterations that did not succeed run again,
        each from its own unsuccessful state."""
        when = self.clock.now()
        count = self.store.redrive(row["arn"], when)
        checkpoint = json.loads(row["checkpoint"])
        resume = _redrive_point(checkpoint)
        resume.update(prev=self.store.last_event_id(row["arn"]), redrive=count)
        info = self._info(row)
        info.redrive_count, info.timeout_from = count, when
        running = self._launch(self.compile(row["definition"], False), info, resume,
                               resume["prev"] + 1)
        running.interpreter.saved_frames = {
            path: cp if cp.get("done") else _redrive_point(cp)
            for path, cp in self.store.frames(row["arn"]).items()
            if not cp.get("failed")}  # a tolerated failure is an iteration to redrive
        return when

    def _info(self, row: sqlite3.Row) -> ExecutionInfo:
        machine_row = self.store.machine(row["machine_arn"])
        name = machine_row["name"] if machine_row else row["machine_arn"].rsplit(":", 1)[-1]
        return ExecutionInfo(row["arn"], row["name"], row["machine_arn"], name,
                             row["role_arn"], json.loads(row["input"]), row["started"],
                             redrive_count=row["redrive_count"], timeout_from=row["redrive_date"])

    def _close_from_event(self, row: sqlite3.Row, event: Event) -> None:
        status = TERMINAL_EVENTS[event["type"]]
        details: dict[str, Any] = next(
            (v for k, v in event.items() if k.endswith("EventDetails")), {}) or {}
        self.store.finish_execution(row["arn"], status, event["timestamp"],
                                    details.get("output"), details.get("error"),
                                    details.get("cause"))

    # ------------------------------------------------------------------ TestState

    async def test_state(self, raw: dict[str, Any], state_name: str | None, input_value: JSON,
                         variables: dict[str, JSON], debug: bool = False) -> dict[str, Any]:
        """Run one state once (no retries) and report its output, next state and status;
        ``debug`` adds inspectionData (the value after each data-flow step, errorDetails)."""
        if "States" in raw and isinstance(raw["States"], dict):
            name = state_name or raw.get("StartAt")
            body = raw["States"][name]
            language = raw.get("QueryLanguage")
        else:
            name, body, language = "TestState", raw, None
        targets: set[str] = set()
        if isinstance(body, dict):
            for key in ("Next", "Default"):
                if isinstance(body.get(key), str):
                    targets.add(body[key])
            for item in (body.get("Choices") or []) + (body.get("Catch") or []):
                if isinstance(item, dict) and isinstance(item.get("Next"), str):
                    targets.add(item["Next"])
        states: dict[str, Any] = {str(name): body}
        states.update({t: {"Type": "Succeed"} for t in targets if t != name})
        definition: dict[str, Any] = {"StartAt": name, "States": states}
        if language:
            definition["QueryLanguage"] = language
        machine = parse_definition(dumps(definition))
        state = machine.states[str(name)]
        retriers, catchers = state.retry, state.catch
        state.retry, state.catch = [], []
        now = self.clock.now()
        info = ExecutionInfo(
            f"arn:aws:states:{self.region}:{self.account_id}:execution:TestState:test", "test",
            f"arn:aws:states:{self.region}:{self.account_id}:stateMachine:TestState",
            "TestState", f"arn:aws:iam::{self.account_id}:role/TestState", input_value, now)
        interp = Interpreter(self.services, machine, info, History(self.clock, keep=False))
        frame = Frame(0, dict(variables), top=False)
        out: dict[str, Any] = {}
        inspection: dict[str, Any] = {"input": dumps(input_value)}
        if debug:
            interp.inspection, interp.inspected = inspection, frame
            out["inspectionData"] = inspection
        try:
            nxt, output = await interp.run_state(state, input_value, frame)
        except StatesFailure as failure:
            out["error"], out["cause"] = failure.error, failure.cause or ""
            retry = next((i for i, r in enumerate(retriers)
                          if error_matches(r.errors, failure)), None)
            if retry is not None and retriers[retry].max_attempts > 0:
                out["status"] = "RETRIABLE"
                retrier = retriers[retry]
                inspection["errorDetails"] = {
                    "retryIndex": retry,
                    "retryBackoffIntervalSeconds": int(min(
                        retrier.interval, retrier.max_delay or retrier.interval))}
                return out
            index = next((i for i, c in enumerate(catchers)
                          if error_matches(c.errors, failure)), None)
            if index is None:
                out["status"] = "FAILED"
                return out
            inspection["errorDetails"] = {"catchIndex": index}
            nxt, output = interp.caught(state, catchers[index], failure, input_value, frame, 0,
                                        now)
            out["status"] = "CAUGHT_ERROR"
        else:
            out["status"] = "SUCCEEDED"
        out["output"] = dumps(output)
        if nxt is not None:
            out["nextState"] = nxt
        return out

    # ------------------------------------------------------------------ nested executions

    async def start_child(self, machine_arn: str, input_value: JSON, name: str | None,
                          pattern: str) -> JSON:
        row = self.store.machine(machine_arn)
        if row is None:
            raise StatesFailure("StepFunctions.StateMachineDoesNotExistException",
                                f"State Machine Does Not Exist: '{machine_arn}'")
        machine = dict(row)
        if input_value is None:
            input_text = "{}"
        elif isinstance(input_value, str):
            input_text = input_value
        else:
            input_text = dumps(input_value)
        exec_name = name or str(uuid.uuid4())
        sm_name = machine["name"]
        if machine["type"] == "EXPRESS":
            arn = (f"arn:aws:states:{self.region}:{self.account_id}:express:{sm_name}:"
                   f"{exec_name}:{uuid.uuid4()}")
            running = self.start_express(machine, arn, exec_name, input_text)
            started = running.started
        else:
            arn = f"arn:aws:states:{self.region}:{self.account_id}:execution:{sm_name}:{exec_name}"
            if self.store.execution(arn) is not None:
                raise StatesFailure("StepFunctions.ExecutionAlreadyExistsException",
                                    f"Execution Already Exists: '{arn}'")
            started = self.start_standard(machine, arn, exec_name, input_text)
            running = self.running[arn]
        if not pattern:
            return {"ExecutionArn": arn, "StartDate": iso(started)}
        outcome = await asyncio.shield(running.done)
        result: dict[str, Any] = {
            "ExecutionArn": arn, "Input": input_text, "InputDetails": {"Included": True},
            "Name": exec_name, "StartDate": iso(started), "StateMachineArn": machine_arn,
            "Status": outcome.status, "StopDate": iso(self.clock.now()),
        }
        if outcome.status == "SUCCEEDED":
            result["Output"] = (outcome.output if pattern == "sync:2"
                                else dumps(outcome.output))
            result["OutputDetails"] = {"Included": True}
            return result
        if outcome.error is not None:
            result["Error"] = outcome.error
        if outcome.cause is not None:
            result["Cause"] = outcome.cause
        raise StatesFailure("States.TaskFailed", dumps(result))


def _redrive_point(cp: dict[str, Any]) -> dict[str, Any]:
    """Where a frame restarts on a redrive: its unsuccessful state, entered anew (a Distributed
    Map there redrives its Map Run)."""
    point = {"state": cp["state"], "input": cp["input"], "prev": cp.get("prev", 0),
             "variables": cp.get("variables", {}), "redriven": True}
    if cp.get("map_run"):
        point["map_run"] = cp["map_run"]
    return point
