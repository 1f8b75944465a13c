"""`energytta-serve`: load one model, warm it, serve the API and page until Ctrl-C.

Heavy imports (torch, fastapi, uvicorn) wait until after argument parsing, so `--help`
answers at once.
"""
from __future__ import annotations

import argparse
import os
import sys

from energytta.cli_help import DefaultsHelpFormatter
from energytta.errors import UserError, run_cli
from energytta.serve.options import ServeOptions

TOKEN_ENV = "ENERGYTTA_SERVE_TOKEN"


def build_parser() -> argparse.ArgumentParser:
    d = ServeOptions()
    p = argparse.ArgumentParser(
        prog="energytta-serve", formatter_class=DefaultsHelpFormatter,
        description="Serve one energytta model over HTTP: POST /v1/generate, GET /health, "
                    "/v1/models, /metrics, and a web page at /. Requests arriving within "
                    "--window-ms of each other with the same settings share one model call. "
                    "See docs/serving.md.")
    p.add_argument("--ckpt", default=d.ckpt, help="shipped model (student, the default; "
                   "captiononly, teacher, guided) or a checkpoint path")
    p.add_argument("--host", default=d.host, help="address to bind; anything but loopback "
                   "needs --token")
    p.add_argument("--port", type=int, default=d.port, help="0 picks a free port")
    p.add_argument("--token", default=None, help="require 'Authorization: Bearer TOKEN' "
                   f"(default: ${TOKEN_ENV} if set, else none)")
    p.add_argument("--window-ms", type=float, default=d.window_ms,
                   help="how long a request waits for others to batch with")
    p.add_argument("--max-batch", type=int, default=d.max_batch, help="most clips per call")
    p.add_argument("--no-batching", action="store_true", help="one request per model call")
    p.add_argument("--queue-size", type=int, default=d.queue_size,
                   help="most waiting requests; more get 503 + Retry-After")
    p.add_argument("--deadline", type=float, default=d.deadline_s,
                   help="seconds a request may take in all (queued: 503, running: 504)")
    p.add_argument("--max-prompt-chars", type=int, default=d.max_prompt_chars,
                   help="longest prompt a request may send (characters)")
    p.add_argument("--max-duration", type=float, default=d.max_duration,
                   help="longest clip (s) a request may ask for")
    p.add_argument("--max-num-samples", type=int, default=d.max_num_samples,
                   help="most clips one request may ask for")
    p.add_argument("--max-iterations", type=int, default=d.max_iterations,
                   help="most decoding iterations a request may ask for")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:1 ...")
    p.add_argument("--vocoder", default=None,
                   help="checkpoint | griffin-lim | trained | a vocoder file (default: the "
                        "checkpoint's sample.vocoder)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads "
                   "(none: torch's choice)")
    p.add_argument("--no-warmup", action="store_true", help="skip the warm-up generation")
    return p


def options(args: argparse.Namespace) -> ServeOptions:
    return ServeOptions(
        ckpt=args.ckpt, host=args.host, port=args.port,
        token=args.token or os.environ.get(TOKEN_ENV) or None, batching=not args.no_batching,
        window_ms=args.window_ms, max_batch=args.max_batch, queue_size=args.queue_size,
        deadline_s=args.deadline, max_prompt_chars=args.max_prompt_chars,
        max_duration=args.max_duration, max_num_samples=args.max_num_samples,
        max_iterations=args.max_iterations, warmup=not args.no_warmup, threads=args.threads)


def _main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    opts = options(args)  # UserError before any heavy import
    from energytta.pipeline import TextToAudio
    from energytta.serve.engine import Engine, model_name
    from energytta.serve.server import serve

    if opts.threads is not None:
        if opts.threads < 1:
            raise UserError("--threads must be >= 1")
        import torch
        torch.set_num_threads(opts.threads)
    pipe = TextToAudio.from_pretrained(opts.ckpt, device=args.device, vocoder=args.vocoder)
    engine = Engine(pipe, model_name(opts.ckpt), batching=opts.batching)
    serve(engine, opts)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of `energytta-serve`; argv None reads sys.argv."""
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
