"""Placeholder: replaced below."""
import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--out", default="build/simulation")


def run(args: argparse.Namespace) -> int:
    return 1
