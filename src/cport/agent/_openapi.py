"""The agent API's OpenAPI 3.1 document (served at /openapi.json). A test checks that every
route the server has is described here and every described path is served."""

from __future__ import annotations

from typing import Any


def _ok(description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": schema or {"type": "object"}}},
    }


_ERROR = _ok(
    "An error: a stable reason code and a message.",
    {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
            }
        },
    },
)


def _q(name: str, kind: str = "string", description: str = "") -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "schema": {"type": kind},
        "description": description,
    }


def _p(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


_AUDIT_Q = [
    _q("since_ns", "integer"),
    _q("until_ns", "integer"),
    _q("verdict"),
    _q("reason"),
    _q("workload", description="namespace/name"),
    _q("port", "integer"),
    _q("peer_identity", "integer"),
    _q("subject"),
    _q("policy"),
    _q("kind"),
]

OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "cport agent API",
        "version": "0",
        "description": "Local API of `cport up`: status, explain, ports, flows, audit, "
        "revocation, metrics. Served on a unix socket (owner-only) and optionally on loopback "
        "TCP; non-loopback clients need `Authorization: Bearer <admin token>`.",
    },
    "components": {
        "securitySchemes": {"admin": {"type": "http", "scheme": "bearer"}},
    },
    "paths": {
        "/healthz": {"get": {"summary": "Liveness", "responses": {"200": _ok("Alive.")}}},
        "/readyz": {
            "get": {
                "summary": "Readiness: table loaded, enforcers in sync, audit writable",
                "responses": {"200": _ok("Ready."), "503": _ok("Not ready, with problems.")},
            }
        },
        "/openapi.json": {
            "get": {"summary": "This document", "responses": {"200": _ok("OpenAPI document.")}}
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics",
                "responses": {
                    "200": {
                        "description": "Prometheus text format.",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
        "/v1/status": {
            "get": {
                "summary": "Revisions per enforcer (desired vs realised), connections, "
                "policy errors, audit health",
                "responses": {"200": _ok("Status.")},
            }
        },
        "/v1/reload": {
            "post": {
                "summary": "Reload policies and inventory now",
                "responses": {
                    "200": _ok("Reloaded (or unchanged)."),
                    "422": _ok("Rejected; the previous table stays in force."),
                },
            }
        },
        "/v1/explain": {
            "post": {
                "summary": "Explain a flow against the table in force",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["to", "port"],
                                "properties": {
                                    "from": {
                                        "type": "string",
                                        "description": "NS/WORKLOAD, entity:…, cidr:…, labels:…",
                                    },
                                    "token": {
                                        "type": "string",
                                        "description": "a credential instead of from",
                                    },
                                    "to": {"type": "string"},
                                    "port": {
                                        "type": ["string", "integer"],
                                        "description": "N or N/PROTO",
                                    },
                                },
                            }
                        }
                    },
                },
                "responses": {"200": _ok("The explanation."), "400": _ERROR, "401": _ERROR},
            }
        },
        "/v1/explanations/{id}": {
            "get": {
                "summary": "The explanation behind a refused connection's id",
                "parameters": [_p("id")],
                "responses": {"200": _ok("The explanation."), "404": _ERROR},
            }
        },
        "/v1/ports/{namespace}/{name}": {
            "get": {
                "summary": "Every port of a workload, who may connect, under which policy",
                "parameters": [_p("namespace"), _p("name")],
                "responses": {"200": _ok("The ports report."), "400": _ERROR},
            }
        },
        "/v1/flows": {
            "get": {
                "summary": "Recent flows; with follow=1 a live Server-Sent Events stream",
                "parameters": [
                    _q("verdict", description="comma-separated"),
                    _q("from", description="peer substring or identity"),
                    _q("to", description="namespace/name or namespace/"),
                    _q("port", "integer"),
                    _q("limit", "integer"),
                    _q("follow", "boolean"),
                ],
                "responses": {
                    "200": {
                        "description": "Flows (JSON) or an event stream.",
                        "content": {
                            "application/json": {"schema": {"type": "object"}},
                            "text/event-stream": {"schema": {"type": "string"}},
                        },
                    }
                },
            }
        },
        "/v1/connections": {
            "get": {
                "summary": "Live relayed connections",
                "responses": {"200": _ok("Connections.")},
            }
        },
        "/v1/audit/events": {
            "get": {
                "summary": "Audit events, oldest first",
                "parameters": [*_AUDIT_Q, _q("limit", "integer"), _q("after_seq", "integer")],
                "responses": {"200": _ok("Events."), "400": _ERROR, "503": _ERROR},
            }
        },
        "/v1/audit/who": {
            "get": {
                "summary": "Who reached which port",
                "parameters": _AUDIT_Q,
                "responses": {"200": _ok("Rows."), "400": _ERROR, "503": _ERROR},
            }
        },
        "/v1/revocations": {
            "get": {"summary": "Revocations in force", "responses": {"200": _ok("Revocations.")}},
            "post": {
                "summary": "Revoke a token id or an identity; live connections it covers "
                "close within a second",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "properties": {
                                    "tokenId": {"type": "string"},
                                    "identity": {
                                        "type": "string",
                                        "description": "numeric identity or subject",
                                    },
                                    "until": {"type": "number"},
                                    "reason": {"type": "string"},
                                },
                            }
                        }
                    },
                },
                "responses": {"201": _ok("Revoked."), "400": _ERROR},
            },
        },
        "/v1/grants": {
            "get": {
                "summary": "Kernel grants in force (eBPF datapath)",
                "responses": {"200": _ok("Grants.")},
            },
            "post": {
                "summary": "Verify a credential and open auth-required ports for an address "
                "until the credential expires or is revoked (eBPF datapath): a workload's "
                "address if the credential speaks for it (else grant-identity-mismatch), any "
                "other address bound to the credential's own identity (409 address-bound "
                "while another identity holds it; 503 grant-not-realised)",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["token", "address"],
                                "properties": {
                                    "token": {"type": "string"},
                                    "address": {"type": "string"},
                                },
                            }
                        }
                    },
                },
                "responses": {
                    "201": _ok("Granted."),
                    "400": _ERROR,
                    "401": _ERROR,
                    "409": _ERROR,
                    "503": _ERROR,
                },
            },
        },
        "/v1/revocations/{id}": {
            "delete": {
                "summary": "Lift a revocation",
                "parameters": [_p("id")],
                "responses": {"200": _ok("Removed."), "404": _ERROR},
            }
        },
    },
}

__all__ = ["OPENAPI"]
