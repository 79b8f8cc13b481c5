"""What bench/locustfile.py says when a request fails before any HTTP
status: locust reports those as "status 0", which names no cause. A
certificate the client can't verify is by far the most common one with the
kit (no LBCORE_CA, or the CA of an earlier target), so it is named as such.
Kept apart from the locustfile so that the tests need no locust."""

from __future__ import annotations

import ssl

VERIFY_HINT = ("set LBCORE_CA (or --lbcore-ca) to the CA file `python -m bench.locust_target` "
               "printed; verification is never switched off")


def _chain(exc: BaseException | None):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        # requests wraps urllib3's error, which wraps ssl's, in args or __context__.
        nested = [a for a in getattr(exc, "args", ()) if isinstance(a, BaseException)]
        exc = (nested[0] if nested else None) or exc.__cause__ or exc.__context__ \
            or getattr(exc, "reason", None)


def describe_error(exc: BaseException | None, ca: str = "") -> str:
    """One line for a request that got no HTTP response."""
    if exc is None:
        return "no response (status 0) and no error recorded"
    for e in _chain(exc):
        if isinstance(e, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in str(e):
            detail = getattr(e, "verify_message", "") or str(e)
            against = f"the CA in {ca}" if ca else "the system's trust store"
            return (f"certificate verification failed against {against} ({detail[:200]}): "
                    + VERIFY_HINT)
        if isinstance(e, ssl.SSLError):
            return f"TLS error: {str(e)[:200]}"
    return f"no response: {type(exc).__name__}: {str(exc)[:200]}"
