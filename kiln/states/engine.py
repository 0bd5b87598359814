"""The interpreter: runs one execution of a compiled state machine on asyncio.

    interp = Interpreter(services, machine, ExecutionInfo(...), history)
    outcome = await interp.execute()

Standard executions pass a History with a sink: events are flushed (with a checkpoint of the
top-level state) before every side effect, and ``execute(resume=checkpoint)`` continues an
execution after a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import uuid
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any, TypeVar

from kiln.states import jsonata
from kiln.states.callbacks import ActivityBroker, TaskTokens, new_token, wait_for_token
from kiln.states.choice import parse_timestamp
from kiln.states.definition import MAX_BATCH_BYTES
from kiln.states.history import History
from kiln.states.jsonpath import Path
from kiln.states.maprun import Child, MapRun, MapRuns, exceeds_tolerance
from kiln.states.model import ROOT, Catcher, Machine, State
from kiln.states.payload import (
    Env,
    Expression,
    compile_template,
    context_of,
    dumps,
    resolve_path,
)
from kiln.states.types import JSON, Clock, FunctionInvoker, PathFailure, StatesFailure

T = TypeVar("T")

UNCATCHABLE = ("States.Runtime", "States.DataLimitExceeded")
MAX_PAYLOAD = 262144
FLUSH_EVERY = 256  # buffered history events before a forced commit
INLINE_UNBOUNDED = 40  # AWS runs at most 40 inline Map iterations at once
_NO_DETAIL = {"truncated": False}


def iso(ts: float) -> str:
    """Context-object timestamps: UTC, milliseconds, ``Z``."""
    dt = datetime.fromtimestamp(ts, UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


@dataclass
class Services:
    """What the interpreter needs from the outside world."""

    invoker: FunctionInvoker
    clock: Clock
    region: str
    account_id: str
    tokens: TaskTokens = field(default_factory=TaskTokens)
    activities: ActivityBroker = field(default_factory=ActivityBroker)
    activity_exists: Callable[[str], bool] = lambda arn: True
    start_child: Callable[[str, JSON, str | None, str], Awaitable[JSON]] | None = None
    map_runs: MapRuns = field(default_factory=MapRuns)
    background: set[asyncio.Future[Any]] = field(default_factory=set)


@dataclass
class ExecutionInfo:
    arn: str
    name: str
    machine_arn: str
    machine_name: str
    role_arn: str
    input: JSON
    start_time: float
    express: bool = False
    redrive_count: int = 0
    timeout_from: float | None = None  # a redrive restarts the execution timeout


@dataclass
class Outcome:
    status: str  # SUCCEEDED, FAILED, TIMED_OUT
    output: JSON = None
    error: str | None = None
    cause: str | None = None


class Frame:
    """One thread of control: the top level, a Parallel branch or a Map iteration.

    ``cp`` is where the frame resumes after a restart (its state, input, event ids...); the top
    frame's lives in the execution row, a nested frame's under ``path`` (``/P[0]/M[3]``).
    """

    __slots__ = ("cp", "dirty", "path", "prev", "top", "variables")

    def __init__(self, prev: int, variables: dict[str, JSON], top: bool, path: str = "") -> None:
        self.prev = prev
        self.variables = variables
        self.top = top
        self.path = path
        self.cp: dict[str, Any] = {}
        self.dirty = False  # queued in Interpreter.frame_writes


def error_matches(errors: tuple[str, ...], failure: StatesFailure) -> bool:
    err = failure.error
    if err in UNCATCHABLE:
        return False
    for name in errors:
        if name in ("States.ALL", err):
            return True
        if name == "States.HeartbeatTimeout" and failure.heartbeat:
            return True
        if name == "States.TaskFailed" and err != "States.Timeout":
            return True
    return False


def retry_delay(interval: float, backoff: float, attempt: int, max_delay: float | None,
                jitter: bool, rng: random.Random) -> float:
    delay = interval * backoff**attempt
    if max_delay is not None:
        delay = min(delay, max_delay)
    if jitter:
        delay = rng.uniform(0, delay)
    return delay


class Interpreter:
    def __init__(self, services: Services, machine: Machine, info: ExecutionInfo,
                 history: History, rng: random.Random | None = None) -> None:
        self.services = services
        self.clock = services.clock
        self.machine = machine
        self.info = info
        self.history = history
        self.recording = history.keep or history.sink is not None
        self.rng = rng or random.Random()
        self.exec_context = {
            "Id": info.arn,
            "Input": info.input,
            "StartTime": iso(info.start_time),
            "Name": info.name,
            "RoleArn": info.role_arn,
            "RedriveCount": info.redrive_count,
        }
        if info.redrive_count and info.timeout_from is not None:
            self.exec_context["RedriveTime"] = iso(info.timeout_from)
        self.machine_context = {"Id": info.machine_arn, "Name": info.machine_name}
        self.checkpoint: dict[str, Any] = {}
        self.checkpoint_dirty = False  # rewrite the checkpoint only when it changed
        # Standard executions also checkpoint nested frames, so a restart resumes inside a
        # Parallel/Map: pending writes in order (a frame to save, a finished frame's record,
        # or None to drop a state's sub-frames), and the frames a restart hands back.
        self.durable = history.sink is not None
        self.frame_writes: list[tuple[str, Frame | dict[str, Any] | None]] = []
        self.saved_frames: dict[str, dict[str, Any]] = {}
        self.parent: Interpreter | None = None  # a Distributed Map child's parent execution
        # TestState at DEBUG: each data-flow step's value, as JSON text (afterInputPath...)
        self.inspection: dict[str, str] | None = None
        self.inspected: Frame | None = None
        self._dumped: tuple[JSON, str] = (None, "null")

    # ------------------------------------------------------------------ execution

    async def execute(self, resume: dict[str, Any] | None = None) -> Outcome:
        """Run to the end; emits ExecutionStarted (unless resuming) and the closing event."""
        if resume is None:
            prev = self.add("ExecutionStarted", 0, lambda: {
                "input": dumps(self.info.input), "inputDetails": _NO_DETAIL,
                "roleArn": self.info.role_arn,
            })
            frame = Frame(prev, {}, top=True)
            start, data = self.machine.start_at, self.info.input
        else:
            frame = Frame(resume["prev"], dict(resume.get("variables", {})), top=True)
            start, data = resume["state"], resume["input"]
            count = resume.get("redrive")
            if count:
                frame.prev = self.add("ExecutionRedriven", frame.prev, lambda: {
                    "redriveCount": count})
                resume = {k: v for k, v in resume.items() if k != "redrive"}
                resume["prev"] = frame.prev
        timeout = self.machine.timeout_seconds
        try:
            if timeout is None:
                output = await self.run_machine(self.machine, data, frame, start, resume)
            else:
                base = self.info.timeout_from or self.info.start_time
                remaining = base + timeout - self.clock.now()
                output = await self._with_timeout(
                    self.run_machine(self.machine, data, frame, start, resume), remaining
                )
        except StatesFailure as failure:
            if failure.error == "__ExecutionTimeout__":
                self.add("ExecutionTimedOut", frame.prev, lambda: {
                    "error": "States.Timeout",
                    "cause": "The execution timed out",
                })
                self.commit()
                return Outcome("TIMED_OUT", error="States.Timeout",
                               cause="The execution timed out")
            self.add("ExecutionFailed", frame.prev, partial(_error_details, failure))
            self.commit()
            return Outcome("FAILED", error=failure.error or None, cause=failure.cause)
        self.add("ExecutionSucceeded", frame.prev, lambda: {
            "output": dumps(output), "outputDetails": _NO_DETAIL,
        })
        self.commit()
        return Outcome("SUCCEEDED", output=output)

    async def _with_timeout(self, work: Awaitable[JSON], seconds: float) -> JSON:
        task = asyncio.ensure_future(work)
        timer = asyncio.ensure_future(self.clock.sleep(max(0.0, seconds)))
        try:
            await asyncio.wait({task, timer}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            timer.cancel()
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, StatesFailure):
                    await task
        if task.cancelled():
            raise StatesFailure("__ExecutionTimeout__")
        return task.result()

    def add(self, event_type: str, previous: int,
            details: Callable[[], dict[str, Any]] | None = None) -> int:
        if not self.recording:
            return self.history.add(event_type, previous)
        return self.history.add(event_type, previous, details() if details else None)

    def note(self, frame: Frame, step: str, value: JSON) -> None:
        """Record a data-flow step of the state TestState inspects (not of states inside it)."""
        if self.inspection is not None and frame is self.inspected:
            self.inspection[step] = dumps(value)

    def dump(self, value: JSON) -> str:
        """JSON text for events; a state's output is usually the next state's input."""
        if value is self._dumped[0] and isinstance(value, dict | list):
            return self._dumped[1]
        text = dumps(value)
        self._dumped = (value, text)
        return text

    def persist(self, frame: Frame, **checkpoint: Any) -> None:
        """Flush events with the frames' checkpoints (where each resumes)."""
        if frame.top or self.durable:
            frame.cp.update(checkpoint)
            frame.cp["variables"] = frame.variables
            self.mark(frame)
        self.commit()

    def commit(self) -> None:
        """Write buffered events, the top checkpoint and frame checkpoints in one go."""
        if self.parent is not None:
            # A child's side effects wait for the parent's record of the children before it.
            self.parent.commit()
            return
        top = None
        if self.checkpoint_dirty and self.checkpoint:
            self.checkpoint_dirty = False
            top = dict(self.checkpoint)
        writes = _coalesce(self.frame_writes)
        self.frame_writes = []
        self.history.flush(top, writes)

    def mark(self, frame: Frame) -> None:
        """``frame.cp`` changed: write it with the next flush."""
        if frame.top:
            self.checkpoint_dirty = True
        elif self.durable and not frame.dirty:
            frame.dirty = True
            self.frame_writes.append((frame.path, frame))

    def sub_path(self, frame: Frame, state: State, index: int) -> str:
        return f"{frame.path}/{state.name}[{index}]" if self.durable else ""

    def drop_sub_frames(self, frame: Frame, state: State) -> None:
        """A Parallel/Map state succeeded, or starts a fresh attempt: its branches'
        checkpoints go. A failed one keeps them: RedriveExecution reruns only the branches
        and iterations that did not succeed."""
        if not self.durable:
            return
        prefix = f"{frame.path}/{state.name}["
        self.frame_writes.append((prefix, None))
        frame.cp.pop("started", None)
        self.mark(frame)
        if self.saved_frames:
            self.saved_frames = {k: v for k, v in self.saved_frames.items()
                                 if not k.startswith(prefix)}

    # ------------------------------------------------------------------ machine / states

    async def run_machine(self, machine: Machine, data: JSON, frame: Frame,
                          start: str | None = None,
                          resume: dict[str, Any] | None = None) -> JSON:
        name = start or machine.start_at
        while True:
            state = machine.states[name]
            if frame.top or self.durable:
                if resume is None:
                    frame.cp = {"state": name, "input": data, "prev": frame.prev,
                                "variables": frame.variables}
                else:
                    frame.cp = dict(resume)
                if frame.top:
                    self.checkpoint = frame.cp
                self.mark(frame)
                # Pure transitions are replayable: commit in batches, and always before
                # any side effect (tasks, waits, callbacks call persist()).
                if resume is None and frame.top and len(self.history.pending) >= FLUSH_EVERY:
                    self.persist(frame)
            nxt, data = await self.run_state(state, data, frame, resume)
            resume = None
            if nxt is None:
                return data
            name = nxt

    def context(self, state: State, entered_time: float, retry: int,
                extra: dict[str, Any] | None = None) -> dict[str, Any]:
        ctx: dict[str, Any] = {
            "Execution": self.exec_context,
            "StateMachine": self.machine_context,
            "State": {"Name": state.name, "EnteredTime": iso(entered_time), "RetryCount": retry},
        }
        if extra:
            ctx.update(extra)
        return ctx

    def lazy_context(self, state: State, entered_time: float, retry: int,
                     extra: dict[str, Any] | None = None) -> Callable[[], dict[str, Any]]:
        """The context object, built only if an expression reads ``$$``."""
        cache: list[dict[str, Any]] = []

        def build() -> dict[str, Any]:
            if not cache:
                cache.append(self.context(state, entered_time, retry, extra))
            return cache[0]

        return build

    def runtime(self, state: State, entered: int, detail: str) -> StatesFailure:
        return StatesFailure(
            "States.Runtime",
            f"An error occurred while executing the state '{state.name}' (entered at the event "
            f"id #{entered}). {detail}",
        )

    async def run_state(self, state: State, data: JSON, frame: Frame,
                        resume: dict[str, Any] | None = None) -> tuple[str | None, JSON]:
        if resume is not None and resume.get("entered"):
            entered = int(resume["entered"])
            entered_time = float(resume.get("entered_time", self.clock.now()))
        else:
            entered = self.add(f"{state.type}StateEntered", frame.prev, lambda: {
                "name": state.name, "input": self.dump(data), "inputDetails": _NO_DETAIL,
            })
            entered_time = self.clock.now()
            if frame.top or self.durable:
                frame.cp.update(entered=entered, entered_time=entered_time)
                self.mark(frame)
        frame.prev = entered
        run = _HANDLERS[state.type]
        try:
            return await run(self, state, data, frame, entered, entered_time, resume)
        except PathFailure as exc:
            raise self.runtime(state, entered, str(exc)) from None
        except jsonata.JsonataError as exc:
            raise StatesFailure("States.QueryEvaluationError", str(exc)) from None
        except StatesFailure as failure:
            if state.type not in ("Task", "Parallel", "Map") or not state.catch:
                raise
            catcher = next((c for c in state.catch if error_matches(c.errors, failure)), None)
            if catcher is None:
                raise
            return self.caught(state, catcher, failure, data, frame, entered, entered_time)

    def caught(self, state: State, catcher: Catcher, failure: StatesFailure, data: JSON,
               frame: Frame, entered: int, entered_time: float) -> tuple[str | None, JSON]:
        error_output = _error_details_obj(failure)
        assigned: dict[str, JSON] | None = None
        try:
            if state.jsonata:
                bindings = self.jsonata_bindings(state, data, frame, entered_time, 0)
                bindings["states"]["errorOutput"] = error_output
                output = (jsonata.evaluate_template(catcher.output, bindings)
                          if catcher.has_output else error_output)
                if catcher.jsonata_assign is not None:
                    assigned = jsonata.evaluate_template(catcher.jsonata_assign, bindings)
            else:
                output = self.merge(catcher.result_path, data, error_output)
                if catcher.assign is not None:
                    env = Env(error_output, self.lazy_context(state, entered_time, 0),
                              frame.variables)
                    assigned = catcher.assign(env)
        except PathFailure as exc:
            raise self.runtime(state, entered, str(exc)) from None
        except jsonata.JsonataError as exc:
            raise StatesFailure("States.QueryEvaluationError", str(exc)) from None
        self.exit(state, output, frame, assigned)
        return catcher.next, output

    def exit(self, state: State, output: JSON, frame: Frame,
             assigned: dict[str, JSON] | None = None) -> None:
        if self.recording and len(self.dump(output)) > MAX_PAYLOAD // 4 and len(
                self.dump(output).encode()) > MAX_PAYLOAD:
            raise StatesFailure(
                "States.DataLimitExceeded",
                f"The state/task '{state.name}' returned a result with a size exceeding the "
                f"maximum number of bytes service limit.")
        if assigned:
            frame.variables = {**frame.variables, **assigned}

        def details() -> dict[str, Any]:
            out: dict[str, Any] = {"name": state.name, "output": self.dump(output),
                                   "outputDetails": _NO_DETAIL}
            if assigned is not None:
                out["assignedVariables"] = {k: dumps(v) for k, v in assigned.items()}
                out["assignedVariablesDetails"] = {"truncated": False}
            return out

        frame.prev = self.add(f"{state.type}StateExited", frame.prev, details)

    # ------------------------------------------------------------------ data flow

    def select(self, path: Path | None, value: JSON, env: Env) -> JSON:
        if path is None:
            return {}
        if path is ROOT:
            return value
        try:
            return resolve_path(path, env.with_input(value))
        except PathFailure as exc:
            message = str(exc)
            if message.startswith("Invalid path"):
                raise
            raise PathFailure(f"Invalid path '{path.source}' : {message}") from None

    def merge(self, path: Path | None, raw: JSON, result: JSON) -> JSON:
        if path is None:
            return raw
        if path is ROOT:
            return result
        try:
            return path.set(raw, result)
        except PathFailure:
            raise StatesFailure(
                "States.ResultPathMatchFailure",
                f"Unable to apply ResultPath \"{path.source}\" to input \"{dumps(raw)}\"",
            ) from None

    def finish(self, state: State, data: JSON, result: JSON, frame: Frame, env: Env,
               assign_source: JSON) -> JSON:
        """ResultPath, Assign and OutputPath (JSONPath mode), then the Exited event."""
        merged = self.merge(state.result_path, data, result)
        self.note(frame, "afterResultPath", merged)
        assigned = None
        if state.assign is not None:
            assigned = state.assign(env.with_input(assign_source))
        output = self.select(state.output_path, merged, env)
        self.exit(state, output, frame, assigned)
        return output

    def jsonata_bindings(self, state: State, data: JSON, frame: Frame, entered_time: float,
                         retry: int, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        return {
            **frame.variables,
            "states": {
                "input": data,
                "context": self.context(state, entered_time, retry, extra),
            },
        }

    def jsonata_finish(self, state: State, bindings: dict[str, Any], default: JSON,
                       frame: Frame, output_template: JSON = None,
                       has_output: bool | None = None) -> JSON:
        template = state.output if output_template is None else output_template
        if has_output is None:
            has_output = state.has_output
        output = jsonata.evaluate_template(template, bindings) if has_output else default
        assigned = None
        if state.jsonata_assign is not None:
            assigned = jsonata.evaluate_template(state.jsonata_assign, bindings)
        self.exit(state, output, frame, assigned)
        return output

    # ------------------------------------------------------------------ simple states

    async def run_pass(self, state: State, data: JSON, frame: Frame, entered: int,
                       entered_time: float, resume: dict[str, Any] | None) -> tuple[
                           str | None, JSON]:
        if state.jsonata:
            b = self.jsonata_bindings(state, data, frame, entered_time, 0)
            return state.next, self.jsonata_finish(state, b, data, frame)
        env = Env(data, self.lazy_context(state, entered_time, 0), frame.variables)
        value = self.select(state.input_path, data, env)
        self.note(frame, "afterInputPath", value)
        if state.parameters is not None:
            value = state.parameters(env.with_input(value))
            self.note(frame, "afterParameters", value)
        result = state.result if state.has_result else value
        self.note(frame, "result", result)
        return state.next, self.finish(state, data, result, frame, env, result)

    async def run_succeed(self, state: State, data: JSON, frame: Frame, entered: int,
                          entered_time: float, resume: dict[str, Any] | None) -> tuple[
                              str | None, JSON]:
        if state.jsonata:
            b = self.jsonata_bindings(state, data, frame, entered_time, 0)
            return None, self.jsonata_finish(state, b, data, frame)
        env = Env(data, self.lazy_context(state, entered_time, 0), frame.variables)
        value = self.select(state.input_path, data, env)
        output = self.select(state.output_path, value, env)
        self.exit(state, output, frame)
        return None, output

    async def run_fail(self, state: State, data: JSON, frame: Frame, entered: int,
                       entered_time: float, resume: dict[str, Any] | None) -> tuple[
                           str | None, JSON]:
        if state.jsonata:
            b = self.jsonata_bindings(state, data, frame, entered_time, 0)
            error = jsonata.evaluate_template(state.error, b)
            cause = jsonata.evaluate_template(state.cause, b)
        else:
            env = Env(data, self.lazy_context(state, entered_time, 0), frame.variables)
            error = state.error_path(env) if state.error_path else state.error
            cause = state.cause_path(env) if state.cause_path else state.cause
        for value, key in ((error, "Error"), (cause, "Cause")):
            if value is not None and not isinstance(value, str):
                raise PathFailure(
                    f"The value of the field '{key}' must be a string, but was {dumps(value)}"
                )
        raise StatesFailure(error or "", cause)

    async def run_choice(self, state: State, data: JSON, frame: Frame, entered: int,
                         entered_time: float, resume: dict[str, Any] | None) -> tuple[
                             str | None, JSON]:
        if state.jsonata:
            b = self.jsonata_bindings(state, data, frame, entered_time, 0)
            for choice in state.choices:
                verdict = jsonata.evaluate_template(choice.condition, b)
                if not isinstance(verdict, bool):
                    raise jsonata.JsonataError(
                        f"The Condition field evaluated to {dumps(verdict)}, not a boolean")
                if verdict:
                    output = (jsonata.evaluate_template(choice.output, b)
                              if choice.has_output else
                              jsonata.evaluate_template(state.output, b)
                              if state.has_output else data)
                    chosen: dict[str, JSON] = {}
                    if state.jsonata_assign is not None:
                        chosen.update(jsonata.evaluate_template(state.jsonata_assign, b))
                    if choice.jsonata_assign is not None:
                        chosen.update(jsonata.evaluate_template(choice.jsonata_assign, b))
                    self.exit(state, output, frame, chosen or None)
                    return choice.next, output
            if state.default is None:
                raise self.no_choice(state, entered)
            return state.default, self.jsonata_finish(state, b, data, frame)
        env = Env(data, self.lazy_context(state, entered_time, 0), frame.variables)
        value = self.select(state.input_path, data, env)
        self.note(frame, "afterInputPath", value)
        probe = env.with_input(value)
        target = state.default
        rule_assign: Expression | None = None
        for choice in state.choices:
            assert choice.rule is not None
            if choice.rule(probe):
                target, rule_assign = choice.next, choice.assign
                break
        else:
            if state.default is None:
                raise self.no_choice(state, entered)
        assigned: dict[str, JSON] | None = None
        if state.assign is not None or rule_assign is not None:
            assigned = {}
            if state.assign is not None:
                assigned.update(state.assign(probe))
            if rule_assign is not None:
                assigned.update(rule_assign(probe))
        output = self.select(state.output_path, value, env)
        self.exit(state, output, frame, assigned)
        return target, output

    def no_choice(self, state: State, entered: int) -> StatesFailure:
        return self.runtime(state, entered,
                            "No Choice Rules matched and no Default was specified.")

    async def run_wait(self, state: State, data: JSON, frame: Frame, entered: int,
                       entered_time: float, resume: dict[str, Any] | None) -> tuple[
                           str | None, JSON]:
        b: dict[str, Any] = {}
        env = Env(data, None, frame.variables)
        if state.jsonata:
            b = self.jsonata_bindings(state, data, frame, entered_time, 0)
            value = data
        else:
            env = Env(data, self.lazy_context(state, entered_time, 0), frame.variables)
            value = self.select(state.input_path, data, env)
        if resume is not None and resume.get("wait_until") is not None:
            until = float(resume["wait_until"])
        else:
            until = self.wait_deadline(state, value, env.with_input(value), b, entered_time)
            self.persist(frame, wait_until=until)
        await self.clock.sleep(until - self.clock.now())
        if state.jsonata:
            return state.next, self.jsonata_finish(state, b, data, frame)
        output = self.select(state.output_path, value, env)
        assigned = state.assign(env.with_input(value)) if state.assign is not None else None
        self.exit(state, output, frame, assigned)
        return state.next, output

    def wait_deadline(self, state: State, value: JSON, env: Env, b: dict[str, Any],
                      start: float) -> float:
        seconds: JSON = None
        stamp: JSON = None
        if state.seconds is not None:
            seconds = state.seconds
            if isinstance(seconds, str):
                seconds = jsonata.evaluate_template(seconds, b)
            source = "Seconds"
        elif state.seconds_path is not None:
            seconds = resolve_path(state.seconds_path, env)
            source = f"SecondsPath parameter references {state.seconds_path.source} =="
        elif state.timestamp is not None:
            stamp = state.timestamp
            if state.jsonata and stamp.startswith("{%"):
                stamp = jsonata.evaluate_template(stamp, b)
        elif state.timestamp_path is not None:
            stamp = resolve_path(state.timestamp_path, env)
        if stamp is not None or state.timestamp is not None or state.timestamp_path is not None:
            parsed = parse_timestamp(stamp)
            if parsed is None:
                raise PathFailure(
                    f"The TimestampPath parameter does not reference a valid ISO-8601 extended "
                    f"offset date-time format string: {dumps(stamp)}"
                )
            until = parsed.timestamp()
            if until - start > 24855 * 86400:
                raise PathFailure("Wait state delay is too long")
            return until
        if isinstance(seconds, bool) or not isinstance(seconds, int | float) or (
                isinstance(seconds, float) and not seconds.is_integer()):
            raise PathFailure(f"The {source} value cannot be parsed as a long value: "
                              f"{dumps(seconds)}")
        if seconds < 0:
            raise PathFailure(f"The {source} references a negative value: {dumps(seconds)}")
        return start + float(seconds)

    # ------------------------------------------------------------------ retry

    async def with_retry(self, state: State, frame: Frame, resume: dict[str, Any] | None,
                         attempt: Callable[[int], Awaitable[JSON]]) -> JSON:
        counts = [0] * len(state.retry)
        if resume is not None and resume.get("retry_counts"):
            counts = list(resume["retry_counts"])
            if resume.get("retry_at") is not None:
                await self.clock.sleep(float(resume["retry_at"]) - self.clock.now())
        while True:
            try:
                return await attempt(sum(counts))
            except StatesFailure as failure:
                index = next((i for i, r in enumerate(state.retry)
                              if error_matches(r.errors, failure)), None)
                if index is None:
                    raise
                retrier = state.retry[index]
                if counts[index] >= retrier.max_attempts:
                    raise
                delay = retry_delay(retrier.interval, retrier.backoff, counts[index],
                                    retrier.max_delay, retrier.jitter, self.rng)
                counts[index] += 1
                self.persist(frame, retry_counts=counts, retry_at=self.clock.now() + delay)
                await self.clock.sleep(delay)

    # ------------------------------------------------------------------ task

    async def run_task(self, state: State, data: JSON, frame: Frame, entered: int,
                       entered_time: float, resume: dict[str, Any] | None) -> tuple[
                           str | None, JSON]:
        token_holder: list[str] = []

        async def attempt(retry: int) -> JSON:
            extra: dict[str, Any] | None = None
            if state.resource.endswith(".waitForTaskToken"):
                if resume is not None and resume.get("token") and not token_holder:
                    token = str(resume["token"])
                else:
                    token = new_token(self.info.arn)
                token_holder[:] = [token]
                extra = {"Task": {"Token": token}}
            if state.jsonata:
                b = self.jsonata_bindings(state, data, frame, entered_time, retry, extra)
                value = (jsonata.evaluate_template(state.arguments, b)
                         if state.has_arguments else data)
                self.note(frame, "afterArguments", value)
                timeout = self.jsonata_seconds(state.timeout_seconds, b, "TimeoutSeconds")
                heartbeat = self.jsonata_seconds(state.heartbeat_seconds, b, "HeartbeatSeconds")
            else:
                env = Env(data, self.lazy_context(state, entered_time, retry, extra),
                          frame.variables)
                value = self.select(state.input_path, data, env)
                self.note(frame, "afterInputPath", value)
                if state.parameters is not None:
                    value = state.parameters(env.with_input(value))
                    self.note(frame, "afterParameters", value)
                timeout = self.task_seconds(state.timeout_seconds, state.timeout_path, env,
                                            "TimeoutSecondsPath")
                heartbeat = self.task_seconds(state.heartbeat_seconds, state.heartbeat_path,
                                              env, "HeartbeatSecondsPath")
            try:
                result = await self.invoke(state, value, frame, timeout, heartbeat,
                                           token_holder[0] if token_holder else None, resume)
            except PathFailure as exc:
                raise self.runtime(state, entered, str(exc)) from None
            self.note(frame, "result", result)
            if state.jsonata:
                return result
            if state.result_selector is not None:
                result = state.result_selector(env.with_input(result))
                self.note(frame, "afterResultSelector", result)
            return result

        result = await self.with_retry(state, frame, resume, attempt)
        if state.jsonata:
            b = self.jsonata_bindings(state, data, frame, entered_time, 0)
            b["states"]["result"] = result
            return state.next, self.jsonata_finish(state, b, result, frame)
        env = Env(data, self.lazy_context(state, entered_time, 0), frame.variables)
        return state.next, self.finish(state, data, result, frame, env, result)

    def task_seconds(self, static: JSON, path: Path | None, env: Env, name: str) -> float | None:
        if path is not None:
            value = resolve_path(path, env)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise PathFailure(f"The {name} field refers to value {dumps(value)} which is "
                                  "not a valid positive integer")
            return float(value)
        return float(static) if static is not None else None

    def jsonata_seconds(self, value: JSON, b: dict[str, Any], name: str) -> float | None:
        if value is None:
            return None
        if isinstance(value, str):
            value = jsonata.evaluate_template(value, b)
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise jsonata.JsonataError(f"The {name} field must be a positive integer")
        return float(value)

    async def invoke(self, state: State, value: JSON, frame: Frame, timeout: float | None,
                     heartbeat: float | None, token: str | None,
                     resume: dict[str, Any] | None) -> JSON:
        resource = state.resource
        parts = resource.split(":")
        if len(parts) >= 7 and parts[2] == "lambda" and parts[5] == "function":
            return await self.invoke_legacy_lambda(state, value, frame, timeout)
        if len(parts) >= 7 and parts[2] == "states" and parts[5] == "activity":
            return await self.invoke_activity(state, value, frame, timeout, heartbeat)
        if len(parts) >= 7 and parts[2] == "states" and parts[3] == "" and parts[4] == "":
            service, action = parts[5], ":".join(parts[6:])
            return await self.invoke_service(state, service, action, value, frame, timeout,
                                             heartbeat, token, resume)
        raise PathFailure(f"The resource '{resource}' is not supported by Kiln")

    async def guarded(self, work: Awaitable[T], timeout: float | None) -> T:
        """``work``'s result, or States.Timeout once ``timeout`` passes on the engine's clock."""
        if timeout is None:
            return await work
        task = asyncio.ensure_future(work)
        timer = asyncio.ensure_future(self.clock.sleep(timeout))
        try:
            await asyncio.wait({task, timer}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            timer.cancel()
            if not task.done():
                task.cancel()
        if task.done() and not task.cancelled():
            return task.result()
        raise StatesFailure("States.Timeout", None)

    def function_arn(self, function: str, qualifier: JSON = None) -> str:
        """Name, ``name:qualifier``, partial or full ARN -> full function ARN."""
        region, account = self.services.region, self.services.account_id
        if function.startswith("arn:"):
            arn = function
        elif ":function:" in function:
            arn = f"arn:aws:lambda:{region}:{function}"
        else:
            arn = f"arn:aws:lambda:{region}:{account}:function:{function}"
        if isinstance(qualifier, str) and qualifier and len(arn.split(":")) == 7:
            arn = f"{arn}:{qualifier}"
        return arn

    async def call_lambda(self, function: str, payload: JSON) -> tuple[JSON, str]:
        body, function_error = await self.services.invoker.invoke(
            self.function_arn(function), dumps(payload).encode()
        )
        text = body.decode("utf-8", errors="replace")
        if function_error is not None:
            error = function_error
            try:
                parsed = json.loads(text)
                if isinstance(parsed, dict) and isinstance(parsed.get("errorType"), str):
                    error = parsed["errorType"]
            except ValueError:
                pass
            raise StatesFailure(error, text)
        try:
            return json.loads(text) if text.strip() else None, text
        except ValueError:
            return text, text

    async def invoke_legacy_lambda(self, state: State, value: JSON, frame: Frame,
                                   timeout: float | None) -> JSON:
        frame.prev = self.add("LambdaFunctionScheduled", frame.prev, lambda: {
            "resource": state.resource, "input": dumps(value), "inputDetails": _NO_DETAIL,
            **_limits(timeout, None)})
        frame.prev = self.add("LambdaFunctionStarted", frame.prev)
        self.persist(frame)
        async def result() -> JSON:
            return (await self.call_lambda(state.resource, value))[0]

        return await self.recorded(frame, "LambdaFunction", self.guarded(result(), timeout))

    async def recorded(self, frame: Frame, events: str, work: Awaitable[JSON],
                       outcome: str = "Succeeded", **fields: Any) -> JSON:
        """Await a task's ``work`` and record how it ended: ``{events}TimedOut`` or
        ``{events}Failed`` (the failure is re-raised), else ``{events}{outcome}`` with its
        output; ``fields`` go into either event."""
        try:
            output = await work
        except StatesFailure as failure:
            kind = "TimedOut" if failure.error == "States.Timeout" else "Failed"
            details = {**fields, **_error_details(failure)}
            frame.prev = self.add(events + kind, frame.prev, lambda: details)
            raise
        frame.prev = self.add(events + outcome, frame.prev, lambda: {
            **fields, "output": dumps(output), "outputDetails": _NO_DETAIL,
        })
        return output

    async def invoke_service(self, state: State, service: str, action: str, value: JSON,
                             frame: Frame, timeout: float | None, heartbeat: float | None,
                             token: str | None, resume: dict[str, Any] | None) -> JSON:
        base, _, pattern = action.partition(".")
        fields = {"resourceType": service, "resource": action}
        submitted = bool(resume and resume.get("submitted") and token
                         and resume.get("token") == token)
        if not submitted:
            frame.prev = self.add("TaskScheduled", frame.prev, lambda: {
                **fields, "region": self.services.region, "parameters": dumps(value),
                **_limits(timeout, heartbeat)})
            frame.prev = self.add("TaskStarted", frame.prev, lambda: dict(fields))
        waiter = self.services.tokens.register(token, self.info.arn) if token else None
        self.persist(frame, token=token, submitted=submitted)
        try:
            if not submitted:
                # With a task token the service's answer only submits the task.
                output = await self.recorded(
                    frame, "Task", self.guarded(
                        self.call_service(service, base, pattern, value), timeout),
                    "Succeeded" if waiter is None else "Submitted", **fields)
                if waiter is None:
                    return output
                self.persist(frame, token=token, submitted=True)
            assert waiter is not None
            return await self.recorded(
                frame, "Task", wait_for_token(waiter, self.clock, timeout, heartbeat), **fields)
        finally:
            if token:
                self.services.tokens.discard(token)
            if frame.top or self.durable:
                frame.cp.pop("token", None)
                frame.cp.pop("submitted", None)
                self.mark(frame)

    async def call_service(self, service: str, action: str, pattern: str, value: JSON) -> JSON:
        if service == "lambda" and action == "invoke":
            if not isinstance(value, dict) or not isinstance(value.get("FunctionName"), str):
                raise StatesFailure("States.Runtime",
                                    "The field 'FunctionName' is required for lambda:invoke")
            function = self.function_arn(value["FunctionName"], value.get("Qualifier"))
            parts = function.split(":")
            executed = parts[7] if len(parts) == 8 and parts[7].isdigit() else "$LATEST"
            if value.get("InvocationType") == "Event":
                job = asyncio.ensure_future(self.services.invoker.invoke(
                    function, dumps(value.get("Payload")).encode()))
                self.services.background.add(job)
                job.add_done_callback(self.services.background.discard)
                return {"Payload": "", "SdkHttpMetadata": {"HttpStatusCode": 202},
                        "SdkResponseMetadata": {"RequestId": str(uuid.uuid4())},
                        "StatusCode": 202}
            payload, _ = await self.call_lambda(function, value.get("Payload"))
            return {
                "ExecutedVersion": executed,
                "Payload": payload,
                "SdkHttpMetadata": {"HttpHeaders": {"Content-Type": "application/json"},
                                    "HttpStatusCode": 200},
                "SdkResponseMetadata": {"RequestId": str(uuid.uuid4())},
                "StatusCode": 200,
            }
        if service == "states" and action == "startExecution" and self.services.start_child:
            if not isinstance(value, dict) or not isinstance(value.get("StateMachineArn"), str):
                raise StatesFailure("States.Runtime",
                                    "The field 'StateMachineArn' is required for "
                                    "states:startExecution")
            return await self.services.start_child(
                value["StateMachineArn"], value.get("Input"), value.get("Name"), pattern
            )
        raise StatesFailure(
            "States.Runtime",
            f"The resource 'arn:aws:states:::{service}:{action}' is not supported by Kiln",
        )

    async def invoke_activity(self, state: State, value: JSON, frame: Frame,
                              timeout: float | None, heartbeat: float | None) -> JSON:
        arn = state.resource
        if not self.services.activity_exists(arn):
            raise StatesFailure("States.Runtime", f"The activity {arn} does not exist.")
        text = dumps(value)
        frame.prev = self.add("ActivityScheduled", frame.prev, lambda: {
            "resource": arn, "input": text, "inputDetails": _NO_DETAIL,
            **_limits(timeout, heartbeat)})
        token = new_token(self.info.arn)
        waiter = self.services.tokens.register(token, self.info.arn)
        self.persist(frame)
        task = self.services.activities.schedule(arn, token, text)
        deadline = None if timeout is None else self.clock.now() + timeout
        async def picked_up() -> JSON:
            await asyncio.wait({task.started, waiter.result},
                               return_when=asyncio.FIRST_COMPLETED)
            if task.started.done():
                return task.started.result()
            return waiter.result.result()

        try:
            try:
                worker = await self.guarded(picked_up(), timeout)
            except StatesFailure as failure:
                kind = "ActivityTimedOut" if failure.error == "States.Timeout" else (
                    "ActivityFailed")
                frame.prev = self.add(kind, frame.prev, partial(_error_details, failure))
                raise
            frame.prev = self.add("ActivityStarted", frame.prev, lambda: {"workerName": worker})
            self.persist(frame)
            remaining = None if deadline is None else max(0.0, deadline - self.clock.now())
            return await self.recorded(
                frame, "Activity", wait_for_token(waiter, self.clock, remaining, heartbeat))
        finally:
            self.services.tokens.discard(token)
            self.services.activities.cancel(arn, task)

    # ------------------------------------------------------------------ parallel / map

    async def run_parallel(self, state: State, data: JSON, frame: Frame, entered: int,
                           entered_time: float, resume: dict[str, Any] | None) -> tuple[
                               str | None, JSON]:
        restart = [resume] if _reuses_frames(resume) else []

        async def attempt(retry: int) -> JSON:
            if state.jsonata:
                b = self.jsonata_bindings(state, data, frame, entered_time, retry)
                value = (jsonata.evaluate_template(state.arguments, b)
                         if state.has_arguments else data)
            else:
                env = Env(data, self.lazy_context(state, entered_time, retry), frame.variables)
                value = self.select(state.input_path, data, env)
                self.note(frame, "afterInputPath", value)
                if state.parameters is not None:
                    value = state.parameters(env.with_input(value))
                    self.note(frame, "afterParameters", value)
            resuming = bool(restart and restart.pop())
            if not resuming:
                self.drop_sub_frames(frame, state)
            started = self.started_event(frame, "ParallelStateStarted", resume, resuming)

            async def branch(index: int, machine: Machine) -> JSON:
                path = self.sub_path(frame, state, index)
                saved = self.saved_frames.pop(path, None) if resuming else None
                if saved is not None and saved.get("done"):
                    return saved["output"]
                child = self.child_frame(frame, started, path, saved)
                output = await self.run_frame(machine, value, child, saved)
                self.record_done(path, {"done": True, "output": output})
                return output

            try:
                results = await _gather_fail_fast(
                    [branch(i, machine) for i, machine in enumerate(state.branches)])
            except StatesFailure:
                frame.prev = self.add("ParallelStateFailed", frame.prev)
                raise
            self.drop_sub_frames(frame, state)
            frame.prev = self.add("ParallelStateSucceeded", frame.prev)
            self.note(frame, "result", results)
            if not state.jsonata and state.result_selector is not None:
                selected = state.result_selector(env.with_input(results))
                self.note(frame, "afterResultSelector", selected)
                return selected
            return results

        result = await self.with_retry(state, frame, resume, attempt)
        return state.next, self.complete(state, data, result, frame, entered_time)

    def started_event(self, frame: Frame, event_type: str, resume: dict[str, Any] | None,
                      resuming: bool, details: Callable[[], dict[str, Any]] | None = None) -> int:
        """A Parallel/Map attempt's ``…Started`` event: the one recorded before a restart when
        resuming, else (a fresh attempt, a redrive) a new one the frame's checkpoint remembers."""
        if resuming and resume is not None and resume.get("started"):
            frame.prev = int(resume["started"])
            return frame.prev
        frame.prev = self.add(event_type, frame.prev, details)
        if frame.top or self.durable:
            frame.cp["started"] = frame.prev
            self.mark(frame)
        return frame.prev

    def child_frame(self, parent: Frame, prev: int, path: str,
                    saved: dict[str, Any] | None) -> Frame:
        if saved is None:
            return Frame(prev, dict(parent.variables), False, path)
        return Frame(int(saved["prev"]), dict(saved.get("variables", {})), False, path)

    async def run_frame(self, machine: Machine, value: JSON, child: Frame,
                        saved: dict[str, Any] | None) -> JSON:
        """A branch or iteration from its start, or from its checkpoint after a restart."""
        if saved is None:
            return await self.run_machine(machine, value, child)
        return await self.run_machine(machine, saved["input"], child, saved["state"], saved)

    def record_done(self, path: str, record: dict[str, Any]) -> None:
        """A finished branch/iteration: a restart takes its result instead of rerunning it."""
        if self.durable:
            self.frame_writes.append((path, record))

    def complete(self, state: State, data: JSON, result: JSON, frame: Frame,
                 entered_time: float) -> JSON:
        if state.jsonata:
            b = self.jsonata_bindings(state, data, frame, entered_time, 0)
            b["states"]["result"] = result
            return self.jsonata_finish(state, b, result, frame)
        env = Env(data, self.lazy_context(state, entered_time, 0), frame.variables)
        return self.finish(state, data, result, frame, env, result)

    async def run_map(self, state: State, data: JSON, frame: Frame, entered: int,
                      entered_time: float, resume: dict[str, Any] | None) -> tuple[
                          str | None, JSON]:
        restart = [resume] if _reuses_frames(resume) else []

        async def attempt(retry: int) -> JSON:
            resuming = bool(restart and restart.pop())
            return await self.map_attempt(state, data, frame, entered, entered_time, retry,
                                          resume if resuming else None)

        result = await self.with_retry(state, frame, resume, attempt)
        return state.next, self.complete(state, data, result, frame, entered_time)

    def map_number(self, state: State, static: JSON, path: Path | None, env: Env,
                   b: dict[str, Any], field_name: str, percentage: bool = False) -> float | None:
        if path is not None:
            value = resolve_path(path, env)
            source = f"{field_name}Path"
        elif isinstance(static, str):
            value = jsonata.evaluate_template(static, b)
            source = field_name
        else:
            return None if static is None else float(static)
        ok = (not isinstance(value, bool) and isinstance(value, int | float)
              and (percentage or float(value).is_integer()) and value >= 0
              and (not percentage or value <= 100))
        if not ok:
            kind = "a valid percentage" if percentage else "a valid integer"
            raise PathFailure(f"The {source} field refers to value \"{_plain(value)}\" which "
                              f"is not {kind}")
        return float(value)

    async def map_attempt(self, state: State, data: JSON, frame: Frame, entered: int,
                          entered_time: float, retry: int,
                          resume: dict[str, Any] | None = None) -> JSON:
        assert state.processor is not None
        # Kiln has no S3: a reader or writer naming an S3 resource fails like an unreachable
        # bucket, before any child runs (AWS would run the children, then fail the write).
        if isinstance(state.item_reader, dict):
            raise StatesFailure("States.ItemReaderFailed", _NO_S3.format(
                state.item_reader.get("Resource")))
        if isinstance(state.result_writer, dict) and "Resource" in state.result_writer:
            raise StatesFailure("States.ResultWriterFailed", _NO_S3.format(
                state.result_writer.get("Resource")))
        b: dict[str, Any] = {}
        env = Env(data, self.lazy_context(state, entered_time, retry), frame.variables)
        if state.jsonata:
            b = self.jsonata_bindings(state, data, frame, entered_time, retry)
            value = (jsonata.evaluate_template(state.arguments, b)
                     if state.has_arguments else data)
            items = jsonata.evaluate_template(state.items, b) if state.has_items else value
            if not isinstance(items, list):
                raise jsonata.JsonataError(
                    "The Items field returned an unexpected result type. Expected 'array', but "
                    f"was '{_json_type(items)}' for value: {dumps(items)}")
        else:
            value = self.select(state.input_path, data, env)
            self.note(frame, "afterInputPath", value)
            items = self.select(state.items_path, value, env)
            self.note(frame, "afterItemsPath", items)
            if not isinstance(items, list):
                raise PathFailure(
                    f"Invalid path '{state.items_path.source if state.items_path else '$'}' : "
                    "The ItemsPath field refers to a value which is not a JSON array: "
                    f"{dumps(items)}")
        concurrency = self.map_number(state, state.max_concurrency, state.max_concurrency_path,
                                      env.with_input(value), b, "MaxConcurrency") or 0
        tolerated_count = self.map_number(state, state.tolerated_count,
                                          state.tolerated_count_path, env.with_input(value), b,
                                          "ToleratedFailureCount")
        tolerated_pct = self.map_number(state, state.tolerated_percentage,
                                        state.tolerated_percentage_path,
                                        env.with_input(value), b,
                                        "ToleratedFailurePercentage", percentage=True)
        inputs = self.map_inputs(state, items, value, env, b)
        if state.distributed:
            # A restart or a redrive continues the Map Run the state had started.
            continued = resume if resume is not None and resume.get("map_run") else None
            if continued is None:
                self.drop_sub_frames(frame, state)
            self.started_event(frame, "MapStateStarted", continued, bool(
                continued and continued.get("started")), lambda: {"length": len(inputs)})
            try:
                output: JSON = await self.map_run(
                    state, inputs, frame, int(concurrency),
                    None if tolerated_count is None else int(tolerated_count), tolerated_pct,
                    continued)
            except StatesFailure:
                frame.prev = self.add("MapStateFailed", frame.prev)
                raise
        else:
            if resume is None:
                self.drop_sub_frames(frame, state)
            self.started_event(frame, "MapStateStarted", resume, resume is not None,
                               lambda: {"length": len(inputs)})
            output = await self.inline_map(state, inputs, frame, int(concurrency),
                                           tolerated_count, tolerated_pct, resume is not None)
        frame.prev = self.add("MapStateSucceeded", frame.prev)
        self.note(frame, "result", output)
        if not state.jsonata and state.result_selector is not None:
            output = state.result_selector(env.with_input(output))
            self.note(frame, "afterResultSelector", output)
        return output

    async def inline_map(self, state: State, inputs: list[JSON], frame: Frame,
                         concurrency: int, tolerated_count: float | None,
                         tolerated_pct: float | None, resuming: bool) -> list[JSON]:
        """Iterations inside this execution's history (MapIteration* events)."""
        assert state.processor is not None
        processor = state.processor
        started = frame.prev
        results: list[JSON] = [None] * len(inputs)
        failed = 0
        tolerant = tolerated_count is not None or tolerated_pct is not None
        last = [started]

        async def iteration(index: int) -> None:
            nonlocal failed
            path = self.sub_path(frame, state, index)
            saved = self.saved_frames.pop(path, None) if resuming else None
            if saved is not None and saved.get("done"):
                results[index] = saved["output"]
                last[0] = max(last[0], int(saved["last"]))
                failed += bool(saved.get("failed"))
                return
            prev = started if saved is not None else self.add(
                "MapIterationStarted", started, lambda: {"name": state.name, "index": index})
            child = self.child_frame(frame, prev, path, saved)
            try:
                results[index] = await self.run_frame(processor, inputs[index], child, saved)
            except StatesFailure as failure:
                last[0] = self.add("MapIterationFailed", child.prev, lambda: {
                    "name": state.name, "index": index})
                if not tolerant:
                    raise
                failed += 1
                results[index] = _error_details_obj(failure)
                self.record_done(path, {"done": True, "output": results[index],
                                        "failed": True, "last": last[0]})
                return
            last[0] = self.add("MapIterationSucceeded", child.prev, lambda: {
                "name": state.name, "index": index})
            self.record_done(path, {"done": True, "output": results[index], "last": last[0]})

        try:
            await _run_bounded(iteration, len(inputs), concurrency)
        except StatesFailure:
            frame.prev = self.add("MapStateFailed", last[0])
            raise
        frame.prev = last[0]
        if exceeds_tolerance(failed, len(inputs), tolerated_count, tolerated_pct):
            frame.prev = self.add("MapStateFailed", last[0])
            raise StatesFailure("States.ExceedToleratedFailureThreshold", _THRESHOLD)
        self.drop_sub_frames(frame, state)
        return results

    async def map_run(self, state: State, inputs: list[JSON], frame: Frame, concurrency: int,
                      tolerated_count: int | None, tolerated_pct: float | None,
                      continued: dict[str, Any] | None = None) -> JSON:
        """A Distributed Map: child workflow executions with their own (unkept) histories.

        Each finished child is checkpointed, so a restart or redrive of the parent continues
        the same Map Run with the children that had not succeeded (from their start).
        """
        assert state.processor is not None
        prefix = f"arn:aws:states:{self.services.region}:{self.services.account_id}"
        base = f"{self.info.machine_name}/{state.label or state.name}"
        express = state.child_type == "EXPRESS"
        results: list[JSON] = [None] * len(inputs)
        run = self.services.map_runs.load(str(continued["map_run"])) if continued else None
        if run is not None and len(run.children) == len(inputs):
            assert continued is not None
            self.restore_children(state, frame, run, results)
            self.services.map_runs.start(run)
            if continued.get("redriven"):
                run.redrive_count += 1
                run.redrive_date = self.clock.now()
                details = {"mapRunArn": run.arn, "redriveCount": run.redrive_count}
                frame.prev = self.add("MapRunRedriven", frame.prev, lambda: details)
                self.persist(frame, map_run=run.arn, run_event=frame.prev)
            else:
                frame.prev = int(continued["run_event"])
        else:
            children = []
            for item in inputs:
                name = str(uuid.uuid4())
                arn = (f"{prefix}:express:{base}:{name}:{uuid.uuid4()}" if express
                       else f"{prefix}:execution:{base}:{name}")
                children.append(Child(arn, name, len(item["Items"]) if state.batcher else 1))
            run = self.services.map_runs.start(MapRun(
                f"{prefix}:mapRun:{base}:{uuid.uuid4()}", self.info.arn,
                f"{prefix}:stateMachine:{base}", self.clock.now(), concurrency, tolerated_count,
                tolerated_pct, children))
            frame.prev = self.add("MapRunStarted", frame.prev, lambda: {"mapRunArn": run.arn})
            self.persist(frame, map_run=run.arn, run_event=frame.prev)

        async def child_execution(index: int) -> None:
            child = run.children[index]
            if child.status != "PENDING":  # finished before a restart or redrive
                return
            child.status, child.started = "RUNNING", self.clock.now()
            info = ExecutionInfo(child.arn, child.name, run.machine_arn, base,
                                 self.info.role_arn, inputs[index], child.started,
                                 express=express)
            interp = Interpreter(self.services, self.machine, info, History(self.clock, keep=False),
                                 self.rng)
            interp.parent = self
            try:
                # Distributed children cannot see the parent's variables.
                output = await interp.run_machine(state.processor,  # type: ignore[arg-type]
                                                  inputs[index], Frame(0, {}, False))
            except StatesFailure as failure:
                child.stopped = self.clock.now()
                child.status = "TIMED_OUT" if failure.error == "States.Timeout" else "FAILED"
                results[index] = _child_record(run, child, inputs[index], failure=failure)
                self.record_child(state, frame, index, child, results[index])
                if run.over_tolerance():
                    raise StatesFailure("States.ExceedToleratedFailureThreshold",
                                        _THRESHOLD) from None
                return
            child.stopped = self.clock.now()
            child.status = "SUCCEEDED"
            results[index] = output
            self.record_child(state, frame, index, child, output)

        try:
            await _run_adaptive(child_execution, len(inputs), run)
        except StatesFailure as failure:
            self.services.map_runs.finish(run, "FAILED", self.clock.now(), failure.error,
                                          failure.cause)
            frame.prev = self.add("MapRunFailed", frame.prev,
                                  partial(_error_details, failure))
            raise
        except asyncio.CancelledError:
            self.services.map_runs.finish(run, "ABORTED", self.clock.now())
            raise
        self.services.map_runs.finish(run, "SUCCEEDED", self.clock.now())
        frame.prev = self.add("MapRunSucceeded", frame.prev)
        self.drop_sub_frames(frame, state)
        return _transform(state.result_writer, run, inputs, results)

    def record_child(self, state: State, frame: Frame, index: int, child: Child,
                     result: JSON) -> None:
        self.record_done(self.sub_path(frame, state, index), {
            "done": True, "output": result, "status": child.status, "started": child.started,
            "stopped": child.stopped, "failed": child.status != "SUCCEEDED"})

    def restore_children(self, state: State, frame: Frame, run: MapRun,
                         results: list[JSON]) -> None:
        """Children with a checkpointed end keep it; the others run again."""
        run.status, run.stopped, run.error, run.cause = "RUNNING", None, None, None
        for index, child in enumerate(run.children):
            saved = self.saved_frames.pop(self.sub_path(frame, state, index), None)
            if saved is not None and saved.get("done"):
                child.status, child.started, child.stopped = (
                    saved["status"], saved["started"], saved["stopped"])
                results[index] = saved["output"]
            else:
                child.status, child.started, child.stopped = "PENDING", None, None

    def map_inputs(self, state: State, items: list[JSON], value: JSON, env: Env,
                   b: dict[str, Any]) -> list[JSON]:
        if state.has_item_selector:
            inputs = []
            for index, item in enumerate(items):
                extra = {"Map": {"Item": {"Index": index, "Value": item}}}
                if state.jsonata:
                    bb = dict(b)
                    bb["states"] = {**b["states"],
                                    "context": {**b["states"]["context"], **extra}}
                    inputs.append(jsonata.evaluate_template(state.jsonata_item_selector, bb))
                else:
                    assert state.item_selector is not None
                    ctx = {**context_of(env), **extra}
                    inputs.append(state.item_selector(Env(value, ctx, env.variables)))
        else:
            inputs = list(items)
        if state.batcher is not None:
            inputs = self.batch(state, inputs, value, env, b)
        return inputs

    def batch(self, state: State, items: list[JSON], value: JSON, env: Env,
              b: dict[str, Any]) -> list[JSON]:
        """ItemBatcher: ``{"Items": [...], "BatchInput": ...}`` per child, within both limits.

        MaxInputBytesPerBatch bounds the whole batch document (Items and BatchInput).
        """
        conf = state.batcher
        assert isinstance(conf, dict)
        size = self.batch_limit(state, conf, "MaxItemsPerBatch", env.with_input(value), b)
        max_bytes = self.batch_limit(state, conf, "MaxInputBytesPerBatch",
                                     env.with_input(value), b)
        batch_input = conf.get("BatchInput")
        if isinstance(batch_input, dict) and not state.jsonata:
            batch_input = compile_template(batch_input, "")(env.with_input(value))
        elif batch_input is not None and state.jsonata:
            batch_input = jsonata.evaluate_template(batch_input, b)
        # '{"Items":[' ']}' and ',"BatchInput":<json>'; each item adds its JSON and a comma
        # (the comma counted for the first item pays for the closing ']').
        empty = 11 + (0 if batch_input is None else 14 + len(dumps(batch_input).encode()))
        batches: list[list[JSON]] = []
        current: list[JSON] = []
        current_bytes = empty
        for item in items:
            item_bytes = len(dumps(item).encode()) + 1 if max_bytes else 0
            full = (size is not None and len(current) >= size) or (
                max_bytes is not None and current and current_bytes + item_bytes > max_bytes)
            if full:
                batches.append(current)
                current, current_bytes = [], empty
            current.append(item)
            current_bytes += item_bytes
        if current:
            batches.append(current)
        out: list[JSON] = []
        for chunk in batches:
            entry: dict[str, JSON] = {"Items": chunk}
            if batch_input is not None:
                entry["BatchInput"] = batch_input
            out.append(entry)
        return out

    def batch_limit(self, state: State, conf: dict[str, Any], key: str, env: Env,
                    b: dict[str, Any]) -> int | None:
        path = _path(conf[key + "Path"]) if key + "Path" in conf else None
        value = self.map_number(state, conf.get(key), path, env, b, key)
        if value is None:
            return None
        limit = MAX_BATCH_BYTES if key == "MaxInputBytesPerBatch" else None
        if value <= 0 or (limit is not None and value > limit):
            source = f"{key}Path" if path is not None else key
            raise PathFailure(f"The {source} field refers to value \"{int(value)}\" which is "
                              "not a valid integer" if limit is None else
                              f"The {source} field refers to value \"{int(value)}\" which "
                              f"is not between 1 and {limit}")
        return int(value)


_NO_S3 = ("The resource '{}' is not available in Kiln: there is no S3 service to read from or "
          "write to")
_THRESHOLD = "The specified tolerated failure threshold was exceeded"


def _child_record(run: MapRun, child: Child, item: JSON, output: JSON = None,
                  failure: StatesFailure | None = None) -> dict[str, JSON]:
    """A child execution as ResultWriter's NONE transformation reports it."""
    record: dict[str, JSON] = {
        "ExecutionArn": child.arn, "Input": dumps(item), "InputDetails": {"Included": True},
        "Name": child.name, "RedriveCount": 0, "RedriveStatus": "NOT_REDRIVABLE",
        "StartDate": iso(child.started or run.started), "StateMachineArn": run.machine_arn,
        "Status": child.status, "StopDate": iso(child.stopped or run.started),
    }
    if failure is None:
        record.update(Output=dumps(output), OutputDetails={"Included": True})
    else:
        record.update(_error_details_obj(failure))
    return record


def _transform(writer: JSON, run: MapRun, inputs: list[JSON], results: list[JSON]) -> JSON:
    """ResultWriter.WriterConfig.Transformation over the children's results (default COMPACT).

    Failed children keep their full record under every transformation.
    """
    config = writer.get("WriterConfig") if isinstance(writer, dict) else None
    mode = config.get("Transformation", "COMPACT") if isinstance(config, dict) else "COMPACT"
    if mode == "NONE":
        return [result if child.status != "SUCCEEDED" else
                _child_record(run, child, item, output=result)
                for child, item, result in zip(run.children, inputs, results, strict=True)]
    if mode == "FLATTEN":
        flat: list[JSON] = []
        for child, result in zip(run.children, results, strict=True):
            if child.status == "SUCCEEDED" and isinstance(result, list):
                flat.extend(result)
            else:
                flat.append(result)
        return flat
    return results


def _coalesce(writes: list[tuple[str, Frame | dict[str, Any] | None]]) -> list[
        tuple[str, dict[str, Any] | None]]:
    """The frame writes that still matter, in order: a later write of the same path, or a later
    drop of a prefix above it, makes a write moot (a Map's iterations finished within one
    commit are never written at all)."""
    dropped: set[str] = set()
    seen: set[str] = set()
    kept: list[tuple[str, dict[str, Any] | None]] = []
    for path, value in reversed(writes):
        if isinstance(value, Frame):
            value.dirty = False
        # Prefixes that could drop this path: each '/Name[' step down to it.
        if path in seen or (dropped and any(
                path[:i + 1] in dropped for i, c in enumerate(path)
                if c == "[" and i + 1 < len(path))):
            continue
        if value is None:
            dropped.add(path)
        seen.add(path)
        kept.append((path, value.cp if isinstance(value, Frame) else value))
    kept.reverse()
    return kept


def _reuses_frames(resume: dict[str, Any] | None) -> bool:
    """Whether a Parallel/Map resumes from its branches' checkpoints: after a restart (its
    ``…Started`` event exists) or a redrive (its finished branches are kept)."""
    return resume is not None and bool(resume.get("started") or resume.get("redriven"))


def _path(text: str) -> Path:
    from kiln.states.jsonpath import compile_path

    return compile_path(text)


def _plain(value: JSON) -> str:
    return value if isinstance(value, str) else dumps(value)


def _json_type(value: JSON) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def _limits(timeout: float | None, heartbeat: float | None) -> dict[str, int]:
    """A *Scheduled event's timeoutInSeconds and heartbeatInSeconds, those that are set."""
    out = {}
    if timeout is not None:
        out["timeoutInSeconds"] = int(timeout)
    if heartbeat is not None:
        out["heartbeatInSeconds"] = int(heartbeat)
    return out


def _error_details(failure: StatesFailure) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if failure.error:
        out["error"] = failure.error
    if failure.cause is not None:
        out["cause"] = failure.cause
    return out


def _error_details_obj(failure: StatesFailure) -> dict[str, Any]:
    out: dict[str, Any] = {"Error": failure.error}
    if failure.cause is not None:
        out["Cause"] = failure.cause
    return out


async def _cancel_all(tasks: Collection[asyncio.Future[Any]]) -> None:
    """Cancel ``tasks`` and wait until each has unwound (one failure ends its siblings)."""
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def _gather_fail_fast(work: Sequence[Awaitable[T]]) -> list[T]:
    tasks = [asyncio.ensure_future(w) for w in work]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        await _cancel_all(tasks)
        raise


async def _run_adaptive(fn: Callable[[int], Awaitable[None]], count: int, run: MapRun) -> None:
    """Like _run_bounded, but the limit is ``run.limit()``, re-read when UpdateMapRun sets
    ``run.changed``: more workers start at once, surplus ones retire after their current child.
    """
    assert run.changed is not None
    wake = run.changed
    cursor = [0]
    workers: set[asyncio.Future[None]] = set()

    async def worker() -> None:
        try:
            while cursor[0] < count:
                index = cursor[0]
                cursor[0] += 1
                await fn(index)
                if len(workers) > run.limit():
                    return
        finally:
            wake.set()

    try:
        while True:
            wake.clear()
            for task in [t for t in workers if t.done()]:
                workers.discard(task)
                task.result()  # the first failure wins
            if not workers and cursor[0] >= count:
                return
            while cursor[0] < count and len(workers) < run.limit():
                workers.add(asyncio.ensure_future(worker()))
            await wake.wait()
    except BaseException:
        await _cancel_all(workers)
        raise


async def _run_bounded(fn: Callable[[int], Awaitable[None]], count: int, limit: int) -> None:
    """Run fn(0..count-1) with at most ``limit`` at once (0: no limit); first failure wins."""
    if count == 0:
        return
    workers = min(count, INLINE_UNBOUNDED if limit <= 0 else limit)
    cursor = iter(range(count))

    async def worker() -> None:
        for index in cursor:
            await fn(index)

    if workers == 1:
        await worker()
        return
    await _gather_fail_fast([worker() for _ in range(workers)])


Handler = Callable[
    [Interpreter, State, JSON, Frame, int, float, dict[str, Any] | None],
    Awaitable[tuple[str | None, JSON]],
]
_HANDLERS: dict[str, Handler] = {
    "Pass": Interpreter.run_pass,
    "Task": Interpreter.run_task,
    "Choice": Interpreter.run_choice,
    "Wait": Interpreter.run_wait,
    "Succeed": Interpreter.run_succeed,
    "Fail": Interpreter.run_fail,
    "Parallel": Interpreter.run_parallel,
    "Map": Interpreter.run_map,
}
