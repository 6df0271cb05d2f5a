"""Which URL query parameters carry credentials, for every place that shows or stores a URL.

One list, so that a URL in a stored span (`shim.headers.masked_query`) and one in shown config
(`llmtrace.config.redact`) hide the same values: provider keys (`?key=`, `?api_key=`), tokens,
Azure SAS signatures (`?sig=`), and Azure Functions keys (`?code=`).
"""

from __future__ import annotations

import re
from typing import Final

#: A parameter whose name contains one of these (any case) holds a credential.
_WORDS: Final = ("key", "token", "secret", "sig", "signature", "password", "passwd", "auth", "credential")
#: Parameters that hold one under a name of their own.
_NAMES: Final = ("code",)

#: A `name=value` query parameter (after `?`, `&` or `;`) whose value is a credential.
CREDENTIAL_PARAM: Final = re.compile(
    r"(?P<head>(?:^|(?<=[?&;]))(?P<name>"
    + "|".join(_NAMES)
    + r"|[^=&;?#\s]*(?:"
    + "|".join(_WORDS)
    + r")[^=&;?#\s]*)=)(?P<value>[^&;#\s]*)",
    re.IGNORECASE,
)


def is_credential_param(name: str) -> bool:
    """Whether a query parameter named `name` carries a credential."""
    lowered = name.lower()
    return lowered in _NAMES or any(word in lowered for word in _WORDS)
