"""The decision engine: compile policies into a table, decide flows, explain decisions.

>>> from cport.engine import compile_table, decide, explain, Flow   # doctest: +SKIP
"""

from __future__ import annotations

from cport.engine._compile import Compiler, compile_table
from cport.engine._explain import Explanation, explain
from cport.engine._flow import Endpoint, resolve_endpoint
from cport.engine._lookup import decide, lookup
from cport.engine._report import PortReport, ports_report
from cport.engine._table import EndpointPolicy, Table
from cport.engine._types import Cell, Decision, Flow, Reason, RuleRef, Verdict

__all__ = [
    "Cell",
    "Compiler",
    "Decision",
    "Endpoint",
    "EndpointPolicy",
    "Explanation",
    "Flow",
    "PortReport",
    "Reason",
    "RuleRef",
    "Table",
    "Verdict",
    "compile_table",
    "decide",
    "explain",
    "lookup",
    "ports_report",
    "resolve_endpoint",
]
