"""Run the CLI in-process and return its exit status, as a user's shell would see it."""

from spectrum_llm.cli import main


def run_cli(argv) -> int:
    try:
        main(argv)
    except SystemExit as e:
        return e.code or 0
    return 0
