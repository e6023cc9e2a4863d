"""What every HTTP entry point shares, the API and the webhooks alike: refusing request
bodies nested too deep before they are decoded, and knowing a database outage when one
is raised. At the project's root so that any sub-app may use it."""

from __future__ import annotations

import re
from itertools import accumulate

import psycopg
from django.db import InterfaceError, OperationalError

# Errors that mean the database cannot be reached (or dropped the connection): the
# request may succeed if retried, so they answer 503, not 500. psycopg's own classes
# come from statements run on the raw connection (the ingest's bulk insert).
DATABASE_UNAVAILABLE_ERRORS = (
    OperationalError,
    InterfaceError,
    psycopg.OperationalError,
    psycopg.InterfaceError,
)
UNAVAILABLE_RETRY_AFTER_SECONDS = 5


# Deeper JSON is refused before it is decoded: decoders, and every walk over the decoded
# body (validation, storing rejected events, the JSON column), recurse once per level.
MAX_JSON_DEPTH = 64
# A string, or an unterminated one up to the end (the decoder refuses that body anyway).
_JSON_STRING = re.compile(rb'"[^"]*(?:"|$)')
_NOT_JSON_STRUCTURE = bytes(range(256)).translate(None, b'"[]{}')
_JSON_DEPTH_STEP = {ord("["): 1, ord("{"): 1, ord("]"): -1, ord("}"): -1}


def json_too_deep_message() -> str:
    return (
        f"the body is refused: nesting deeper than {MAX_JSON_DEPTH} levels of arrays and "
        "objects; send a flatter document"
    )


def json_nesting_exceeds(body: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether a JSON body nests arrays and objects deeper than ``limit``.

    Linear and in C for the most part, so it costs little next to decoding: escapes are
    dropped (so every remaining quote delimits a string), then all but quotes and
    brackets, then the strings with the brackets inside them; the running depth of what
    is left is the nesting. Malformed JSON may be misjudged here; the decoder refuses it.
    """
    if b"\\" in body:
        body = body.replace(b"\\\\", b"").replace(b'\\"', b"")
    structure = body.translate(None, _NOT_JSON_STRUCTURE)
    if structure.count(b"[") + structure.count(b"{") <= limit:
        return False  # too few brackets to nest deeper, wherever they are
    # Most strings hold no bracket: dropping their quote pairs first leaves the regex
    # little to do. (A pair that closes one string and opens the next only joins them.)
    structure = _JSON_STRING.sub(b"", structure.replace(b'""', b""))
    depths = accumulate(map(_JSON_DEPTH_STEP.__getitem__, structure))
    return max(depths, default=0) > limit
