"""One exception tree for all of cport.

::

    CportError                    base; carries a stable `code` (a reason code)
    ├── InputError                bad input a user can fix: names file, line, column, field
    │   ├── PolicyError           a policy document is invalid
    │   ├── InventoryError        an inventory document (Workload, Pod, Namespace) is invalid
    │   └── UnsupportedFieldError a field cport understands but does not enforce (L7, toFQDNs, …)
    ├── FlowError                 a flow endpoint (`--from`/`--to`) cannot be resolved
    ├── IdentityError             identity allocation or state-directory trouble
    │   └── CredentialError       a presented credential was rejected; `code` says why
    │       ├── TokenExpired      code "expired"
    │       ├── BadSignature      code "bad-signature"
    │       └── UnknownIssuer     code "unknown-issuer"
    ├── ConfigError               the agent/identity configuration file is invalid (located)
    ├── AuditError                the audit store cannot be read, written or trusted
    └── EngineError               internal inconsistency in compile/lookup (a bug: please report)

Library code raises these; the CLI maps them to exit codes in one place (`cport.cli`).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Location:
    """Where in an input a problem sits: file, 1-based line and column, and the field path."""

    file: str
    line: int = 0
    column: int = 0
    path: str = ""

    def __str__(self) -> str:
        pos = self.file
        if self.line:
            pos += f":{self.line}:{self.column}" if self.column else f":{self.line}"
        return f"{pos}: {self.path}" if self.path else pos

    def to_json(self) -> dict[str, object]:
        return {"file": self.file, "line": self.line, "column": self.column, "field": self.path}


class CportError(Exception):
    """Base of every error cport raises on purpose. `code` is a stable, documented reason code."""

    code = "error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def to_json(self) -> dict[str, object]:
        return {"code": self.code, "message": self.message}


class InputError(CportError):
    """Bad user input, located precisely. `hint` says what would be accepted."""

    code = "invalid"

    def __init__(
        self, message: str, location: Location, *, code: str | None = None, hint: str = ""
    ) -> None:
        super().__init__(message, code=code)
        self.location = location
        self.hint = hint

    def __str__(self) -> str:
        text = f"{self.location}: {self.message}"
        return f"{text} ({self.hint})" if self.hint else text

    def to_json(self) -> dict[str, object]:
        out = super().to_json()
        out.update(self.location.to_json())
        if self.hint:
            out["hint"] = self.hint
        return out


class PolicyError(InputError):
    code = "invalid-policy"


class InventoryError(InputError):
    code = "invalid-inventory"


class UnsupportedFieldError(InputError):
    """`droppable`: whether dropping the rule holding the field can only narrow access."""

    code = "unsupported-field"
    droppable = True


class InputErrors(CportError):
    """Several input errors found in one pass: users fix them all at once, not one per run."""

    code = "invalid"

    def __init__(self, errors: list[InputError]) -> None:
        super().__init__(f"{len(errors)} error(s) in input")
        self.errors = errors

    def __str__(self) -> str:
        return "\n".join(str(e) for e in self.errors)


class FlowError(CportError):
    code = "invalid-flow"


class IdentityError(CportError):
    code = "identity-error"


class CredentialError(IdentityError):
    """A credential was presented and is not acceptable. Never carries the credential itself."""

    code = "credential-rejected"


class TokenExpired(CredentialError):
    code = "expired"


class BadSignature(CredentialError):
    code = "bad-signature"


class UnknownIssuer(CredentialError):
    code = "unknown-issuer"


class ConfigError(InputError):
    code = "invalid-config"


class AuditError(CportError):
    code = "audit-error"


class EngineError(CportError):
    code = "engine-error"


class EbpfError(CportError):
    """The eBPF enforcer (`cport.ebpf`) failed: compiling, loading, attaching, or a map
    operation. `code` says which (``bpf-compile-failed``, ``bpf-load-failed``,
    ``no-bpffs``, ``interface-not-found``, ``layout-mismatch``, ``not-open``, …); `errno` is the
    kernel's error number where there is one."""

    code = "ebpf-error"

    def __init__(self, message: str, *, code: str | None = None, errno: int = 0) -> None:
        super().__init__(message, code=code)
        self.errno = errno


class EbpfToolMissing(EbpfError):
    """A tool the eBPF enforcer needs is not installed (clang, libbpf headers, libbpf.so.1);
    the message names it and the Debian package that provides it."""

    code = "ebpf-tool-missing"


class ProxyRequestError(CportError):
    """A client's proxy request (the HTTP CONNECT head) was refused before any upstream was
    contacted. ``code`` is the reason code, ``status`` the HTTP status to answer with. The
    message never carries a credential."""

    code = "bad-request"
    status = 400

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None) -> None:
        super().__init__(message, code=code)
        if status is not None:
            self.status = status

    def to_json(self) -> dict[str, object]:
        out = super().to_json()
        out["status"] = self.status
        return out
