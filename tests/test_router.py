"""``Router``: dispatch, pydantic validation answered with the error envelope, middleware,
unknown routes; run on a real server (BackendServer's responder) behind ``pool.request``
and on the client side with ``session.serve``."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pydantic
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wsclient import RateLimit, RouteContext, RouteError, Router, log_messages
from wsclient.testing import BackendServer

from .conftest import PoolFactory, until


class ChatSend(pydantic.BaseModel):
    room: str
    text: str = pydantic.Field(min_length=1, max_length=20)


def _router() -> Router:
    router = Router()

    @router.route("chat", "send", model=ChatSend)
    async def chat_send(data: ChatSend, ctx: RouteContext) -> dict[str, Any]:
        return {"room": data.room, "echo": data.text.upper()}

    @router.route("chat", "boom")
    async def boom(data: Any, ctx: RouteContext) -> None:
        raise RuntimeError("secret internals")

    return router


def _msg(action: str, data: Any, **extra: Any) -> str:
    return json.dumps({"type": "chat", "action": action, "data": data, **extra})


async def test_router_on_a_real_server_answers_pool_requests(
    make_pool: PoolFactory,
) -> None:
    """A server whose responder is a Router: replies carry the request id, so pool.request
    gets its own; a validation failure comes back as the error envelope, not a crash."""
    router = _router()
    async with BackendServer(on_message=router.dispatch) as server:
        pool = await make_pool([server], max_connections=4)
        ok, bad = await asyncio.gather(
            pool.request({"type": "chat", "action": "send", "data": {"room": "r", "text": "hi"}}),
            pool.request({"type": "chat", "action": "send", "data": {"room": "r", "text": ""}}),
        )
        assert ok["data"] == {"room": "r", "echo": "HI"} and ok["type"] == "chat"
        assert bad["type"] == "error" and bad["action"] == "invalid_data"
        assert bad["data"]["route"] == "chat.send"
        assert bad["data"]["details"][0]["loc"] == ["text"]
        assert "input" not in bad["data"]["details"][0]  # the sent values are not echoed
        # The server is still serving after the failure.
        again = await pool.request(
            {"type": "chat", "action": "send", "data": {"room": "x", "text": "y"}}
        )
        assert again["data"]["echo"] == "Y"


async def test_unknown_route_bad_message_and_handler_error_replies() -> None:
    """Each failure has its envelope; a raising handler's message is not sent."""
    router = _router()
    unknown = json.loads(await router.dispatch(_msg("nope", {}, id=3)) or "null")
    assert unknown == {
        "type": "error",
        "action": "unknown_route",
        "data": {"route": "chat.nope", "message": "no handler for chat.nope", "details": []},
        "id": 3,
    }
    bad = json.loads(await router.dispatch("{not json") or "null")
    assert bad["action"] == "bad_message"
    boom = json.loads(await router.dispatch(_msg("boom", None)) or "null")
    assert boom["action"] == "internal_error" and "secret" not in json.dumps(boom)
    # An error is never answered with an error; "ignore" leaves unknown routes unanswered.
    assert await router.dispatch(json.dumps({"type": "error", "action": "x", "data": {}})) is None
    assert await Router(unknown_route="ignore").dispatch(_msg("nope", {})) is None


async def test_middleware_chain_auth_rate_limit_and_logging(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Middleware runs outermost first; auth and rate limits answer with their envelopes."""
    router = _router()
    order: list[str] = []

    async def auth(ctx: RouteContext, call_next: Any) -> Any:
        order.append("auth")
        if ctx.raw.get("token") != "t0k3n":
            raise RouteError("unauthorized", "missing or bad token")
        ctx.state["user"] = "ann"
        return await call_next(ctx)

    router.use(log_messages())
    router.use(auth)
    router.use(RateLimit(per_second=1, burst=2))
    good = _msg("send", {"room": "r", "text": "a"}, token="t0k3n")
    denied = json.loads(await router.dispatch(_msg("send", {"room": "r", "text": "a"})) or "")
    assert denied["action"] == "unauthorized"
    with caplog.at_level("DEBUG", logger="wsclient.router"):
        first = json.loads(await router.dispatch(good) or "")
    assert first["data"]["echo"] == "A"
    assert any("chat.send handled" in r.getMessage() for r in caplog.records)
    second = json.loads(await router.dispatch(good) or "")
    third = json.loads(await router.dispatch(good) or "")
    assert second["type"] == "chat" and third["action"] == "rate_limited"
    assert order == ["auth"] * 4


async def test_session_serve_runs_the_router_on_incoming_messages(
    servers: list[BackendServer], make_pool: PoolFactory
) -> None:
    """session.serve(router): routed messages reach their handler with validated data."""
    pool = await make_pool(servers[:1], min_connections=0)
    router = Router()
    got: list[ChatSend] = []

    @router.route("chat", "send", model=ChatSend)
    async def record(data: ChatSend, ctx: RouteContext) -> None:
        got.append(data)

    async with pool.session() as session:
        serving = asyncio.create_task(session.serve(router))
        # The echo backend sends each message straight back: it arrives as a routed message.
        await session.send(_msg("send", {"room": "r", "text": "hello"}))
        await session.send(_msg("send", {"room": "r", "text": ""}))  # invalid: error sent, echoed
        await session.send(_msg("send", {"room": "r", "text": "bye"}))
        await until(lambda: len(got) == 2)
        await until(lambda: servers[0].messages_received == 4)  # 3 sent + 1 error envelope
        assert [m.text for m in got] == ["hello", "bye"]
        serving.cancel()


def test_route_registration_errors() -> None:
    """Duplicate routes and sync handlers are refused when registered."""
    router = _router()
    with pytest.raises(ValueError, match="already registered"):
        router.route("chat", "send")
    with pytest.raises(TypeError, match="async"):
        router.route("chat", "sync")(lambda data, ctx: None)  # type: ignore[arg-type,return-value]
    assert router.routes == ["chat.send", "chat.boom"]


async def test_conn_serve_dispatches_until_the_peer_closes(
    servers: list[BackendServer], make_pool: PoolFactory
) -> None:
    """conn.serve(router) on a pooled connection returns when the backend closes with 1000."""
    pool = await make_pool(servers[:1], min_connections=0)
    router = Router()
    got: list[str] = []

    @router.route("feed", "item")
    async def item(data: Any, ctx: RouteContext) -> None:
        got.append(data)

    async with pool.acquire() as conn:
        serving = asyncio.create_task(conn.serve(router))
        await servers[0].push(json.dumps({"type": "feed", "action": "item", "data": "a"}))
        await servers[0].push(json.dumps({"type": "feed", "action": "item", "data": "b"}))
        await until(lambda: got == ["a", "b"])
        await servers[0].close_all(1000, "done")
        await asyncio.wait_for(serving, 5)  # ends normally on a 1000 close


@settings(max_examples=200, deadline=None)
@given(
    st.one_of(
        st.text(max_size=200),
        st.binary(max_size=50),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.text(max_size=10),
            lambda kids: (
                st.lists(kids, max_size=4)
                | st.dictionaries(
                    st.sampled_from(["type", "action", "data", "id", "x"]), kids, max_size=5
                )
            ),
            max_leaves=12,
        ).map(json.dumps),
    )
)
def test_dispatch_never_raises_and_answers_with_an_envelope(raw: str | bytes) -> None:
    """Whatever arrives, dispatch() returns None or a {type, action, data} JSON object."""
    reply = asyncio.run(_router().dispatch(raw))
    if reply is not None:
        obj = json.loads(reply)
        assert {"type", "action", "data"} <= set(obj)
