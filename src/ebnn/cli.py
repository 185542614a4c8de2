"""Command-line interface: a thin layer over the Python API."""

from __future__ import annotations

import argparse


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ebnn")
    parser.parse_args(argv)
    return 0
