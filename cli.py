"""Run the adasearch CLI from a checkout: `python cli.py inspect demo`."""

from adasearch.cli import main

if __name__ == "__main__":
    main()
