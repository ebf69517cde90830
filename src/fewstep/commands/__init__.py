"""Subcommands of the fewstep command line; each module defines add_parser and run."""
