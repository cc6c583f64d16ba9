"""schemathesis hooks for gatehouse (loaded by .ci/schemathesis through
SCHEMATHESIS_HOOKS).

Authentication: schemathesis runs as the admin that .ci/schemathesis created
with `gatehouse admin create`. It logs in through POST /api/auth/login (the
API's own way to get a token) and sends the token on every operation that
declares security, in `x-access-token` or `Authorization: Bearer` in turn, so
both of the document's security schemes are exercised. A token can stop
working mid-run (a password change revokes it); schemathesis then logs in
again on the 401 and replays the request (`retry_on`, 401 by default).

Logout gets a token of its own, fresh for every request, so that logging out
really revokes something without revoking the token the other operations use.

One thing is kept out of reach: changing or deleting the admin itself
(PUT/PATCH/DELETE /api/users/{admin's _id}). A new email or password would
lock schemathesis out (it could not log in again), a new role would turn every
admin operation into a 403 and deletion would turn all of them into 401s, so
the rest of the run would test nothing. Such a request is sent to an id that
does not exist instead (404). Changing and deleting users is still tested on
the users schemathesis creates with POST /api/users; the integration tests
cover a user changing and deleting themself.

One kind of negative case is dropped, because it is not negative for the
server: a `password` of 8 or more characters and at most 72 bytes that the
document's `NewPassword` schema nevertheless refuses. The server's rule counts
UTF-8 bytes, which JSON Schema cannot; the document describes a subset of the
passwords the server accepts (see NewPassword's description), so every
password valid under it is accepted, but a few mixed-width passwords the server
accepts are outside it. Sent as "invalid data", such a password is rightly
accepted, and schemathesis would report that as a failure. Every other
negative password (too short, too long in bytes, not a string) is still sent.

The same holds for emails, more so: the server's rule (NFKC, UTS #46 for the
domain) cannot be written as JSON Schema, so the document's Email pattern
describes a subset the server always accepts (ASCII addresses), and many
addresses outside it are valid (`zoë@bücher.de`). A negative case whose
email is outside the pattern is therefore kept only when the server surely
refuses that email: not a string, an `@` count other than one once
NFKC-normalized, or a control, format or space character inside once trimmed
(classes stable across Unicode versions). Other such cases are dropped
rather than guessed at; the Rust tests cover the rule itself.

Configuration comes from the environment: GATEHOUSE_URL (e.g.
http://127.0.0.1:3000), GATEHOUSE_ADMIN_EMAIL, GATEHOUSE_ADMIN_PASSWORD.
"""

import itertools
import os
import threading
import unicodedata
import uuid

import jsonschema_rs
import requests
import schemathesis

BASE = os.environ["GATEHOUSE_URL"].rstrip("/")
EMAIL = os.environ["GATEHOUSE_ADMIN_EMAIL"]
PASSWORD = os.environ["GATEHOUSE_ADMIN_PASSWORD"]

_document = requests.get(f"{BASE}/api/openapi.json", timeout=10).json()
_password_schema = jsonschema_rs.validator_for(_document["components"]["schemas"]["NewPassword"])
_email_schema = jsonschema_rs.validator_for(_document["components"]["schemas"]["Email"])
MIN_PASSWORD_CHARS = 8
MAX_PASSWORD_BYTES = 72

_lock = threading.Lock()
_admin_id = None
_turn = itertools.count()


def login():
    """A fresh admin token, from POST /api/auth/login."""
    response = requests.post(
        f"{BASE}/api/auth/login",
        json={"email": EMAIL, "password": PASSWORD},
        timeout=10,
    )
    if response.status_code != 200:
        raise RuntimeError(f"admin login failed: {response.status_code} {response.text}")
    return response.json()["token"]


def admin_id():
    """The admin's `_id`, from GET /api/auth/me (looked up once)."""
    global _admin_id
    with _lock:
        if _admin_id is None:
            response = requests.get(
                f"{BASE}/api/auth/me", headers={"x-access-token": login()}, timeout=10
            )
            response.raise_for_status()
            _admin_id = response.json()["_id"]
        return _admin_id


def put_token(case, token):
    headers = {
        name: value
        for name, value in (case.headers or {}).items()
        if name.lower() not in ("x-access-token", "authorization")
    }
    if next(_turn) % 2 == 0:
        headers["x-access-token"] = token
    else:
        headers["Authorization"] = f"Bearer {token}"
    case.headers = headers


def is_protected(ctx):
    return bool(ctx.operation.definition.raw.get("security"))


def is_logout(ctx):
    return ctx.operation.path == "/api/auth/logout"


@schemathesis.auth(refresh_interval=120).apply_to(is_protected)
class AdminToken:
    """The admin's token for every operation that declares security."""

    def get(self, case, context):
        return login()

    def set(self, case, data, context):
        put_token(case, data)


@schemathesis.auth(refresh_interval=None).apply_to(is_logout)
class ThrowawayToken:
    """A token of its own for each logout, which the logout revokes."""

    def get(self, case, context):
        return login()

    def set(self, case, data, context):
        put_token(case, data)


@schemathesis.hook
def before_call(context, case, kwargs):
    """Keeps schemathesis from changing or deleting the admin it runs as."""
    if (
        case.operation.path == "/api/users/{id}"
        and case.method.upper() in ("PUT", "PATCH", "DELETE")
        and (case.path_parameters or {}).get("id") == admin_id()
    ):
        case.path_parameters = {**case.path_parameters, "id": str(uuid.uuid4())}


def server_accepts_password(password):
    """The server's password rule (domain::user::valid_password)."""
    return (
        len(password) >= MIN_PASSWORD_CHARS
        and len(password.encode("utf-8", "surrogatepass")) <= MAX_PASSWORD_BYTES
    )


# Categories the server refuses inside an address that no Unicode version
# moves a character out of (unassigned ones are left out: this Python's
# Unicode may be older than the server's).
_REFUSED_CATEGORIES = {"Cc", "Cf", "Zs", "Zl", "Zp"}


def server_surely_refuses_email(email):
    """True only where the server's email rule (domain::user::valid_email)
    refuses whatever its Unicode version: see the module doc."""
    if not isinstance(email, str):
        return True
    # Python strips at least what Rust's trim strips, so anything left here
    # is inside the address for the server too.
    trimmed = email.strip()
    if any(unicodedata.category(c) in _REFUSED_CATEGORIES or c.isspace() for c in trimmed):
        return True
    return unicodedata.normalize("NFKC", trimmed).count("@") != 1


@schemathesis.hook
def filter_case(context, case):
    """Drops negative cases that are negative only for the schema: a password
    only its byte-count approximation refuses, an email outside its ASCII
    subset that the server may accept (see the module doc)."""
    if case.meta is None or not case.meta.generation.mode.is_negative:
        return True
    body = case.body if isinstance(case.body, dict) else {}
    password = body.get("password")
    if (
        isinstance(password, str)
        and server_accepts_password(password)
        and not _password_schema.is_valid(password)
    ):
        return False
    email = body.get("email")
    if (
        "email" in body
        and not _email_schema.is_valid(email)
        and not server_surely_refuses_email(email)
    ):
        return False
    return True
