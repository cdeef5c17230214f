"""`forgert serve`: the OpenAI-compatible HTTP server over one model."""
from __future__ import annotations

import ipaddress
import os
import socket
import sys

from .common import UserError, add_draft_args, add_model_args, load_model

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
DEFAULT_PROMPT_CACHE_MB = 512
# server.ConnectionLimits' defaults (not imported here: `forgert --help` must work without uvicorn).
DEFAULT_HEADER_TIMEOUT_S = 10.0
DEFAULT_BODY_TIMEOUT_S = 60.0
DEFAULT_MAX_CONNECTIONS = 64


def add_parser(subparsers):
    p = subparsers.add_parser(
        "serve", help="serve the model over an OpenAI-compatible HTTP API (and Anthropic's Messages API)",
        description="Serve POST /v1/chat/completions and /v1/completions (streaming or not), "
                    "POST /v1/responses (OpenAI's Responses API), POST /v1/messages (Anthropic's "
                    "Messages API), GET /v1/models and GET /health. Listens on 127.0.0.1 only unless --host says "
                    "otherwise.")
    add_model_args(p)
    add_draft_args(p)
    p.add_argument("--host", default=DEFAULT_HOST,
                   help="address to listen on (default 127.0.0.1, this machine only; "
                        "0.0.0.0 listens on every network interface)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"TCP port (default {DEFAULT_PORT})")
    p.add_argument("--api-key", default=os.environ.get("FORGERT_API_KEY"),
                   help="require 'Authorization: Bearer KEY' on /v1 routes "
                        "(default: $FORGERT_API_KEY; none means no authentication)")
    p.add_argument("--model-id", help="the model name clients see in /v1/models "
                                      "(default: the model file name)")
    p.add_argument("--prompt-cache-mb", type=int, default=DEFAULT_PROMPT_CACHE_MB,
                   help="memory for the K/V caches of conversations other than the current one, so "
                        "clients taking turns keep their prompt prefixes "
                        f"(default {DEFAULT_PROMPT_CACHE_MB}; 0 turns it off)")
    p.add_argument("--max-tokens-limit", type=int, default=None, metavar="N",
                   help="the most tokens one completion may ask for: larger max_tokens get a 400, and "
                        "it caps the default when max_tokens is absent (default: no limit beyond the "
                        "context, which always bounds prompt + max_tokens)")
    p.add_argument("--header-timeout", type=float, default=DEFAULT_HEADER_TIMEOUT_S, metavar="SECONDS",
                   help="close a connection, with a 408, whose request headers are not complete this "
                        "long after it opened or after its next request began "
                        f"(default {DEFAULT_HEADER_TIMEOUT_S:g})")
    p.add_argument("--body-timeout", type=float, default=DEFAULT_BODY_TIMEOUT_S, metavar="SECONDS",
                   help="close a connection, with a 408, whose request body is not complete this "
                        f"long after its headers (default {DEFAULT_BODY_TIMEOUT_S:g})")
    p.add_argument("--max-connections", type=int, default=DEFAULT_MAX_CONNECTIONS, metavar="N",
                   help="open connections served at once; requests beyond get a 503 "
                        f"(default {DEFAULT_MAX_CONNECTIONS})")
    p.add_argument("--parallel", type=int, default=1, metavar="N",
                   help="requests decoded together in one running batch (continuous batching; each "
                        "sequence holds its own KV cache of --n-ctx tokens, and each of a request's n "
                        "choices is a sequence); every request joins it, with logprobs, echo, "
                        "response_format or logit_bias too (default 1: requests take turns)")
    p.add_argument("--prompt-lookup", type=int, default=0, metavar="N",
                   help="prompt lookup decoding for greedy requests (temperature 0, no penalties, "
                        "logprobs, response_format or logit_bias), alone or in the --parallel batch: "
                        "drafts of up to N tokens (1-15) copied from earlier in the context, verified in "
                        "one pass; the same tokens, faster where answers repeat their input (default 0: off)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    return p


def _check_can_listen(host: str, port: int) -> None:
    """Fail early with a clear message instead of uvicorn's log line and exit."""
    if not 0 < port < 65536:
        raise UserError(f"--port must be between 1 and 65535, got {port}")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise UserError(f"cannot listen on {host!r}: {e.strerror}") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(address)
        except OSError as e:
            raise UserError(f"cannot listen on {host}:{port}: {e.strerror}") from None


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run(args) -> int:
    try:
        from ..server import ConnectionLimits, serve
    except ImportError as e:
        raise UserError(f"forgert serve needs FastAPI and uvicorn ({e.name} is missing): "
                        "pip install fastapi uvicorn") from None
    if args.prompt_cache_mb < 0:
        raise UserError(f"--prompt-cache-mb must be >= 0, got {args.prompt_cache_mb}")
    if args.max_tokens_limit is not None and args.max_tokens_limit < 1:
        raise UserError(f"--max-tokens-limit must be >= 1, got {args.max_tokens_limit}")
    for flag, value in (("--header-timeout", args.header_timeout), ("--body-timeout", args.body_timeout)):
        if not value > 0:     # also refuses nan
            raise UserError(f"{flag} must be a number of seconds > 0, got {value}")
    if args.max_connections < 1:
        raise UserError(f"--max-connections must be >= 1, got {args.max_connections}")
    limits = ConnectionLimits(args.header_timeout, args.body_timeout, args.max_connections)
    if args.parallel < 1:
        raise UserError(f"--parallel must be >= 1, got {args.parallel}")
    if not 0 <= args.prompt_lookup <= 15:
        raise UserError(f"--prompt-lookup must be 0..15 draft tokens, got {args.prompt_lookup}")
    if args.draft_model and args.parallel > 1:
        raise UserError("--draft-model drafts for one sequence at a time, and with --parallel N > 1 every "
                        "request runs in the batch: use one or the other")
    _check_can_listen(args.host, args.port)
    # The batch takes KV slots 1..N; slot 0 stays the turn-taking path's (with its prompt cache).
    args.kv_slots = args.parallel + 1 if args.parallel > 1 else 1
    model = load_model(args)
    model.set_prompt_cache(args.prompt_cache_mb << 20)
    if not _is_loopback(args.host):
        exposure = ("with an API key" if args.api_key
                    else "WITHOUT an API key: anyone who can reach it may use it")
        print(f"forgert: listening on {args.host}, reachable from other machines, {exposure}",
              file=sys.stderr)
    print(f"forgert: serving {model.info()['name']} ({model.backend}, n_ctx {model.n_ctx}) at "
          f"http://{args.host}:{args.port}/v1", file=sys.stderr)
    serve(model, host=args.host, port=args.port, api_key=args.api_key, model_id=args.model_id,
          log_level=args.log_level, max_tokens_limit=args.max_tokens_limit, limits=limits,
          prompt_lookup=args.prompt_lookup)
    return 0
