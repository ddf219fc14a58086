"""The bodies of `roamgate` subcommands; cli.py only parses arguments and reports errors."""
