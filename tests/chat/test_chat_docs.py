"""The Python example in docs/chat.md runs against a live server and does what it says."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from chat_helpers import ServedChat

DOC = Path(__file__).parents[2] / "docs" / "chat.md"


async def test_python_example_in_docs_runs(chat: ServedChat) -> None:
    """The documented client example posts a message and sees it come back, in order."""
    code = re.search(r"```python\n(.*?)```", DOC.read_text(), re.S)
    assert code is not None, "docs/chat.md lost its Python example"
    namespace: dict[str, Any] = {}
    exec(compile(code.group(1), str(DOC), "exec"), namespace)  # noqa: S102 - our own doc
    token = await chat.user("call-center", "lobby")
    seen = await namespace["example"](chat.ws, token)
    assert seen == ["hello from the call center"]
