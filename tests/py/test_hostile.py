"""A corpus of hostile input, sent as raw Engine.IO/Socket.IO frames, kept as a regression test."""

import pytest
import websocket

from conftest import token, user

EVENTS = ["auth", "message_all_users", "search_covers", "cancel_scan", "cancel_cover_search", "ping",
          "set_log_listener", "remove_log_listener"]


def raw_socket(srv):
    ws = websocket.create_connection(f"ws://127.0.0.1:{srv.port}/socket.io/?EIO=4&transport=websocket", timeout=5)
    assert ws.recv().startswith("0{")
    ws.send("40")
    while (m := ws.recv()) == "2":
        ws.send("3")
    assert m.startswith("40{"), m
    return ws


def next_event(ws):
    while True:
        m = ws.recv()
        if m == "2":
            ws.send("3")
            continue
        if m.startswith("42"):
            return m


def still_serving(srv):
    ws = raw_socket(srv)
    ws.send(f'42["auth","{token("legacy_tom")}"]')
    reply = next_event(ws)
    assert reply.startswith('42["init"') and user("tom")["id"] in reply
    ws.close()


@pytest.mark.parametrize("payload", [
    "[" * 1000 + "1" + "]" * 1000,
    "{\"token\":" * 500 + "1" + "}" * 500,
    '"' + "\\u0000" * 1000 + '"',
    "1e999999",
    '{"token":"' + token("legacy_tom")[:-1] + '"}',
])
def test_deep_or_strange_json_is_an_invalid_token(shared_server, payload):
    ws = raw_socket(shared_server)
    ws.send('42["auth",' + payload + "]")
    assert next_event(ws) == '42["auth_failed",{"message":"Invalid token"}]'
    ws.close()
    still_serving(shared_server)


def test_non_utf8_binary_attachment(shared_server):
    ws = raw_socket(shared_server)
    ws.send('451-["auth",{"_placeholder":true,"num":0}]')
    ws.send_binary(b"\xff\xfe\x00\x80\xc3\x28")
    assert next_event(ws) == '42["auth_failed",{"message":"Invalid token"}]'
    ws.close()
    still_serving(shared_server)


@pytest.mark.parametrize("event", EVENTS)
def test_every_event_with_no_payload(shared_server, event):
    ws = raw_socket(shared_server)
    ws.send(f'42["{event}"]')
    ws.send('42["ping"]')
    expected = {
        "auth": ['42["auth_failed",{"message":"Invalid token"}]'],
        "search_covers": ['42["cover_search_error",{"requestId":null,"error":"Unauthorized"}]'],
        "ping": ['42["pong"]'],
    }.get(event, []) + ['42["pong"]']
    # `ping` is answered at once, other events in order on the socket's queue: any interleaving.
    replies = [next_event(ws) for _ in expected]
    assert sorted(replies) == sorted(expected), "pong carries no argument, and the socket is still served"
    ws.close()


@pytest.mark.parametrize("frame", ['42[', '42["auth"', '4x', '42{"a":1}', '42[1,2]', '9', '', '42["auth",1,2,3]'])
def test_broken_packets_hurt_only_their_sender(shared_server, frame):
    ws = raw_socket(shared_server)
    try:
        ws.send(frame)
        ws.send('42["ping"]')
        next_event(ws)
    except Exception:
        pass  # the server may close a connection that speaks nonsense
    finally:
        ws.close()
    still_serving(shared_server)
