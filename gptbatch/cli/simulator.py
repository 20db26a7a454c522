"""`gptbatch simulator`: serve the Batch API simulator on loopback until Ctrl-C."""

from __future__ import annotations

import argparse
import signal
import sys
from typing import Any

from gptbatch.errors import EXIT_OK, UsageError


def register(subparsers: Any) -> None:
    """Add the `simulator` subcommand."""
    parser = subparsers.add_parser(
        "simulator",
        help="run a local OpenAI Batch API simulator (Files + Batches) for offline rehearsal",
        description="Serve a simulated OpenAI Files and Batches API on loopback. Point any "
        "openai SDK client at it with OPENAI_BASE_URL; any bearer key is accepted. Time can "
        "run faster than real (--time-scale) so a 24-hour completion window passes quickly.",
        epilog=_fault_help()
        + "\n\nexample: gptbatch simulator --port 8000 --time-scale 60 --state-dir sim-state",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback)")
    parser.add_argument("--port", type=int, default=8000, help="port (0: any free port)")
    parser.add_argument(
        "--time-scale",
        type=float,
        default=1.0,
        metavar="X",
        help="simulated seconds per real second (default 1; e.g. 3600 makes an hour a second)",
    )
    parser.add_argument(
        "--tokens-per-second",
        type=float,
        default=2_000.0,
        metavar="N",
        help="processing speed of one batch, in prompt tokens",
    )
    parser.add_argument(
        "--total-tokens-per-second",
        type=float,
        default=20_000.0,
        metavar="N",
        help="processing speed shared by all running batches (0: no cap)",
    )
    parser.add_argument("--validating-seconds", type=float, default=5.0, metavar="S")
    parser.add_argument("--finalizing-seconds", type=float, default=5.0, metavar="S")
    parser.add_argument(
        "--completion-window-seconds",
        type=float,
        default=86_400.0,
        metavar="S",
        help='how long "24h" lasts in simulated seconds (default 86400)',
    )
    parser.add_argument(
        "--token-limit",
        action="append",
        default=[],
        metavar="MODEL=N",
        help="enqueued-token limit for a model (repeatable), e.g. gpt-4o-mini=2000000",
    )
    parser.add_argument(
        "--request-limit",
        action="append",
        default=[],
        metavar="MODEL=N",
        help="enqueued-request limit for a model (repeatable)",
    )
    parser.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="SPEC",
        help="inject a fault (repeatable); see the fault language below",
    )
    parser.add_argument(
        "--state-dir",
        metavar="DIR",
        help="save state in DIR, and resume from it: a restarted simulator keeps its files and "
        "batches, and simulated time goes on from where it stopped",
    )
    parser.add_argument("--organization", default="org-simulator", help="organization id")
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed for result order and contents (ids are new on every run)",
    )
    parser.add_argument(
        "--any-model",
        action="store_true",
        help="accept any model name (by default a model gptbatch does not know fails its "
        "batch at validation with model_not_found, as at the API)",
    )
    parser.add_argument(
        "--invalid-json",
        type=float,
        default=0.0,
        metavar="FRACTION",
        help="answer this fraction (0..1) of requests that ask for JSON with text that is not "
        "JSON, drawn per attempt (default 0)",
    )
    parser.add_argument(
        "--flavour",
        choices=("openai", "groq", "together", "perplexity"),
        default="openai",
        help="serve that service's wire quirks (together: upload purpose batch-api, "
        "upper-case statuses; perplexity: expires_after and output_expires_after refused; "
        "groq: windows 24h to 7d); default openai",
    )
    parser.add_argument(
        "--fast-counter",
        action="store_true",
        help="count tokens with fastokens (pip install 'gptbatch[fast]') where its counts are "
        "tiktoken's: the same counts, faster, for millions of requests (loads in ~2 s)",
    )
    parser.add_argument(
        "--background-validation",
        action="store_true",
        help="read each batch's input file on a background thread, so batches.create answers "
        "at once as the real API's does (the same outcomes; for benchmarks at scale)",
    )
    parser.add_argument("--quiet", action="store_true", help="do not print each API call")
    parser.set_defaults(func=run)


def _fault_help() -> str:
    from gptbatch.simulator import FAULT_HELP

    return FAULT_HELP


def run(args: argparse.Namespace) -> int:
    """Build the config from arguments, serve until Ctrl-C or SIGTERM."""
    from gptbatch.simulator import SimConfig, Simulator, parse_fault, parse_limit

    if args.time_scale < 0:
        raise UsageError("--time-scale must be >= 0")
    if not 0 <= args.invalid_json <= 1:
        raise UsageError("--invalid-json must be a fraction between 0 and 1")
    config = SimConfig(
        time_scale=args.time_scale,
        tokens_per_second=args.tokens_per_second,
        total_tokens_per_second=args.total_tokens_per_second,
        validating_seconds=args.validating_seconds,
        finalizing_seconds=args.finalizing_seconds,
        cancelling_seconds=args.finalizing_seconds,
        completion_window_seconds=args.completion_window_seconds,
        token_limits=dict(parse_limit(t, "--token-limit") for t in args.token_limit),
        request_limits=dict(parse_limit(t, "--request-limit") for t in args.request_limit),
        organization=args.organization,
        seed=args.seed,
        faults=tuple(parse_fault(spec) for spec in args.fault),
        state_dir=args.state_dir,
        any_model=args.any_model,
        invalid_json=args.invalid_json,
        flavour=args.flavour,
        fast_counter=args.fast_counter,
        background_validation=args.background_validation,
        completion_windows=(
            ("24h", "48h", "72h", "1d", "2d", "3d", "4d", "5d", "6d", "7d")
            if args.flavour == "groq"
            else ("24h",)
        ),
    )
    try:
        sim = Simulator(config, host=args.host, port=args.port, work_ahead=True)
    except OSError as exc:
        raise UsageError(
            f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}: "
            "choose another --port (0 picks a free one)"
        ) from None
    if not args.quiet:
        sim.journal.on_call(
            lambda c: print(
                f"{c.method} {c.path} -> {c.status}" + (f" [fault: {c.fault}]" if c.fault else ""),
                flush=True,
            )
        )
    # Installed before the URL is printed: whoever reads it may stop us at once.
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        print(f"gptbatch simulator listening on {sim.base_url}", flush=True)
        print(f"  export OPENAI_BASE_URL={sim.base_url} OPENAI_API_KEY=sk-anything", flush=True)
        if args.state_dir and sim.saved_time is None:
            print(f"  saving state in {args.state_dir}", flush=True)
        if sim.saved_time is not None:
            files, batches = len(sim.service.files()), len(sim.service.batches())
            print(
                f"  resumed from {args.state_dir}: {files} files, {batches} batches, "
                f"simulated time {sim.saved_time:.3f}",
                flush=True,
            )
        for spec in args.fault:
            print(f"  fault armed: {spec}", flush=True)
        print("  press Ctrl-C to stop", flush=True)
        sim.serve_forever()
    except KeyboardInterrupt:
        print("gptbatch simulator stopped", file=sys.stderr, flush=True)
    finally:
        signal.signal(signal.SIGTERM, previous)
        sim.stop()
    return EXIT_OK


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt
