"""Baton's own request-head scanner: a whole, plain HTTP/1.1 request head in one pass.

Theory of operation. ``scan_head`` is given the bytes a client sent at the start of a
request (a read that begins where a request begins) and either returns the request's
method, target and header fields, with the offset where its head ends, or returns None:
"not for me". It never rejects: it takes only heads it is sure httptools (llhttp, strict)
would parse to exactly the same method, target, fields, version and keep-alive verdict, and
leaves everything else to the connection's httptools parser, which then applies today's
rules and verdicts to those bytes unchanged. So the meaning of a request, and every
rejection (bare CR or LF, obs-fold, whitespace before a colon, a byte outside a token, a
duplicate or conflicting Content-Length, Transfer-Encoding, sizes, versions), stays where it
was: the smuggling rules in ``http.scan_request`` see the same fields whichever parser
found them, and llhttp still judges every head the scanner declines.

What it takes: ``METHOD SP origin-form SP HTTP/1.1 CRLF`` with a common method (not
CONNECT), a target of visible ASCII starting with ``/``; header lines of visible ASCII, SP
and HTAB only, each ``token ":" value`` (leading SP/HTAB of the value dropped, trailing kept,
as llhttp does); no Content-Length, Transfer-Encoding, Upgrade or Proxy-Connection (those
frame a body or switch protocols: httptools parses them), and a Connection header only when
it says exactly ``keep-alive``; the whole head within ``limit`` bytes and at most
``max_headers`` fields; the head ended by CRLF CRLF within the bytes given. The bytes after
the head are the next request's (a request with none of those headers has no body).
A head split over reads is not taken (its first read does not hold it whole): httptools
parses it, as before. It is one loop over the head's bytes with a class table, on native
integers (``i64``) once compiled: a regex or a ``find``/``translate`` per line costs more
per call than walking a header line byte by byte.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final, final

if TYPE_CHECKING:
    from mypy_extensions import i64  # (native integers for mypyc; plain ints when pure)

# Whether this module runs compiled. Interpreted, the byte loop costs more than httptools'
# callbacks (~390k instructions per proxied request against ~160k): the pure fallback keeps
# httptools for every head, and the scanner is what it is for, a compiled fast path.
COMPILED: Final = not __file__.endswith(".py")

# Methods the scanner takes (llhttp knows many more; the rest go to httptools).
_METHODS: Final = frozenset({b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PATCH"})
# What a byte may be (bits of ``_CLASS[byte]``).
_TOKEN: Final = 1  # in a field name (RFC 9110 tchar)
_VALUE: Final = 2  # in a field value (HTAB, SP, visible ASCII; llhttp's obs-text is left to it)
_VISIBLE: Final = 4  # in the request target
_UPPER: Final = 8  # in a method


def _classes() -> bytes:
    table = bytearray(256)
    tchar = b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
    for b in range(256):
        bits = 0
        if b in tchar:
            bits |= _TOKEN
        if b == 9 or 0x20 <= b <= 0x7E:
            bits |= _VALUE
        if 0x21 <= b <= 0x7E:
            bits |= _VISIBLE
        if 0x41 <= b <= 0x5A:
            bits |= _UPPER
        table[b] = bits
    return bytes(table)


_CLASS: Final = _classes()
_FRAMING: Final = frozenset(
    {b"content-length", b"transfer-encoding", b"upgrade", b"proxy-connection"}
)
_CONNECTION: Final = b"connection"
# Whether some name above has this (length, first letter & 31): only those are lowered.
_WATCH: Final[list[bool]] = [False] * 1024
for _name in (*_FRAMING, _CONNECTION):
    _WATCH[len(_name) << 5 | _name[0] & 31] = True


@final
class ScannedHead:
    """A request head the scanner took: what httptools would have reported for it."""

    __slots__ = ("end", "headers", "method", "url")

    def __init__(
        self, method: bytes, url: bytes, headers: list[tuple[bytes, bytes]], end: int
    ) -> None:
        self.method = method
        self.url = url
        self.headers = headers  # (name, value) as sent, in order
        self.end = end  # offset of the first byte after the head's blank line


def scan_head(data: bytes, limit: int, max_headers: int) -> ScannedHead | None:
    """The request head at the start of ``data``, or None when httptools must parse it."""
    n: i64 = len(data)
    if n > limit:
        return None  # (the size rules for large reads stay with the httptools path)
    cls = _CLASS
    i: i64 = 0
    while i < n and cls[data[i]] & _UPPER:
        i += 1
    method = data[:i]
    if i >= n or data[i] != 32 or (method != b"GET" and method not in _METHODS):
        return None
    i += 1
    start: i64 = i
    if i >= n or data[i] != 47:  # "/": origin-form only
        return None
    while i < n and cls[data[i]] & _VISIBLE:
        i += 1
    url = data[start:i]
    if data[i : i + 11] != b" HTTP/1.1\r\n":
        return None
    i += 11
    headers: list[tuple[bytes, bytes]] = []
    watch = _WATCH
    while True:
        if i + 1 >= n:
            return None  # incomplete: httptools takes it (and its time-out and size rules)
        if data[i] == 13:
            if data[i + 1] != 10:
                return None
            return ScannedHead(method, url, headers, i + 2)
        start = i
        while i < n and cls[data[i]] & _TOKEN:
            i += 1
        if i == start or i >= n or data[i] != 58:
            return None
        name = data[start:i]
        i += 1
        while i < n and (data[i] == 32 or data[i] == 9):
            i += 1  # leading whitespace is not the value's; trailing is (as llhttp has it)
        start = i
        while i < n and cls[data[i]] & _VALUE:
            i += 1
        if i + 1 >= n or data[i] != 13 or data[i + 1] != 10:
            return None  # a bare CR or LF, a control byte, obs-text, or incomplete
        value = data[start:i]
        i += 2
        size = len(name)
        if size < 32 and watch[size << 5 | name[0] & 31]:
            # (as browsers spell it, no lower-casing: a comparison costs less than a call)
            if name == b"Connection" or name.lower() == _CONNECTION:
                if value != b"keep-alive" and value.lower() != b"keep-alive":
                    return None
            elif name.lower() in _FRAMING:
                return None
        if len(headers) >= max_headers:
            return None
        headers.append((name, value))
