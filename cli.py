"""Thin shim so `python cli.py ...` works from a checkout; the CLI lives in tm_distill.cli."""

from tm_distill.cli import cli, main

__all__ = ["cli", "main"]

if __name__ == "__main__":
    main()
