"""``python -m prefcurate`` (and ``torchrun -m prefcurate``) runs the CLI."""

from prefcurate.cli import run

if __name__ == "__main__":
    run()
