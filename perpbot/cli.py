"""perpbot: maintenance commands that are not part of a run.

    perpbot keys add VENUE | list | remove VENUE     the encrypted key file (perpbot/keys.py)

Runs are started with perpbot-launch and controlled with perpbot-ctl.
"""

from __future__ import annotations

import argparse

from perpbot import keys


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="perpbot", description="PerpBot maintenance commands (runs: perpbot-launch, "
                                                            "perpbot-ctl, perpbot-monitor)")
    commands = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    keys.add_parser(commands)
    args = p.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
