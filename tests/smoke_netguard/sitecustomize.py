"""Loopback-only sockets for every Python process of a smoke-study run (tests/test_smoke_studies.py).

The smoke test puts this folder on PYTHONPATH, so snakemake and every job it starts import it at start-up
(``site`` imports ``sitecustomize``). With ``MEDSYNTH_NETGUARD_LOG`` set, a name lookup of any host but the
loopback one and a TCP connection to any address but 127.0.0.1 / ::1 are refused and appended to that file
(pid, what, where from), so the test can assert that no stage left the machine: the weights rule reaches
only the loopback Hub stand-ins. Without the variable nothing is patched.
"""

import os

if os.environ.get("MEDSYNTH_NETGUARD_LOG"):
    import socket
    import traceback

    _LOOPBACK = {"127.0.0.1", "::1", "localhost", b"127.0.0.1", b"::1", b"localhost"}
    _real_getaddrinfo = socket.getaddrinfo
    _real_connect = socket.socket.connect
    _real_connect_ex = socket.socket.connect_ex

    def _refuse(what: str) -> None:
        stack = "".join(traceback.format_stack(limit=12)[:-2])
        with open(os.environ["MEDSYNTH_NETGUARD_LOG"], "a", encoding="utf-8") as log:
            log.write(f"pid {os.getpid()}: {what}\n{stack}\n")

    def getaddrinfo(host, *args, **kwargs):
        if host not in _LOOPBACK and host is not None:
            _refuse(f"getaddrinfo {host!r}")
            raise socket.gaierror(socket.EAI_NONAME, f"smoke-test guard: {host!r} is off limits (loopback only)")
        return _real_getaddrinfo(host, *args, **kwargs)

    def _check(sock, address) -> None:
        if sock.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in _LOOPBACK:
            _refuse(f"connect {address!r}")
            raise ConnectionRefusedError(f"smoke-test guard: {address!r} is off limits (loopback only)")

    def connect(self, address):
        _check(self, address)
        return _real_connect(self, address)

    def connect_ex(self, address):
        _check(self, address)
        return _real_connect_ex(self, address)

    socket.getaddrinfo = getaddrinfo
    socket.socket.connect = connect
    socket.socket.connect_ex = connect_ex
