"""One-line texts for records and messages: exceptions and file names made printable."""

from __future__ import annotations

__all__ = ["one_line", "printable"]

#: Control characters (C0, DEL, C1) and their escapes: ``\n`` in a file name must not split an
#: error line.  The command line, which must not import the library to print a usage error,
#: keeps the same table (``nlattn_cli.attnmap``).
_ESCAPES = {i: f"\\x{i:02x}" for i in (*range(32), *range(127, 160))}
_ESCAPES.update({ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t"})


def printable(text: str) -> str:
    """``text`` with control characters escaped (``\\n``, ``\\x1b``), so that it stays on one
    line and cannot drive the terminal; surrogates of undecodable file names become ``\\udcXX``.

    Parameters
    ----------
    text : str
        A file name or a message.

    Returns
    -------
    str
        The text, unchanged when it holds no control character and no surrogate.
    """
    text = str(text).translate(_ESCAPES)
    if any("\ud800" <= c <= "\udfff" for c in text):
        text = "".join(f"\\u{ord(c):04x}" if "\ud800" <= c <= "\udfff" else c for c in text)
    return text


def one_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type's name when the message is empty),
    control characters escaped."""
    text = str(exc).strip()
    if isinstance(exc, KeyError) and exc.args:
        text = str(exc.args[0])
    first = text.splitlines()[0].strip() if text else ""
    return printable(first or type(exc).__name__)
