"""The one error type for input a user got wrong.

Whatever refuses a user's input (an argument, a file, a folder, a request field) raises :class:`InputError`
with a message that names the field or file and says what was expected. The runtime names fields, never a
command-line flag, and puts the field first (``steps: must be an integer from 1 to 150 (got 500)``). Front ends
add their own wording: the command line puts the flag of a field it has an option for in the field's place,
prints exactly these errors as one line and exits 2; the Triton models answer INVALID_ARGUMENT.
Anything else is a bug and keeps its traceback. It subclasses ``ValueError`` so that callers that already
catch ``ValueError`` keep working.
"""
from __future__ import annotations


class InputError(ValueError):
    """Input refused: the message names the field or file and what was expected (one line)."""
