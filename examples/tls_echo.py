"""A TLS echo server: the same nocopy handler as a plain echo server, on a TLS listener.

Run: python examples/tls_echo.py [--port 8443] [--workers N] [--cert cert.pem --key key.pem]

Without --cert it makes a throwaway certificate for localhost and 127.0.0.1 with the
``trustme`` package (``pip install trustme``) and writes the CA that signed it to
``tls_echo_ca.pem``, so clients can trust it:

    openssl s_client -connect 127.0.0.1:8443 -servername localhost -CAfile tls_echo_ca.pem
    python examples/tls_echo.py --client --cafile tls_echo_ca.pem "hello over TLS"

Without trustme, make a self-signed certificate with openssl and pass it in (clients then
trust cert.pem itself):

    openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj /CN=localhost \\
        -addext subjectAltName=DNS:localhost,IP:127.0.0.1 -keyout key.pem -out cert.pem
    python examples/tls_echo.py --cert cert.pem --key key.pem
"""

from __future__ import annotations

import argparse
import ssl
from pathlib import Path
from typing import Any

import netpoll


def on_connect(ctx: Any, conn: netpoll.Connection) -> Any:
    # The handshake is done here: the peer's certificate, the cipher and ALPN are known.
    tls = conn.ssl_object
    if tls is not None:
        print(f"{conn.remote_addr}: {tls.version()} {tls.cipher()[0]}")
    return ctx


def on_request(ctx: Any, conn: netpoll.Connection) -> None:
    # Plaintext in, plaintext out: flush() encrypts and sends.
    n = len(conn)
    if n:
        conn.write_binary(conn.next(n))
        conn.flush()
    conn.release()


def make_loop() -> netpoll.EventLoop:
    return netpoll.EventLoop(on_request, on_connect=on_connect, idle_timeout=300)


def server_context(cert: str, key: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    return ctx


def throwaway_certificate(directory: Path) -> tuple[str, str, str]:
    """A certificate for localhost/127.0.0.1 from a fresh CA: (cert, key, CA) paths."""
    try:
        import trustme
    except ImportError:
        raise SystemExit(
            "trustme is not installed: pip install trustme, or make a certificate with "
            "openssl req (see this file's docstring) and pass --cert and --key"
        ) from None
    ca = trustme.CA()
    issued = ca.issue_cert("localhost", "127.0.0.1")
    cert = directory / "tls_echo_cert.pem"
    key = directory / "tls_echo_key.pem"
    ca_pem = directory / "tls_echo_ca.pem"
    issued.private_key_and_cert_chain_pem.write_to_path(str(cert))
    issued.private_key_pem.write_to_path(str(key))
    ca.cert_pem.write_to_path(str(ca_pem))
    return str(cert), str(key), str(ca_pem)


def client(port: int, cafile: str | None, message: str) -> str:
    """Send ``message`` over TLS with netpoll's dialer and return the echo."""
    ctx = ssl.create_default_context(cafile=cafile)
    with netpoll.dial_connection(
        "tcp", f"127.0.0.1:{port}", timeout=5, ssl=ctx, server_hostname="localhost"
    ) as conn:
        data = message.encode()
        conn.write_binary(data)
        conn.flush()
        return conn.next(len(data)).tobytes().decode()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8443)
    parser.add_argument("--cert", help="PEM certificate chain (default: a throwaway one)")
    parser.add_argument("--key", help="PEM private key")
    parser.add_argument("--client", action="store_true", help="send a message and print the echo")
    parser.add_argument("--cafile", help="client: the CA to trust (default: the system's)")
    parser.add_argument("--workers", type=int, default=1, help="server processes (one per core)")
    parser.add_argument("message", nargs="?", default="hello over TLS")
    args = parser.parse_args(argv)
    if args.client:
        print("reply:", client(args.port, args.cafile, args.message))
        return
    if args.cert:
        cert, key = args.cert, args.key or args.cert
    else:
        cert, key, ca = throwaway_certificate(Path.cwd())
        print(f"throwaway certificate for localhost; clients trust {ca}")
    ctx = server_context(cert, key)
    print(f"TLS echo on 127.0.0.1:{args.port} with {args.workers} worker(s)")
    netpoll.run(
        make_loop,
        "tcp",
        f"127.0.0.1:{args.port}",
        workers=args.workers,
        ssl=ctx,
        shutdown_timeout=5,
    )


if __name__ == "__main__":
    main()
