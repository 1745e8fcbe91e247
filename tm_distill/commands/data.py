"""`tm-distill fetch-data`: download the public-domain corpora used by the demo recipe and tests."""

from __future__ import annotations

import click

from ..data.corpora import CORPORA, CorpusUnavailable, fetch_corpus


@click.command("fetch-data")
@click.argument("name", type=click.Choice(sorted(CORPORA)), default="shakespeare")
def fetch_data(name: str) -> None:
    """Fetch a public-domain corpus into the cache (once) and print where it is.

    \b
    Example:
      tm-distill fetch-data shakespeare
    """
    try:
        path = fetch_corpus(name)
    except CorpusUnavailable as err:
        raise click.ClickException(str(err)) from err
    files = sorted(path.glob("*.txt"))
    size = sum(f.stat().st_size for f in files)
    click.echo(f"{name}: {len(files)} files, {size / 1e6:.1f} MB in {path}")
