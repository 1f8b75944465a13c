"""The help layout every installed command shares: descriptions and epilogs as written,
and each option's default after its help text."""
from __future__ import annotations

import argparse


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """Adds "(default: X)" to an option's help unless the help already names its default.

    Flags (no value), required options and positionals have no default to show; an unset
    (None) default reads "none" unless the help says what it means.
    """

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if ("default" in text.lower() or action.default is argparse.SUPPRESS
                or action.nargs == 0 or action.required or not action.option_strings):
            return text
        shown = "none" if action.default is None else "%(default)s"
        return f"{text} (default: {shown})" if text else f"default: {shown}"


class HelpFormatter(argparse.RawDescriptionHelpFormatter, DefaultsHelpFormatter):
    """`DefaultsHelpFormatter` that keeps the description and epilog's own line breaks."""
