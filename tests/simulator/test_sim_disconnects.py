"""Clients that go away mid-reply, and a server stopping mid-reply, leave no tracebacks."""

from __future__ import annotations

import socket
import struct
import time

import pytest
from simtools import client

from gptbatch.simulator import SimConfig, Simulator

BIG = b"x" * (16 * 1024 * 1024)  # far more than the socket buffers hold


def upload_big(sim: Simulator) -> str:
    """Upload BIG and close the SDK's keep-alive connection."""
    with client(sim) as api:
        return api.files.create(file=("big.bin", BIG), purpose="user_data").id


def request_content(sim: Simulator, file_id: str) -> socket.socket:
    """Open a connection, ask for a file's content and read only the start of the reply."""
    sock = socket.create_connection((sim.host, sim.port), timeout=5)
    sock.sendall(
        f"GET /v1/files/{file_id}/content HTTP/1.1\r\nHost: x\r\n"
        "Authorization: Bearer sk-test\r\n\r\n".encode()
    )
    assert sock.recv(1024).startswith(b"HTTP/1.1 200")
    return sock


def settle(sim: Simulator) -> None:
    """Wait until every handler thread has finished with its connection."""
    deadline = time.monotonic() + 5
    while sim.open_connections and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sim.open_connections == 0


def test_a_client_resetting_mid_download_prints_no_traceback(simulator, capfd) -> None:
    sock = request_content(simulator, upload_big(simulator))
    # SO_LINGER 0: close with a reset, as a killed client process does.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()
    settle(simulator)
    err = capfd.readouterr().err
    assert "Traceback" not in err and "Error" not in err


def test_stopping_mid_download_prints_no_traceback(capfd) -> None:
    sim = Simulator(SimConfig.fast()).start()
    sock = request_content(sim, upload_big(sim))  # and never read the rest: the server blocks
    try:
        sim.stop()
        settle(sim)
    finally:
        sock.close()
    err = capfd.readouterr().err
    assert "Traceback" not in err and "Error" not in err


def test_other_errors_in_a_handler_still_print_a_traceback(simulator, capfd) -> None:
    def broken(file_id: str) -> bytes:
        raise RuntimeError("a bug in the simulator")

    simulator.service.file_content = broken  # type: ignore[method-assign]
    sock = socket.create_connection((simulator.host, simulator.port), timeout=5)
    sock.sendall(b"GET /v1/files/f/content HTTP/1.1\r\nAuthorization: Bearer k\r\n\r\n")
    with pytest.raises(OSError):  # no reply: the connection is closed or reset
        if not sock.recv(1024):
            raise ConnectionResetError
    sock.close()
    settle(simulator)
    err = capfd.readouterr().err
    assert "Traceback" in err and "RuntimeError: a bug in the simulator" in err
