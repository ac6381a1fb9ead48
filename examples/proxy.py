"""TCP proxy: each client connection dials its upstream in on_connect and relays bytes.

Upstream responses are pushed back through the upstream connection's own handler, so
neither direction blocks a poller. A client that ends its stream (a half-close, as
``shutdown(SHUT_WR)`` or ``nc -N`` do) has it forwarded upstream after its last bytes,
and still gets the whole reply.

Run: python examples/proxy.py LISTEN_PORT UPSTREAM_PORT   (Ctrl-C stops it gracefully)
"""

from __future__ import annotations

import sys
from typing import Any

import netpoll


def relay(src: netpoll.Connection, dst: netpoll.Connection) -> None:
    data = src.next(len(src))
    dst.write_binary(data)
    dst.flush()  # sent before the views die below
    src.release()


def make_proxy(upstream_addr: str) -> netpoll.EventLoop:
    def on_connect(ctx: Any, client: netpoll.Connection) -> netpoll.Connection:
        upstream = netpoll.dial_connection("tcp", upstream_addr, timeout=3)
        # Each side closing closes the other.
        upstream.add_close_callback(lambda _c: client.close())
        client.add_close_callback(lambda _c: upstream.close())
        # The client's end of stream goes upstream once its last bytes were relayed;
        # the client connection stays open for the reply (closed with the upstream).
        client.set_on_eof(lambda _c: upstream.close_write())
        upstream.set_on_request(lambda _ctx, up: relay(up, client))
        return upstream  # becomes ctx for on_request

    def on_request(upstream: netpoll.Connection, client: netpoll.Connection) -> None:
        relay(client, upstream)

    return netpoll.EventLoop(on_request, on_connect=on_connect)


def main(listen_port: int, upstream_port: int) -> None:
    print(f"proxy 127.0.0.1:{listen_port} -> 127.0.0.1:{upstream_port}")
    netpoll.run(
        make_proxy(f"127.0.0.1:{upstream_port}"),
        "tcp",
        f"127.0.0.1:{listen_port}",
        shutdown_timeout=5,
    )


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
