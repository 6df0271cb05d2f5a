"""`mask_sensitive`: each kind of PII and secret becomes its placeholder; look-alikes stay."""

from __future__ import annotations

import time

import pytest

from llmtrace.security.masking import URL_CREDENTIALS, mask_sensitive, sensitive_spans
from llmtrace.security.secrets import _KINDS, find_secrets

# Provider tokens assembled from pieces so that secret scanners do not flag this file; none is real.
_STRIPE = "sk" + "_live_" + "51Hx9QmTz3Lw8RkVb2Nc6Yd4Pa7Ue0Gs"
_GOOGLE = "AI" + "za" + "SyB3dE5fG7hI9jK1lM3nO5pQ7rS9tU1v-_x"
_HUGGINGFACE = "hf" + "_" + "QwErTyUiOpAsDfGhJkLzXcVbNmPlOkIjUh"
_NPM = "npm" + "_" + "Zt4Kq9Wm2Xr7Vb1Nc8Ld3Fh6Jp0Sg5Ya2Eu7"
_GITLAB = "gl" + "pat-" + "xY7-kP2_qR9sT4uV6wZ1"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("write to john.doe+x@mail.example.co.uk today", "write to [EMAIL] today"),
        ("call +1 (415) 555-0132 now", "call [PHONE] now"),
        ("call 415-555-0132 now", "call [PHONE] now"),
        ("ruf +44 20 7946 0958", "ruf [PHONE]"),
        ("card 4111 1111 1111 1111 ok", "card [CREDIT_CARD] ok"),
        ("card 5500-0000-0000-0004", "card [CREDIT_CARD]"),
        ("ssn 123-45-6789.", "ssn [SSN]."),
        ("iban DE89 3704 0044 0532 0130 00 THEN", "iban [IBAN] THEN"),
        ("iban GB82WEST12345698765432", "iban [IBAN]"),
        ("aws AKIAIOSFODNN7EXAMPLE", "aws [AWS_ACCESS_KEY]"),
        ("gh ghp_" + "a1" * 18, "gh [GITHUB_TOKEN]"),
        ("gh github_pat_" + "B" * 30, "gh [GITHUB_TOKEN]"),
        ("slack xoxb-1234567890-abcdefghij", "slack [SLACK_TOKEN]"),
        ("t eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl end", "t [JWT] end"),
        ("-eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl end", "-[JWT] end"),
        ("-----BEGIN PRIVATE KEY-----\nMIIEv\n-----END PRIVATE KEY-----\nafter", "[PRIVATE_KEY]\nafter"),
        ("-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNz (cut", "[PRIVATE_KEY]"),
        ("key sk-proj-" + "x" * 40, "key [OPENAI_KEY]"),
        ("key sk-ant-api03-" + "x" * 40, "key [ANTHROPIC_KEY]"),
        (f"stripe {_STRIPE}.", "stripe [STRIPE_KEY]."),
        ("rk" + "_test_" + "51Hx9QmTz3Lw8RkVb2Nc6Yd4", "[STRIPE_KEY]"),
        (f'{{"key": "{_GOOGLE}"}}', '{"key": "[GOOGLE_API_KEY]"}'),
        (f"HF_TOKEN={_HUGGINGFACE}", "HF_TOKEN=[HUGGINGFACE_TOKEN]"),
        (f"//registry.npmjs.org/:_authToken={_NPM}", "//registry.npmjs.org/:_authToken=[NPM_TOKEN]"),
        (f"PRIVATE-TOKEN: {_GITLAB} x", "PRIVATE-TOKEN: [GITLAB_TOKEN] x"),
        (f"gitlab {_GITLAB}aB3cD5eF7g.010xk3m9q", "gitlab [GITLAB_TOKEN]"),  # routable
        ("api_key=abcd1234efgh&x=1", "api_key=[API_KEY]&x=1"),
        ('{"apiKey": "abcd1234efgh"}', '{"apiKey": "[API_KEY]"}'),
        ("OPENAI_API_KEY=sk-abcdefghijklmnopqrstuvwx", "OPENAI_API_KEY=[OPENAI_KEY]"),
        ("password: hunter22", "password: [SECRET]"),
        ("Authorization: Bearer abcdefghijklmnopqrstu", "Authorization: Bearer [API_KEY]"),
        ("rm -rf / ; AB123456C", "rm -rf / ; [NINO]"),
        ("NI: AB 12 34 56 C ok", "NI: [NINO] ok"),
        ("my ssn is 536 22 1234 thanks", "my ssn is [SSN] thanks"),
        ("call 415.555.0100 or 01.42.68.53.00", "call [PHONE] or [PHONE]"),
        (
            "postgres://app:S3cr3t-pa55@db.internal:5432/prod",
            "postgres://app:[PASSWORD]@db.internal:5432/prod",
        ),
    ],
)
def test_each_kind_is_masked(text: str, expected: str) -> None:
    assert mask_sensitive(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "card 4111 1111 1111 1112 fails Luhn",
        "iban DE89 3704 0044 0532 0130 01 fails mod 97",
        "on 2024-01-15 at 10:30 order 123456789 version 1.2.3",
        "ssn-like 000-12-3456 is not valid",
        "order 536221234 shipped",  # nine digits with no word naming an SSN
        "QQ123456C is the example NI number",  # QQ is never issued
        "the key points of token usage: 42 tokens",
        "ask at example dot com",
        "sk" + "_live_ alone, or sk" + "_test_abc123 too short",
        "the word MAIza" + "SyB3dE5fG7hI9jK1lM3nO5pQ7rS9tU1v-_x is not a key",
        "call hf" + "_hub_download() or set hf" + "_token",
        "run npm" + "_install, npm" + "_config_registry and npm" + "_" + "a1" * 10,
        "gl" + "pat-" + "short and kubectl run",
        # URLs with a user but no password, an `@` in the path, a port, or a stand-in for the password.
        "postgres://app@db/prod and postgres://app:@db/prod",
        "see https://example.com/@handle or https://example.com:8080/a?b=c@d",
        "postgres://user:password@localhost/db",
        "postgres://user:<password>@db:5432/prod",
        "postgres://user:${DB_PASSWORD}@db:5432/prod",
        "mysql://root:$MYSQL_PWD@db/shop",
        "redis://:****@cache:6379/0",
        "amqp://guest:xxx@rabbit/vhost",
        "mongodb://admin:{{mongo_pass}}@mongo/app",
        # IPv4 addresses with ten or more digits are addresses, not phone numbers.
        "curl http://169.254.169.254/latest/meta-data",
        "the gateway is 192.168.100.200",
        "",
    ],
)
def test_look_alikes_are_left_alone(text: str) -> None:
    assert mask_sensitive(text) == text
    assert sensitive_spans(text) == []


def test_placeholders_are_not_masked_again() -> None:
    once = mask_sensitive("api_key=sk-abcdefghijklmnopqrstuvwx mail a@b.io")
    assert once == "api_key=[OPENAI_KEY] mail [EMAIL]"
    assert mask_sensitive(once) == once


def test_unicode_whose_lowercase_changes_length_still_masks_assignments() -> None:
    assert mask_sensitive("İstanbul token=abcdef123") == "İstanbul token=[API_KEY]"


def test_a_kilobyte_without_matches_is_fast() -> None:
    text = ("The quick brown fox jumps over the lazy dog in 2024; summarise the key points. " * 14)[:1024]
    mask_sensitive(text)
    runs = 2000
    rounds = []
    for _ in range(3):  # the best of three: a busy machine slows a round, never speeds one up
        started = time.perf_counter()
        for _ in range(runs):
            mask_sensitive(text)
        rounds.append((time.perf_counter() - started) / runs)
    # About 20 us here; a regex gone quadratic takes milliseconds.
    assert min(rounds) < 500e-6, rounds


# Secrets secrets.py reports that masking once let through (excerpts of other detectors showed
# them in clear). Values assembled from pieces; none is real.
_AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/" + "bPxRfiCYz8Kq3LmN0p"


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        (f"aws key {_AWS_SECRET} now", _AWS_SECRET),
        (f"aws_secret_access_key={_AWS_SECRET}", _AWS_SECRET),
        ("passwd => Hunter2Secret9x", "Hunter2Secret9x"),
        ("password := Hunter2Secret9x", "Hunter2Secret9x"),
        ("-----BEGIN PGP PRIVATE KEY BLOCK-----\nlQdGBF4x\n-----END PGP PRIVATE KEY BLOCK-----", "lQdGBF4x"),
        ("token eyJhbGciOiJIUzI1NiJ9.c3ViamVjdA.c2lnbmF0dXJl", "c3ViamVjdA"),
        (f"STRIPE_SECRET_KEY={_STRIPE}", _STRIPE),
        (f"key={_GOOGLE}&q=x", _GOOGLE),
        (f"export HUGGING_FACE_HUB_TOKEN='{_HUGGINGFACE}'", _HUGGINGFACE),
        (f"NPM_TOKEN: {_NPM}", _NPM),
        (f"git clone https://oauth2:{_GITLAB}@gitlab.com/g/p.git", _GITLAB),
    ],
)
def test_every_kind_of_secret_is_masked(text: str, secret: str) -> None:
    assert secret not in mask_sensitive(text)
    assert any(start <= text.index(secret) < end for start, end, _ in sensitive_spans(text))


# One text per kind secrets.py reports, and the secret in it: a new kind without an entry here fails
# the test below.
_GITHUB = "gh" + "p_" + "aB3dE5fG7hI9jK1lM3nO5pQ7rS9tU1vW3xY5"
_SLACK = "xo" + "xb-" + "123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx"
_JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n"
_ANTHROPIC = "sk-" + "ant-api03-" + "Xy9Wv8Ut7Sr6Qp5On4Ml3Kj2Ih1Gf0Ed"
_OPENAI = "sk-" + "proj-" + "Ab3De5Fg7Hi9Jk1Lm3No5Pq7Rs9Tu1Vw"
_KEY_BODY = "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEA"
_SAMPLE_PER_KIND = {
    "private_key": ("-----BEGIN PRIVATE KEY-----\n" + _KEY_BODY + "\n", _KEY_BODY),
    "aws_access_key": ("aws id AK" + "IAZ7XQ4ZB2PSRT5W3Q", "AK" + "IAZ7XQ4ZB2PSRT5W3Q"),
    "aws_secret_key": (f"aws_secret_access_key={_AWS_SECRET}", _AWS_SECRET),
    "github_token": (f"token {_GITHUB}", _GITHUB),
    "slack_token": (f"slack {_SLACK}", _SLACK),
    "jwt": (f"jwt {_JWT}", _JWT),
    "anthropic_key": (f"key {_ANTHROPIC}", _ANTHROPIC),
    "openai_key": (f"key {_OPENAI}", _OPENAI),
    "stripe_key": (f"stripe {_STRIPE}", _STRIPE),
    "google_api_key": (f"maps {_GOOGLE}", _GOOGLE),
    "huggingface_token": (f"hub {_HUGGINGFACE}", _HUGGINGFACE),
    "npm_token": (f"npm {_NPM}", _NPM),
    "gitlab_token": (f"gitlab {_GITLAB}", _GITLAB),
    "bearer_token": ("Authorization: Bearer abcDEF123ghiJKL456mnoPQR789", "abcDEF123ghiJKL456mnoPQR789"),
    "api_key_assignment": ("api_key=Zq8vN3kLp0XwR7tY2mB5", "Zq8vN3kLp0XwR7tY2mB5"),
    "password_assignment": ("password: hunter2!x9Q", "hunter2!x9Q"),
    "url_credentials": ("db postgres://app:S3cr3t-pa55@db.internal:5432/prod", "S3cr3t-pa55"),
}


@pytest.mark.parametrize("kind", sorted(_KINDS))
def test_whatever_secrets_py_reports_masking_masks(kind: str) -> None:
    text, secret = _SAMPLE_PER_KIND[kind]
    findings = find_secrets(text, "request.messages[0].content")
    assert [f.detector for f in findings] == [f"regex.secret.{kind}"]
    assert secret not in mask_sensitive(text)
    position = text.index(secret)
    assert any(start <= position and position + len(secret) <= end for start, end, _ in sensitive_spans(text))


def test_a_forty_character_hash_is_not_an_aws_secret() -> None:
    text = "aws deploy of commit 3f786850e387550fdab836ed7e6dc881de23001b"
    assert mask_sensitive(text) == text


def test_addresses_in_long_dotted_runs_are_masked_in_linear_time() -> None:
    for size in (10_000, 100_000):
        text = "a." * (size // 2) + "@"
        started = time.perf_counter()
        mask_sensitive(text)
        sensitive_spans(text)
        # Quadratic, this took seconds at 30 KB; linear, it is milliseconds.
        assert time.perf_counter() - started < 1.0, size


# Connection strings: only the password goes, so that scheme, user, host and database stay readable.
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("postgresql://app:S3cr3t-pa55@db:5432/prod", "postgresql://app:[PASSWORD]@db:5432/prod"),
        ("mysql://root:Tr0ub4dor-3@mysql.svc:3306/shop", "mysql://root:[PASSWORD]@mysql.svc:3306/shop"),
        (
            "mongodb://admin:Zx9qLm2Wv7@mongo-0.mongo:27017/app?authSource=admin",
            "mongodb://admin:[PASSWORD]@mongo-0.mongo:27017/app?authSource=admin",
        ),
        (
            "uri='mongodb+srv://admin:Zx9q:Lm2!Wv7@cluster0.ab1cd.mongodb.net/app'",
            "uri='mongodb+srv://admin:[PASSWORD]@cluster0.ab1cd.mongodb.net/app'",
        ),
        ("REDIS_URL=redis://:s3cr3tRedisPw@cache:6379/0", "REDIS_URL=redis://:[PASSWORD]@cache:6379/0"),
        ("amqp://user:Rb7Tq2Xk9p@rabbit:5672/vhost", "amqp://user:[PASSWORD]@rabbit:5672/vhost"),
        ("clone https://bob:Hk3mP9vQ2x@git.corp.io/r.git", "clone https://bob:[PASSWORD]@git.corp.io/r.git"),
        # Inside an assignment the whole value goes, as `sensitive_spans` sees it too.
        ("password: postgres://app:S3cr3t-pa55@db/prod", "password: [SECRET]"),
    ],
)
def test_url_passwords_are_masked_and_the_rest_kept(text: str, expected: str) -> None:
    assert mask_sensitive(text) == expected
    assert mask_sensitive(expected) == expected
    spans = sensitive_spans(text)
    masked, position = [], 0
    for start, end, placeholder in spans:
        masked += [text[position:start], placeholder]
        position = end
    assert "".join([*masked, text[position:]]) == expected


def test_a_token_as_url_password_keeps_its_own_placeholder() -> None:
    text = f"git clone https://oauth2:{_GITLAB}@gitlab.com/g/p.git"
    assert mask_sensitive(text) == "git clone https://oauth2:[GITLAB_TOKEN]@gitlab.com/g/p.git"
    assert [p for _, _, p in sensitive_spans(text)] == ["[GITLAB_TOKEN]"]


@pytest.mark.parametrize(
    "text",
    [
        "a:" * 50_000,
        "@" * 100_000,
        "x://" + "a:" * 50_000,
        "x://" + "@" * 100_000,
        "x://a:" + "a:" * 50_000 + "@",
        "a." * 50_000 + "://a:b@",  # a `\b`-anchored scheme rescans this run from every dot
    ],
)
def test_url_passwords_are_found_in_linear_time(text: str) -> None:
    rounds = []
    for _ in range(3):  # the best of three: a busy machine slows a round, never speeds one up
        started = time.perf_counter()
        list(URL_CREDENTIALS.finditer(text))
        mask_sensitive(text)
        sensitive_spans(text)
        find_secrets(text, "request.messages[0].content")
        rounds.append(time.perf_counter() - started)
    # Tens of milliseconds here (56 ms seen on a loaded 2-core machine); quadratic, 100 KB takes
    # seconds.
    assert min(rounds) < 0.5, rounds
