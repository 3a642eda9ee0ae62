"""The LangGraph peer the benchmarks compare agentstream with.

A LangGraph 1.x tool-calling agent as its documentation builds one: a StateGraph over
`MessagesState` with an `agent` node (the model), the prebuilt `ToolNode`, routing by
`tools_condition`, and an `AsyncSqliteSaver` checkpointer on a file, one thread per run,
all in one process. The benchmarks bring the agent node: an instant scripted one
(bench_agent_loop.py) or `openai_chat_node`, which asks an OpenAI-compatible server
through one shared httpx client (bench_concurrency.py).

Benchmark-only dependencies (`pip install -e '.[bench]'`): langgraph and
langgraph-checkpoint-sqlite; they are imported only when a peer is built, so scripts can
skip the comparison when they are missing (`versions()` is None).
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import httpx

INSTALL_HINT = "pip install -e '.[bench]'   (langgraph, langgraph-checkpoint-sqlite)"

AgentNode = Callable[..., Awaitable[dict[str, Any]]]
"""`async (state: MessagesState, config: RunnableConfig) -> {"messages": [AIMessage]}`."""


def versions() -> dict[str, str] | None:
    """The installed versions of LangGraph and its checkpointer, or None if missing."""
    try:
        from importlib.metadata import version

        import langgraph.checkpoint.sqlite.aio
        import langgraph.graph
        import langgraph.prebuilt  # noqa: F401
    except ImportError:
        return None
    return {
        p: version(p)
        for p in (
            "langgraph",
            "langgraph-checkpoint",
            "langgraph-checkpoint-sqlite",
            "langchain-core",
            "aiosqlite",
        )
    }


class LangGraphAgent:
    """A compiled LangGraph agent with a SQLite checkpointer; `invoke` runs one thread."""

    def __init__(
        self, agent: AgentNode, tools: Sequence[Any], checkpoints: Path, durability: str = "async"
    ) -> None:
        """`tools`: LangChain tools (`langchain_core.tools.tool`). `durability`: LangGraph's
        checkpoint durability, `async` (its default), `sync` or `exit`."""
        self.agent = agent
        self.tools = list(tools)
        self.checkpoints = checkpoints
        self.durability = durability
        self.synchronous: int | None = None
        """SQLite's `PRAGMA synchronous` of the checkpointer's connection (2 = full)."""
        self._stack = contextlib.AsyncExitStack()
        self._graph: Any = None

    async def start(self) -> None:
        from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver
        from langgraph.graph import START, MessagesState, StateGraph
        from langgraph.prebuilt import ToolNode, tools_condition

        builder = StateGraph(MessagesState)
        builder.add_node("agent", self.agent)
        builder.add_node("tools", ToolNode(self.tools))
        builder.add_edge(START, "agent")
        builder.add_conditional_edges("agent", tools_condition)
        builder.add_edge("tools", "agent")
        saver = await self._stack.enter_async_context(
            AsyncSqliteSaver.from_conn_string(str(self.checkpoints))
        )
        await saver.setup()
        async with saver.conn.execute("PRAGMA synchronous") as cursor:
            row = await cursor.fetchone()
            self.synchronous = int(row[0]) if row else None
        self._graph = builder.compile(checkpointer=saver)

    async def stop(self) -> None:
        await self._stack.aclose()

    async def invoke(self, goal: str, **configurable: Any) -> list[Any]:
        """Run one new thread from `goal` to its end; returns the thread's messages.
        `configurable` reaches the nodes as `config["configurable"]`."""
        from langchain_core.messages import HumanMessage

        config = {
            "configurable": {"thread_id": str(uuid.uuid4()), **configurable},
            "recursion_limit": 100,
        }
        state = await self._graph.ainvoke(
            {"messages": [HumanMessage(content=goal)]}, config, durability=self.durability
        )
        return list(state["messages"])


def wire_messages(messages: Sequence[Any]) -> list[dict[str, Any]]:
    """LangChain messages as Chat Completions `messages`."""
    from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage

    out: list[dict[str, Any]] = []
    for m in messages:
        if isinstance(m, SystemMessage):
            out.append({"role": "system", "content": str(m.content)})
        elif isinstance(m, HumanMessage):
            out.append({"role": "user", "content": str(m.content)})
        elif isinstance(m, AIMessage):
            entry: dict[str, Any] = {"role": "assistant", "content": str(m.content) or None}
            if m.tool_calls:
                entry["tool_calls"] = [
                    {
                        "id": c["id"],
                        "type": "function",
                        "function": {"name": c["name"], "arguments": json.dumps(c["args"])},
                    }
                    for c in m.tool_calls
                ]
            out.append(entry)
        elif isinstance(m, ToolMessage):
            out.append({"role": "tool", "tool_call_id": m.tool_call_id, "content": str(m.content)})
    return out


def openai_chat_node(
    client: httpx.AsyncClient, base_url: str, tool_schemas: Sequence[dict[str, Any]]
) -> AgentNode:
    """An agent node that asks `POST {base_url}/chat/completions` for the next message;
    the model is the run's `configurable["model"]`."""

    from langchain_core.messages import AIMessage
    from langchain_core.runnables import RunnableConfig

    async def agent(state: dict[str, Any], config: RunnableConfig) -> dict[str, Any]:

        body = {
            "model": (config.get("configurable") or {})["model"],
            "messages": wire_messages(state["messages"]),
            "tools": list(tool_schemas),
        }
        response = await client.post(f"{base_url}/chat/completions", json=body)
        response.raise_for_status()
        message = response.json()["choices"][0]["message"]
        calls = [
            {"name": c["function"]["name"], "args": json.loads(c["function"]["arguments"]), "id": c["id"]}
            for c in message.get("tool_calls") or []
        ]
        return {"messages": [AIMessage(content=message.get("content") or "", tool_calls=calls)]}

    # LangGraph passes the run's config to a node whose `config` parameter is annotated
    # RunnableConfig; it reads the annotation itself, not a string of it.
    agent.__annotations__["config"] = RunnableConfig
    return agent
