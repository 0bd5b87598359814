"""The function logs: blocks appended now or rendered later keep their order."""

from __future__ import annotations

from pathlib import Path

from kiln.invoke.logs import LogStore


async def test_deferred_blocks_keep_their_place(tmp_path: Path) -> None:
    logs = LogStore(tmp_path)  # in a loop: flushed by a timer, not at once
    rendered: list[str] = []

    def block(text: str) -> str:
        rendered.append(text)
        return text

    logs.defer("fn", lambda: block("one\n"))
    logs.defer("other", lambda: block("elsewhere\n"))
    assert rendered == []  # not made until something needs it
    logs.append("fn", "two\n")  # written after what was deferred before it
    logs.defer("fn", lambda: block("three\n"))
    text, offset = logs.read("fn")  # a read renders what is pending
    assert text == "one\ntwo\nthree\n" and offset == len(text)
    assert logs.read("other")[0] == "elsewhere\n"


def test_removed_functions_lose_their_pending_blocks(tmp_path: Path) -> None:
    logs = LogStore(tmp_path)
    logs.defer("gone", lambda: "never\n")
    logs.defer("kept", lambda: "kept\n")
    logs.remove("gone")
    logs.close()  # renders the rest
    assert not logs.path("gone").exists()
    assert logs.path("kept").read_text() == "kept\n"
