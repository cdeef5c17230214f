"""`forgert embed TEXT...`: text embeddings (Model.embed), one JSON line per text on stdout."""
from __future__ import annotations

import json
import sys

from ..embeddings import POOLINGS
from .common import UserError, add_model_args, int_at_least, load_model


def add_parser(subparsers):
    p = subparsers.add_parser("embed", help="print text embeddings as JSON lines",
                              description="Embed each TEXT (or, with none or '-', each non-empty line of "
                                          "stdin) with the model's pooled, L2-normalised final hidden "
                                          "states, as embedding models built on a decoder are used "
                                          "(Qwen3-Embedding, gte-Qwen2, e5-mistral). Prints one JSON "
                                          "object per text: {\"index\": i, \"embedding\": [...]}.")
    p.add_argument("texts", nargs="*", metavar="TEXT", help="texts to embed ('-' or nothing reads stdin lines)")
    p.add_argument("--pooling", choices=POOLINGS, default=None,
                   help="which hidden states make the vector (default: as the model's files say, "
                        "else last)")
    p.add_argument("--dimensions", metavar="N", type=int_at_least(1), default=None,
                   help="keep the first N components, then normalise (models trained for it: "
                        "Qwen3-Embedding; default: all)")
    p.add_argument("--no-normalize", dest="normalize", action="store_false",
                   help="print the pooled vector as it is, not L2-normalised")
    add_model_args(p)
    return p


def _texts(args) -> list[str]:
    if args.texts and args.texts != ["-"]:
        return args.texts
    if sys.stdin.isatty():
        raise UserError("no text: pass texts as arguments or pipe lines on stdin")
    texts = [line.rstrip("\n") for line in sys.stdin if line.strip()]
    if not texts:
        raise UserError("stdin held no non-empty line to embed")
    return texts


def run(args) -> int:
    texts = _texts(args)
    model = load_model(args)
    vectors = model.embed(texts, pooling=args.pooling, normalize=args.normalize, dimensions=args.dimensions)
    for i, v in enumerate(vectors):
        sys.stdout.write(json.dumps({"index": i, "embedding": [float(x) for x in v]}) + "\n")
    return 0
