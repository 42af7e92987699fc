"""`leapdecode index CORPUS --model M --out STORE`: the datastore for the `retrieval` drafter."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..models.registry import DEFAULT_MODEL


def add_parser(sub: Any) -> None:
    p = sub.add_parser("index", help="build a retrieval datastore from a text corpus")
    p.add_argument("corpus", help="a UTF-8 text file; one document per paragraph (or per line)")
    p.add_argument("--model", default=DEFAULT_MODEL, help="the model whose tokenizer the store uses")
    p.add_argument("--out", required=True, help="where to write the store (.npz)")
    p.add_argument("--split", choices=["paragraph", "line"], default="paragraph")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from transformers import AutoTokenizer

    from ..models.registry import resolve
    from .retrieval import build_store_from_text

    out = Path(args.out)
    if out.is_dir():
        raise ValueError(f"--out {args.out} is a directory; give a file name for the store, "
                         f"e.g. --out {out / 'store.npz'}")
    if not out.parent.is_dir():
        raise ValueError(f"--out {args.out}: the directory {str(out.parent)!r} does not exist; create it first")
    if not Path(args.corpus).is_file():
        raise ValueError(f"the corpus {args.corpus!r} is not a file; pass a UTF-8 text file")
    tokenizer = AutoTokenizer.from_pretrained(resolve(args.model), local_files_only=True)
    store = build_store_from_text(args.corpus, tokenizer, args.out, split=args.split)
    print(f"wrote {args.out}: {len(store.tokens)} tokens, {store.num_documents} documents", file=sys.stderr)
    return 0
