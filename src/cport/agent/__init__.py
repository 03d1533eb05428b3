"""The agent (`cport up`): policy state with atomic reloads, the proxy enforcer (CONNECT
gateway and per-port listeners), live re-checks, revocation, flows, and the local API."""

from __future__ import annotations

from cport.agent._agent import Agent, AgentMetrics
from cport.agent._conns import LiveConnection, Registry
from cport.agent._flows import FlowFilter, FlowHub, FlowRecord
from cport.agent._revocations import Revocation, Revocations
from cport.agent._state import PolicyState, ReloadResult

__all__ = [
    "Agent",
    "AgentMetrics",
    "FlowFilter",
    "FlowHub",
    "FlowRecord",
    "LiveConnection",
    "PolicyState",
    "Registry",
    "ReloadResult",
    "Revocation",
    "Revocations",
]
