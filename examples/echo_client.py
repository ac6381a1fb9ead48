"""Echo client (the seed's section 1.2 example): dial, write, flush, read the reply.

Run: python examples/echo_client.py [port] [message]
"""

from __future__ import annotations

import sys

import netpoll


def main(port: int = 8080, message: str = "hello, netpoll") -> None:
    with netpoll.dial_connection("tcp", f"127.0.0.1:{port}", timeout=3) as conn:
        conn.set_read_timeout(3)
        payload = message.encode()
        conn.write_binary(payload)
        conn.flush()
        reply = conn.next(len(payload))  # blocks until the whole echo is back
        print("reply:", reply.tobytes().decode())
        conn.release()


if __name__ == "__main__":
    args = sys.argv[1:]
    main(int(args[0]) if args else 8080, args[1] if len(args) > 1 else "hello, netpoll")
