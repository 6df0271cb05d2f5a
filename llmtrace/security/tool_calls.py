"""Risky tool calls made by a model: dangerous shell commands, sensitive file paths, suspicious URLs.

Finding types follow the predecessor's agent vocabulary: `dangerous_command` (recursive deletion of
system or home directories, a download piped into a shell, `chmod 777`, `mkfs`, raw disk writes, fork
bombs, reverse shells), `sensitive_file_access` (`/etc/shadow`, SSH keys, `.env` files, process
environments, cloud credentials) and `suspicious_url` (`file://` and other SSRF schemes, the cloud
metadata address, raw IP addresses, paste, tunnel and request-capture hosts). Loopback addresses written
the usual way are left alone: local development tools use them all the time.

A download counts as run (`pipe_to_shell`) when it is piped into a shell or an interpreter reading its
standard input (past `sudo` and its options, a path, `env`), read by one through process substitution
(`bash <(curl …)`, `. <(curl …)`), run as the command of `sh -c "$(curl …)"` or `eval`, or handed to
PowerShell's `Invoke-Expression`. A URL's host that is an IPv4 address in another notation, as browsers
and curl read it (`2130706433`, `0x7f000001`, `0177.0.0.1`, `127.1`), is judged as the address it is,
the way its dotted form would be; only loopback in such a notation is flagged where its dotted form is
not (nothing but evasion writes it so). Invisible characters (zero-width, soft hyphen, BOM) inside a
command or path are removed by `normalize` before matching; excerpts show the text without them.

Every string in the arguments (JSON, parsed; raw text when it does not parse) is checked on its own, so
a finding's location names the argument, e.g. `response.choices[0].message.tool_calls[0].arguments.cmd`.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Final

from llmtrace.security.findings import Finding, Match, Severity, drop_overlapping, to_findings
from llmtrace.security.masking import MASK_MARGIN, mask_sensitive, masked_prefix
from llmtrace.security.normalize import normalize

DANGEROUS_COMMAND: Final = "dangerous_command"
SENSITIVE_FILE_ACCESS: Final = "sensitive_file_access"
SUSPICIOUS_URL: Final = "suspicious_url"

# Bounds: a model can emit huge arguments; the first strings and characters are what matter.
MAX_STRINGS: Final = 256
MAX_STRING_CHARS: Final = 65_536
#: The strings past MAX_STRINGS are checked together, up to this many characters.
_REST_MAX_CHARS: Final = 4 * MAX_STRING_CHARS
_MAX_DEPTH: Final = 32
_EXCERPT_MAX: Final = 80
#: Characters of a tool's name that a finding's description repeats, and of an argument's name that a
#: finding's location does.
_TOOL_NAME_SHOWN: Final = 64
_KEY_SHOWN: Final = 64


@dataclass(frozen=True, slots=True)
class _Rule:
    kind: str
    type: str
    severity: Severity
    confidence: float
    description: str
    pattern: re.Pattern[str]
    #: A further test of a match, for what a regex would say only by backtracking.
    accept: Callable[[re.Match[str]], bool] | None = None
    #: Substrings of which the text must hold one for the rule to run (none: it always runs): a
    #: pattern that cannot start from a literal is tried at every position, and most text holds no
    #: `<(` or `$(` at all.
    gate: tuple[str, ...] = ()


def _rule(
    kind: str,
    type_: str,
    severity: Severity,
    confidence: float,
    pattern: str,
    *,
    accept: Callable[[re.Match[str]], bool] | None = None,
    gate: tuple[str, ...] = (),
) -> _Rule:
    description = kind.replace("_", " ").capitalize()
    return _Rule(kind, type_, severity, confidence, description, re.compile(pattern), accept, gate)


_SYSTEM_DIRS: Final = r"(?:etc|usr|var|bin|sbin|boot|home|root|lib|lib64|opt|dev|sys|proc)"
# `rm`, up to eight options, then a target that deletes a system: the root, home, everything here, a
# system directory, quoted or not. Each option is one whitespace-delimited word, so matching is linear
# (a class nested in a class, `-[a-z]*(?:r[a-z]*f|...)`, took seconds on "rm -rrrr..."); whether the
# options say recursive and forced is `_forced_recursive`'s question, asked of the words.
_RM_TARGET: Final = rf"(?:/\*?|(?:~|\$home|\$\{{home\}})/?\*?|\*|/{_SYSTEM_DIRS}/?)"
# What may follow the target: the end of the command, or of a string it is quoted in (`sh -c 'rm -rf /'`).
_RM_END: Final = r"(?=$|[\s;&|)'\"])"
_RECURSIVE_DELETE: Final = (
    r"\brm\s+(?P<before>(?:-[a-z-]*\s+){0,8})"
    rf"(?P<quote>[\"']?){_RM_TARGET}(?P=quote){_RM_END}"
    rf"(?P<after>(?:\s+-[a-z-]*{_RM_END}){{0,8}})"
)


def _long_option(word: str, name: str) -> bool:
    # GNU options may be shortened to any unambiguous prefix: `--rec`, `--force`.
    return word.startswith("--") and len(word) > 2 and name.startswith(word[2:])


def _forced_recursive(match: re.Match[str]) -> bool:
    """Whether an `rm`'s options, wherever they stand and however grouped (`-rf`, `-r -f`,
    `--recursive --force`), say both recursive and forced."""
    words = (match.group("before") + " " + match.group("after")).split()
    short = "".join(word for word in words if not word.startswith("--"))
    recursive = "r" in short or any(_long_option(word, "recursive") for word in words)
    forced = "f" in short or any(_long_option(word, "force") for word in words)
    return recursive and forced


# A download run as code. Every repetition is bounded and each is followed by a character it cannot
# match (`-` options then whitespace, `NAME=` then a value of at most 256 characters), so matching
# stays linear: an unbounded value (`\S*`) ran to the end of `curl|a=curl|a=...` from every `curl`.
_SHELL: Final = r"(?:(?:ba|z|da|k|tc|c)?sh|fish|pwsh|powershell(?:\.exe)?)"
_INTERPRETER: Final = r"(?:python[\d.]*|perl|ruby|node|php)"
_DOWNLOADER: Final = (
    r"(?:curl|wget|(?<!git )fetch|iwr|irm|invoke-webrequest|invoke-restmethod|downloadstring)\b"
)
# What runs its standard input: a shell, or an interpreter given no script (nothing, or `-`, after its
# name: `python -m json.tool`, `perl -ne '…'`, `node parse.js` read the download as data), or
# PowerShell's `iex`; after variables (`DEBUG=1`), `sudo` and its options (`-u root`), a path, `env`.
_VARIABLES: Final = r"(?:\w{1,64}=[^\s|;&]{0,256}\s+){0,4}"
_RUNS_STDIN: Final = (
    _VARIABLES + r"(?:(?:exec|command)\s+)?"
    r"(?:sudo(?:\s+-[\w-]+(?:[=\s]+(?!-)[\w.-]+)?){0,4}\s+)?"
    r"(?:(?:/usr)?(?:/local)?/s?bin/)?(?:env\s+" + _VARIABLES + r")?(?:(?:/usr)?(?:/local)?/s?bin/)?"
    rf"(?:{_SHELL}(?![\w-])|{_INTERPRETER}(?=\s*(?:$|[\n;&|)'\"`]|-(?:\s|$)))|(?:iex|invoke-expression)\b)"
)
# Each way a download is run is its own pattern, gated on the characters it needs (see `_Rule.gate`).
_PIPED_TO_RUN: Final = (
    rf"\b{_DOWNLOADER}[^\n|;]{{0,300}}\|&?\s*{_RUNS_STDIN}"
    rf"|\bbase64\s+(?:-d|--decode)\b[^\n|;]{{0,100}}\|&?\s*{_RUNS_STDIN}"
)
# Read as a script file through process substitution: `bash <(curl …)`, `source <(…)`, `. <(…)`,
# or as standard input: `bash < <(curl …)` (how rvm's installer is run).
_SUBSTITUTED_SCRIPT: Final = (
    rf"(?:\b(?:{_SHELL}|source|{_INTERPRETER})|(?<![^\s;&|(])\.)\s+(?:-[\w-]+\s+){{0,4}}"
    rf"(?:<\s*)?<\(\s*(?:sudo\s+)?{_DOWNLOADER}"  # `bash < <(curl …)`: the same, as standard input
)
# Run as a command: `bash -c "$(curl …)"`, `node -e "$(curl …)"`, `eval "$(curl …)"`, `eval `curl …``.
_SUBSTITUTED_COMMAND: Final = (
    rf"\b(?:{_SHELL}\s+(?:-[\w-]+\s+){{0,3}}-[a-z]*c|{_INTERPRETER}\s+(?:-[\w-]+\s+){{0,3}}-[a-z]*[ce]|eval)"
    rf"\s+[\"']?(?:\$\(|`)\s*(?:sudo\s+)?{_DOWNLOADER}"
)
# PowerShell: `iex ((New-Object Net.WebClient).DownloadString(…))`, `iex (iwr …)`.
_INVOKED_EXPRESSION: Final = (
    r"\b(?:iex|invoke-expression)\b[\s(]{0,8}(?:new-object\s+(?:system\.)?net\.webclient\s*\)\s*\.\s*"
    r"downloadstring|(?:iwr|irm|invoke-webrequest|invoke-restmethod)\b)"
)

# A URL's host that may be an IPv4 address in a notation other than dotted decimal; `_ipv4` decides.
# The match starts at `://` (the scheme is looked behind at): a pattern starting with a literal is
# searched for fast, twenty times faster here than from `\b(?:https?|…)`; the excerpt still shows the
# scheme, as context. Userinfo (`user:pw@`) and the host are bounded runs, so a failed match costs at
# most their length.
_IP_HOST_URL: Final = (
    r"://(?:(?<=\bhttp://)|(?<=\bhttps://)|(?<=\bftp://)|(?<=\bws://)|(?<=\bwss://))"
    r"(?P<userinfo>[^\s/?#@\[\]]{1,128}@)?(?P<host>[0-9a-fx.]{1,64})(?![\w.-])"
)
_METADATA_IP: Final = (169 << 24) | (254 << 16) | (169 << 8) | 254
_LOOPBACK_NET: Final = 127
_DIGITS: Final = {8: frozenset("01234567"), 10: frozenset("0123456789"), 16: frozenset("0123456789abcdef")}


@functools.lru_cache(maxsize=256)  # both IP rules ask about the same host
def _ipv4(host: str) -> int | None:
    """The address a URL's host names when it is IPv4 in any notation browsers and curl accept (the
    WHATWG URL standard's IPv4 parser): one to four parts, each decimal, octal (`0` first) or hex (`0x`
    first), the last filling the bytes the others leave (`127.1`, `2130706433`); else None."""
    parts = host.split(".")
    if len(parts) > 1 and not parts[-1]:
        parts.pop()  # a trailing dot names the same host
    if len(parts) > 4:  # an address has four bytes
        return None
    numbers: list[int] = []
    for part in parts:
        if part.startswith("0x"):
            digits, base = part[2:], 16
        elif len(part) > 1 and part.startswith("0"):
            digits, base = part[1:], 8
        else:
            digits, base = part, 10
        if not part or not _DIGITS[base].issuperset(digits):
            return None
        numbers.append(int(digits, base) if digits else 0)
    *leading, last = numbers
    if any(number > 255 for number in leading) or last >= 256 ** (5 - len(numbers)):
        return None
    return last + sum(number << (8 * (3 - index)) for index, number in enumerate(leading))


def _numeric_host(match: re.Match[str]) -> tuple[int, bool] | None:
    """The address a matched URL's host names, and whether the host is in dotted decimal already."""
    host = match.group("host")
    address = _ipv4(host)
    if address is None:
        return None
    dotted = ".".join(str((address >> shift) & 0xFF) for shift in (24, 16, 8, 0))
    return address, host.removesuffix(".") == dotted


def _metadata_host(match: re.Match[str]) -> bool:
    """The metadata address as a host in another notation (in dotted decimal, anywhere, the other
    `ssrf_scheme` rule's pattern finds it)."""
    judged = _numeric_host(match)
    return judged is not None and judged[0] == _METADATA_IP and not judged[1]


def _other_ip_host(match: re.Match[str]) -> bool:
    """Any other address as a host in another notation, or in dotted decimal behind userinfo (which the
    `raw_ip_url` rule's own pattern does not read past); loopback in dotted decimal never, as there;
    0.0.0.0/8 never (`http://0:8000/` is how Django's runserver names 0.0.0.0; nothing else is reachable
    there)."""
    judged = _numeric_host(match)
    if judged is None:
        return False
    address, dotted = judged
    network = address >> 24
    if address == _METADATA_IP or network == 0:
        return False
    return not dotted or (match.group("userinfo") is not None and network != _LOOPBACK_NET)


# Run on the lower-cased string, most specific first (overlapping later matches are dropped).
_RULES: Final[tuple[_Rule, ...]] = (
    _rule(
        "fork_bomb",
        DANGEROUS_COMMAND,
        Severity.CRITICAL,
        0.95,
        r":\(\)\s*\{\s*:\s*\|\s*:\s*&\s*\}\s*;\s*:|\bwhile\s+true\s*;\s*do\s+\$0\s*&",
    ),
    _rule(
        "recursive_delete",
        DANGEROUS_COMMAND,
        Severity.CRITICAL,
        0.9,
        _RECURSIVE_DELETE,
        accept=_forced_recursive,
    ),
    _rule(
        "format_disk",
        DANGEROUS_COMMAND,
        Severity.CRITICAL,
        0.9,
        r"\bmkfs(?:\.\w+)?(?=\s)|\bdd\s+[^\n]{0,300}?\bof=/dev/(?:sd|hd|nvme|xvd|vd|disk|mmcblk)|>\s*/dev/(?:sd|nvme|hd)[a-z0-9]"
        r"|\bwipefs\s+-a|\bshred\s+[^\n]{0,300}?/dev/",
    ),
    _rule("pipe_to_shell", DANGEROUS_COMMAND, Severity.HIGH, 0.85, _PIPED_TO_RUN, gate=("|",)),
    _rule("pipe_to_shell", DANGEROUS_COMMAND, Severity.HIGH, 0.85, _SUBSTITUTED_SCRIPT, gate=("<(",)),
    _rule("pipe_to_shell", DANGEROUS_COMMAND, Severity.HIGH, 0.85, _SUBSTITUTED_COMMAND, gate=("$(", "`")),
    _rule(
        "pipe_to_shell",
        DANGEROUS_COMMAND,
        Severity.HIGH,
        0.85,
        _INVOKED_EXPRESSION,
        gate=("iex", "invoke-expression"),
    ),
    _rule(
        "reverse_shell",
        DANGEROUS_COMMAND,
        Severity.CRITICAL,
        0.9,
        r"/dev/tcp/|\b(?:nc|ncat|netcat)\s+(?:-[a-z]+\s+){0,4}[^\s]+\s+\d+\s+(?:-[a-z]+\s+){0,4}-e\s|\bbash\s+-i\s+>&"
        # The program to run given before the host, as the usual one-liner has it (`nc -e /bin/sh
        # HOST PORT`, ncat's `-c` / `--sh-exec` / `--exec`): only `nc HOST PORT -e` was found.
        r"|\b(?:nc|ncat|netcat)(?:\s+-[a-z]+){0,4}\s+(?:-[a-z]*e|-c|--exec|--sh-exec)\s+\S"
        r"|\bsocat\s+[^\n]{0,300}?exec:",
    ),
    _rule(
        "world_writable",
        DANGEROUS_COMMAND,
        Severity.HIGH,
        0.8,
        r"\bchmod\s+(?:-[a-z]+\s+){0,4}(?:0?777|a\+rwx|ugo\+rwx|o\+w)\b",
    ),
    _rule(
        "sql_destroy",
        DANGEROUS_COMMAND,
        Severity.HIGH,
        0.75,
        r"\bdrop\s+(?:table|database|schema)\b|\btruncate\s+table\b|\bdelete\s+from\s+\w+\s*(?:;|$)",
    ),
    _rule(
        "sensitive_file",
        SENSITIVE_FILE_ACCESS,
        Severity.HIGH,
        0.85,
        r"/etc/(?:shadow|gshadow|sudoers|master\.passwd)\b|(?:~|\$home|/home/[\w.-]+|/root)/\.ssh/[\w.-]*"
        r"|\bid_(?:rsa|dsa|ecdsa|ed25519)\b|\bauthorized_keys\b|/proc/(?:self|\d+)/(?:environ|mem|maps)\b"
        r"|\.aws/credentials\b|\.kube/config\b|\.docker/config\.json\b|\.git-credentials\b|(?:^|/)\.netrc\b"
        r"|(?:^|/)\.pgpass\b|\.gnupg/"
        # `.env` files, not the templates committed next to them (`.env.example`); the start is looked
        # behind at, not matched: the excerpt would lose the space before it ("cat.env").
        r"|(?<![^/\s'\"=])\.env(?!\.(?:example|sample|template|dist)(?=$|[\s'\";,)]))(?:\.[\w-]+)?(?=$|[\s'\";,)])"
        r"|(?:^|/)(?:\.bash_history|\.zsh_history)\b|\bwp-config\.php\b|/var/run/secrets/",
    ),
    _rule(
        "system_file",
        SENSITIVE_FILE_ACCESS,
        Severity.MEDIUM,
        0.6,
        r"/etc/(?:passwd|group|hosts)\b",
    ),
    _rule(
        "ssrf_scheme",
        SUSPICIOUS_URL,
        Severity.HIGH,
        0.85,
        r"\b(?:file|gopher|dict|ldap|jar|netdoc)://|\b169\.254\.169\.254\b|\bmetadata\.google\.internal\b"
        # The metadata address as an IPv4-mapped IPv6 host (`http://[::ffff:a9fe:a9fe]/`).
        r"|\[(?:0{0,4}:){2,5}ffff:(?:a9fe:a9fe|169\.254\.169\.254)\]"
        # EC2's metadata service over IPv6 (Nitro instances): the same credentials, a raw IP URL before.
        r"|\[fd00:ec2::254\]",
    ),
    _rule(
        "exfil_host",
        SUSPICIOUS_URL,
        Severity.HIGH,
        0.8,
        # Labels before the host only from where a run of host characters starts: from every word
        # boundary inside "1.1.1.1..." the pattern re-scanned the rest of the run, quadratic.
        r"(?<![\w.-])(?:[\w-]+\.)*?(?:pastebin\.com|hastebin\.com|ghostbin\.\w+|paste\.ee|0x0\.st|termbin\.com"
        r"|transfer\.sh|ngrok\.io|ngrok-free\.app|ngrok\.app|ngrok\.dev|loca\.lt|localtunnel\.me|serveo\.net"
        r"|trycloudflare\.com|webhook\.site|requestbin\.\w+|pipedream\.net|burpcollaborator\.net|oastify\.com"
        r"|interact\.sh|oast\.\w+|canarytokens\.com|duckdns\.org|no-ip\.\w+)\b",
    ),
    _rule("ssrf_scheme", SUSPICIOUS_URL, Severity.HIGH, 0.85, _IP_HOST_URL, accept=_metadata_host),
    _rule("raw_ip_url", SUSPICIOUS_URL, Severity.MEDIUM, 0.6, _IP_HOST_URL, accept=_other_ip_host),
    _rule(
        "raw_ip_url",
        SUSPICIOUS_URL,
        Severity.MEDIUM,
        0.6,
        r"\b(?:https?|ftp|wss?)://(?!127\.|0\.0\.0\.0|localhost)(?:\d{1,3}\.){3}\d{1,3}(?::\d+)?"
        r"|\b(?:https?|ftp)://\[(?!::1\])[0-9a-f:]+\]",
    ),
)


def _strings(value: object, path: str, depth: int = 0) -> Iterator[tuple[str, str]]:
    """(path, string) for the strings in a parsed JSON value, keys included (a key can be a path)."""
    if depth > _MAX_DEPTH:
        # Deeper than paths are worth following, not deeper than a command can hide: the rest is
        # checked as one text.
        yield path, json.dumps(value, ensure_ascii=False)[:MAX_STRING_CHARS]
        return
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, dict):
        for key, item in value.items():
            shown = _shown(str(key), _KEY_SHOWN)
            child = f"{path}.{shown}" if shown.isidentifier() else f"{path}[{json.dumps(shown)}]"
            yield child, str(key)
            yield from _strings(item, child, depth + 1)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _strings(item, f"{path}[{index}]", depth + 1)


def _shown(name: str, limit: int) -> str:
    """A name the model chose (an argument's, a tool's) as a finding may repeat it: masked (a key or a
    card number can be a name), then cut (a name can be 100 KB)."""
    shown = masked_prefix(name, limit)
    return shown if len(shown) <= limit and len(name) <= limit + MASK_MARGIN else shown[:limit] + "…"


def _placeholder(text: str) -> str:
    # Masked whole, then cut: a secret cut first is no longer recognisable, and its head would show.
    shown = mask_sensitive(" ".join(text.split()))
    return shown[:_EXCERPT_MAX] + ("…" if len(shown) > _EXCERPT_MAX else "")


def _check(text: str, location: str, tool_shown: str) -> list[Finding]:
    text = normalize(text[:MAX_STRING_CHARS])
    lowered = text.lower()
    if len(lowered) != len(text):
        lowered = "".join(char.lower()[0] for char in text)
    matches = [
        Match(
            start=m.start(),
            end=m.end(),
            placeholder=_placeholder(text[m.start() : m.end()]),
            type=rule.type,
            severity=rule.severity,
            confidence=rule.confidence,
            detector=f"regex.tool.{rule.kind}",
            description=f"{rule.description} in a call to {tool_shown}",
        )
        for rule in _RULES
        if not rule.gate or any(map(lowered.__contains__, rule.gate))
        for m in rule.pattern.finditer(lowered)
        if m.end() > m.start() and (rule.accept is None or rule.accept(m))
    ]
    return to_findings(text, drop_overlapping(matches), location) if matches else []


def find_tool_call_risks(name: str, arguments_json: str, location: str) -> list[Finding]:
    """Risky commands, file paths and URLs in a tool call's arguments, per argument in document order.

    `name` is the tool's name (named in descriptions); `arguments_json` the arguments as the model sent
    them (a JSON object as text; anything else is checked as raw text); `location` the arguments' place,
    extended with the argument's path in each finding.
    """
    if not arguments_json:
        return []
    try:
        parsed: object = json.loads(arguments_json)
    except (ValueError, RecursionError):  # not JSON (a truncated stream, a plain command string,
        parsed = arguments_json  # nesting deeper than the parser goes): check it as text
    # A tool's name is the model's to choose: a long one must not fill every finding, nor a secret
    # in one show in it.
    tool_shown = _shown(name, _TOOL_NAME_SHOWN)
    findings: list[Finding] = []
    rest: list[str] = []  # past MAX_STRINGS: decoy keys must not hide a command behind them
    rest_chars = 0
    for count, (path, value) in enumerate(_strings(parsed, location)):
        if count < MAX_STRINGS:
            if value:
                findings.extend(_check(value, path, tool_shown))
            continue
        if rest_chars >= _REST_MAX_CHARS:
            break
        rest.append(value[:MAX_STRING_CHARS])
        rest_chars += len(rest[-1]) + 1
    if rest:
        # Checked as one text, at the arguments' place: one pass, however many strings.
        findings.extend(_check("\n".join(rest), location, tool_shown))
    return findings
