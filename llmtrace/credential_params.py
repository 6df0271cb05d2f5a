"""Which URL query parameters carry credentials, for every place that shows or stores a URL.

One list, so that a URL in a stored span (`shim.headers.masked_query`) and one in shown config
(`llmtrace.config.redact`) hide the same values: provider keys (`?key=`, `?api_key=`), tokens,
Azure SAS signatures (`?sig=`), and Azure Functions keys (`?code=`).
"""

from __future__ import annotations

import re
from typing import Final
from urllib.parse import unquote_plus

#: A parameter whose name contains one of these (any case) holds a credential.
_WORDS: Final = ("key", "token", "secret", "sig", "signature", "password", "passwd", "auth", "credential")
#: Parameters that hold one under a name of their own.
_NAMES: Final = ("code",)

#: A `name=value` query parameter: at the start, or after `?`, `&` or `;`. A name never holds `?`,
#: so each parameter's name is read once (linear time).
_PARAM: Final = re.compile(r"(?P<head>(?:^|(?<=[?&;]))(?P<name>[^=&;?#\s]+)=)(?P<value>[^&;#\s]*)")


def mask_credential_params(text: str, mask: str) -> str:
    """`text` with the value of every credential parameter replaced by `mask`. A name is judged as
    a server reads it, percent-decoded: `?%6Bey=...` is a `key` to the upstream, and to us."""
    return _PARAM.sub(
        lambda m: m["head"] + mask if is_credential_param(unquote_plus(m["name"])) else m[0], text
    )


def is_credential_param(name: str) -> bool:
    """Whether a query parameter named `name` carries a credential."""
    lowered = name.lower()
    return lowered in _NAMES or any(word in lowered for word in _WORDS)
