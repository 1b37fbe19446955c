"""``python -m aicortex`` runs the command line (:mod:`aicortex.cli`)."""

from .cli import cli

if __name__ == "__main__":  # pragma: no cover
    cli()
