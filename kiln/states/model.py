"""The compiled form of a state machine: what the interpreter walks."""

from __future__ import annotations

from dataclasses import dataclass, field

from kiln.states.choice import Rule
from kiln.states.jsonpath import Path, compile_path
from kiln.states.payload import Expression
from kiln.states.types import JSON

ROOT = compile_path("$")


@dataclass(eq=False)
class Retrier:
    errors: tuple[str, ...]
    interval: float = 1.0
    max_attempts: int = 3
    backoff: float = 2.0
    max_delay: float | None = None
    jitter: bool = False


@dataclass(eq=False)
class Catcher:
    errors: tuple[str, ...]
    next: str
    result_path: Path | None = ROOT
    assign: Expression | None = None
    output: JSON = None  # JSONata
    has_output: bool = False
    jsonata_assign: JSON = None


@dataclass(eq=False)
class State:
    name: str
    type: str
    next: str | None = None
    end: bool = False
    jsonata: bool = False
    input_path: Path | None = ROOT
    output_path: Path | None = ROOT
    result_path: Path | None = ROOT
    parameters: Expression | None = None
    result_selector: Expression | None = None
    assign: Expression | None = None
    retry: list[Retrier] = field(default_factory=list)
    catch: list[Catcher] = field(default_factory=list)
    # JSONata: raw templates (strings of the form "{% expr %}" are evaluated)
    arguments: JSON = None
    has_arguments: bool = False
    output: JSON = None
    has_output: bool = False
    jsonata_assign: JSON = None
    # Pass
    result: JSON = None
    has_result: bool = False
    # Task
    resource: str = ""
    timeout_seconds: JSON = None
    timeout_path: Path | None = None
    heartbeat_seconds: JSON = None
    heartbeat_path: Path | None = None
    # Choice
    choices: list[Choice] = field(default_factory=list)
    default: str | None = None
    # Wait
    seconds: JSON = None
    timestamp: JSON = None
    seconds_path: Path | None = None
    timestamp_path: Path | None = None
    # Fail
    error: JSON = None
    cause: JSON = None
    error_path: Expression | None = None
    cause_path: Expression | None = None
    # Parallel
    branches: list[Machine] = field(default_factory=list)
    # Map
    processor: Machine | None = None
    items_path: Path | None = ROOT
    items: JSON = None  # JSONata
    has_items: bool = False
    item_selector: Expression | None = None
    jsonata_item_selector: JSON = None
    has_item_selector: bool = False
    max_concurrency: JSON = 0
    max_concurrency_path: Path | None = None
    tolerated_count: JSON = None
    tolerated_count_path: Path | None = None
    tolerated_percentage: JSON = None
    tolerated_percentage_path: Path | None = None
    distributed: bool = False
    child_type: str = "STANDARD"  # ProcessorConfig.ExecutionType of Distributed children
    batcher: JSON = None
    item_reader: JSON = None
    result_writer: JSON = None
    label: str | None = None


@dataclass(eq=False)
class Choice:
    rule: Rule | None
    next: str
    assign: Expression | None = None
    condition: JSON = None  # JSONata
    jsonata_assign: JSON = None
    output: JSON = None
    has_output: bool = False


@dataclass(eq=False)
class Machine:
    start_at: str
    states: dict[str, State]
    timeout_seconds: int | None = None
    jsonata: bool = False
    uses_callbacks: bool = False
