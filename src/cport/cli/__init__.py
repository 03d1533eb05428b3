"""The `cport` command line: a thin shell over the library."""

from __future__ import annotations

import click

from cport import __version__
from cport.cli._audit import audit, who_cmd
from cport.cli._policy import policy
from cport.cli._query import explain_cmd, ports_cmd
from cport.cli._token import token


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="cport")
def main() -> None:
    """Cilium Port: which port of a workload is open, to whom, under which policy, and why."""


main.add_command(policy)
main.add_command(explain_cmd)
main.add_command(ports_cmd)
main.add_command(token)
main.add_command(audit)
main.add_command(who_cmd)

__all__ = ["main"]
