"""`gptbatch simulator`: a subprocess serving the API until interrupted, and its argument errors."""

from __future__ import annotations

import queue
import re
import signal
import socket
import subprocess
import sys
import threading

import openai
import pytest
from simtools import chat, jsonl, upload, wait

from gptbatch.cli import main

COMMAND = [sys.executable, "-m", "gptbatch", "simulator"]


class Output:
    """A subprocess's stdout lines, read by a thread so a test can wait with a timeout."""

    def __init__(self, process: subprocess.Popen) -> None:
        self.process = process
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line)
            self._queue.put(line)
        self._queue.put(None)

    def next(self, timeout: float = 30.0) -> str:
        try:
            line = self._queue.get(timeout=timeout)
        except queue.Empty:
            self.process.kill()
            raise AssertionError(f"no output within {timeout} s") from None
        if line is None:
            raise AssertionError(f"the command exited: {self.process.stderr.read()}")
        return line

    def finish(self) -> tuple[str, str]:
        """Wait for the process to exit; return (all stdout, stderr)."""
        self.process.wait(timeout=30)
        self._thread.join(timeout=30)
        return "".join(self.lines), self.process.stderr.read()


def test_the_command_serves_the_api_until_interrupted() -> None:
    process = subprocess.Popen(
        [
            *COMMAND,
            "--port",
            "0",
            "--time-scale",
            "1000",
            "--token-limit",
            "gpt-4o-mini=1,000",
            "--fault",
            "http:status=429,method=POST,path=/v1/files,retry_after=0.01",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    output = Output(process)
    try:
        first = output.next()
        match = re.fullmatch(
            r"gptbatch simulator listening on (http://127\.0\.0\.1:\d+/v1)\n", first
        )
        assert match, first
        base_url = match.group(1)
        hint = output.next()
        assert hint.split() == [
            "export",
            f"OPENAI_BASE_URL={base_url}",
            "OPENAI_API_KEY=sk-anything",
        ]
        api = openai.OpenAI(base_url=base_url, api_key="sk-anything")
        small = wait(
            api,
            api.batches.create(
                input_file_id=upload(api, [chat("a", model="gpt-4o")]).id,
                endpoint="/v1/chat/completions",
                completion_window="24h",
            ).id,
        )
        assert small.status == "completed"
        big = wait(
            api,
            api.batches.create(
                input_file_id=upload(api, [chat("b", "word " * 1200)]).id,
                endpoint="/v1/chat/completions",
                completion_window="24h",
            ).id,
        )
        assert big.status == "failed"
        assert "Limit: 1,000 enqueued tokens." in big.errors.data[0].message
    finally:
        process.send_signal(signal.SIGINT)
        out, err = output.finish()
    assert process.returncode == 0
    assert "gptbatch simulator stopped" in err
    assert "POST /v1/files -> 429 [fault: http]" in out
    assert "POST /v1/batches -> 200" in out


def test_sigterm_stops_it_cleanly() -> None:
    process = subprocess.Popen(
        [*COMMAND, "--port", "0", "--quiet"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    output = Output(process)
    assert output.next().startswith("gptbatch simulator listening on http://127.0.0.1:")
    process.terminate()
    output.finish()
    assert process.returncode == 0


def start(args: list[str]) -> tuple[Output, openai.OpenAI]:
    """Run the command; return its output and a client pointed at it."""
    process = subprocess.Popen(
        [*COMMAND, "--port", "0", "--quiet", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    output = Output(process)
    base_url = output.next().split()[-1]
    output.next()  # the export hint
    return output, openai.OpenAI(base_url=base_url, api_key="sk-anything", max_retries=0)


def test_after_kill_9_a_restart_on_the_state_dir_continues(tmp_path) -> None:
    args = ["--state-dir", str(tmp_path), "--time-scale", "1000", "--tokens-per-second", "10"]
    output, api = start(args)
    try:
        assert output.next() == f"  saving state in {tmp_path}\n"
        small = wait(api, create(api, upload(api, [chat("a")]).id).id)
        result = api.files.content(small.output_file_id).content
        lines = [chat(f"r{i}", "word " * 100) for i in range(40)]  # about 430 s simulated
        big = create(api, upload(api, lines).id)
        while (seen := api.batches.retrieve(big.id)).request_counts.completed < 3:
            pass
        assert seen.status == "in_progress"
    finally:
        output.process.kill()  # SIGKILL: nothing is saved on the way out
        output.finish()
    output, api = start(args)
    try:
        resumed_line = output.next()
        assert resumed_line.startswith(f"  resumed from {tmp_path}: 3 files, 2 batches, ")
        assert api.batches.retrieve(small.id) == small
        assert api.files.content(small.output_file_id).content == result
        resumed = api.batches.retrieve(big.id)
        assert resumed.request_counts.completed >= seen.request_counts.completed
        done = wait(api, big.id)
        assert done.status == "completed" and done.request_counts.completed == 40
    finally:
        output.process.send_signal(signal.SIGINT)
        output.finish()
    assert output.process.returncode == 0


def test_a_flavour_serves_that_services_quirks() -> None:
    output, api = start(["--flavour", "together", "--time-scale", "1000"])
    try:
        with pytest.raises(openai.BadRequestError, match="batch-api"):
            upload(api, [chat("a")])
        data = jsonl([chat("a")])
        file = api.files.create(file=("in.jsonl", data), purpose="batch-api")  # type: ignore
        assert file.purpose == "batch-api"
        batch = api.batches.with_raw_response.create(
            input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h"
        ).http_response.json()["job"]
        assert batch["status"] == "VALIDATING"
    finally:
        output.process.send_signal(signal.SIGINT)
        output.finish()


def create(api: openai.OpenAI, file_id: str):
    return api.batches.create(
        input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--fault", "explode"], "unknown kind 'explode'"),
        (["--fault", "http:status=soon"], "status='soon' is not a number"),
        (["--fault", "drop:delay=1"], "'delay=1' is not KEY=VALUE with a key of drop"),
        (["--token-limit", "gpt-4o-mini"], "expected MODEL=N"),
        (["--request-limit", "m=-3"], "expected MODEL=N"),
        (["--time-scale", "-1"], "--time-scale must be >= 0"),
    ],
)
def test_bad_arguments_exit_2_with_a_message(args, message, capsys) -> None:
    assert main(["simulator", "--port", "0", *args]) == 2
    assert message in capsys.readouterr().err


def test_a_port_in_use_exits_2() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run(
            [*COMMAND, "--port", str(port)], capture_output=True, text=True, timeout=30
        )
    assert result.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
