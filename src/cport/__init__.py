"""Cilium Port: which port of a workload is open, to whom, under which policy, and why.

The pipeline, one subpackage per stage::

    cport.model     policy and inventory documents -> validated Policy / Inventory
    cport.identity  label sets -> stable numeric security identities
    cport.engine    Policy + Inventory + identities -> Table(revision); decide / explain
    cport.cli       the `cport` command, a thin shell over the above
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["__version__"]
