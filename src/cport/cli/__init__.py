"""The `cport` command line: a thin shell over the library."""

from __future__ import annotations

import click

from cport import __version__
from cport.cli._agent import dev, observe_cmd, reload_cmd, revoke_cmd, status_cmd, up_cmd
from cport.cli._audit import audit, who_cmd
from cport.cli._bpf import bpf
from cport.cli._connect import connect_cmd
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
main.add_command(bpf)
main.add_command(up_cmd)
main.add_command(status_cmd)
main.add_command(observe_cmd)
main.add_command(revoke_cmd)
main.add_command(reload_cmd)
main.add_command(connect_cmd)
main.add_command(dev)

__all__ = ["main"]
