"""One module per `lmlab` verb; each defines `register(subparsers)` and sets `run` on its parser."""
