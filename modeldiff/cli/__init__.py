"""Command-line interface (click)."""

def main():
    from modeldiff.cli.main import cli
    cli()
