"""A TLS certificate that does not verify (its CA not trusted, a name other than the host's,
expired) is a setup to fix, which no retry mends: the HTTP clients of GitHub's APIs and of
`serve`'s lease API stop with a ConfigError (exit 2, one line) naming where to give the CA,
instead of retrying and recording it as a user's failure."""

from __future__ import annotations

import ssl

from bulkbackup.errors import ConfigError

HINT = "give its CA's certificate in SSL_CERT_FILE"


def certificate_failure(exc: BaseException) -> ssl.SSLCertVerificationError | None:
    """The certificate's failure inside an HTTP client's error (urllib3 keeps it in its
    arguments, as a cause, or as a MaxRetryError's reason, a few levels down), or None when
    the error is something else."""
    level: list[object] = [exc]
    for _ in range(4):
        for e in level:
            if isinstance(e, ssl.SSLCertVerificationError):
                return e
        level = [inner for e in level if isinstance(e, BaseException)
                 for inner in (*e.args, e.__cause__, e.__context__, getattr(e, "reason", None))
                 if isinstance(inner, BaseException)]
    return None


def untrusted_message(what: str, failure: ssl.SSLCertVerificationError) -> str:
    return f"{what}'s TLS certificate is not trusted ({failure.verify_message}): {HINT}"


def raise_if_untrusted(what: str, exc: BaseException) -> None:
    """Raise the ConfigError of ``exc`` when it is a certificate that did not verify."""
    failure = certificate_failure(exc)
    if failure is not None:
        raise ConfigError(untrusted_message(what, failure)) from None
