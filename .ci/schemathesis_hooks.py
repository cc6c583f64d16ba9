"""schemathesis hooks for gatehouse (loaded by .ci/schemathesis through
SCHEMATHESIS_HOOKS).

Authentication: schemathesis runs as the admin that .ci/schemathesis created
with `gatehouse admin create`. It logs in through POST /api/auth/login (the
API's own way to get a token) and sends the token on every operation that
declares security, in `x-access-token` or `Authorization: Bearer` in turn, so
both of the document's security schemes are exercised. Should the token stop
working mid-run, schemathesis logs in again on the 401 and replays the
request (`retry_on`, 401 by default).

Sessions: every login starts a session of its own, and the admin's token
(shared by every operation, and logged in again only every 120 s or after a
401) stops working the moment its session ends. The operations that end
sessions or change passwords are therefore kept from reaching it:

- Logout (GET and POST /api/auth/logout) and POST /api/auth/password run as a
  throwaway user of their own, registered (POST /api/auth/register) for every
  request: `scope=global` and `scope=others` end all of that user's sessions
  instead of the admin's, and a password change can only ever change a
  throwaway user's password. Logging out and changing a password still really
  end something. In positive cases the password change is sent with the
  throwaway user's real `current_password`, so its success (a new token
  pair) is exercised too; negative cases keep what schemathesis generated.
- DELETE /api/auth/sessions/{id} with the id of the session of the token the
  request carries (which schemathesis can learn from GET /api/auth/sessions)
  is sent to an id that does not exist instead (404). The admin's older
  sessions may still be ended.
- DELETE /api/users/{admin's _id}/sessions would end every session of the
  admin: it is sent to an id that does not exist instead (404), as below.

A made-up refresh token can only be refused, so every other positive
POST /api/auth/refresh presents the refresh token of a throwaway user
instead, and the success (a rotation, a new token pair) is exercised too.

One thing more is kept out of reach: changing or deleting the admin itself
(PUT/PATCH/DELETE /api/users/{admin's _id}). A new email or password would
lock schemathesis out (it could not log in again), a new role would turn every
admin operation into a 403 and deletion would turn all of them into 401s, so
the rest of the run would test nothing. Such a request is sent to an id that
does not exist instead (404). Changing and deleting users is still tested on
the users schemathesis creates with POST /api/users; the integration tests
cover a user changing and deleting themself, and ending their own sessions.

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

import base64
import itertools
import json
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
_refresh_turn = itertools.count()


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


def register_throwaway():
    """A new user of its own, from POST /api/auth/register: (its password,
    its token pair)."""
    password = f"throwaway-{uuid.uuid4().hex}"
    response = requests.post(
        f"{BASE}/api/auth/register",
        json={
            "name": "Throwaway",
            "email": f"throwaway-{uuid.uuid4().hex}@example.com",
            "password": password,
        },
        timeout=10,
    )
    if response.status_code != 200:
        raise RuntimeError(f"throwaway registration failed: {response.status_code} {response.text}")
    return password, response.json()


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


def session_of(case):
    """The `sid` claim of the token the case carries, if any (the token is
    only decoded: the server checks it)."""
    for name, value in (case.headers or {}).items():
        if not isinstance(value, str):
            continue
        if name.lower() == "x-access-token":
            token = value
        elif name.lower() == "authorization" and value[:7].lower() == "bearer ":
            token = value[7:]
        else:
            continue
        try:
            payload = token.strip().split(".")[1]
            claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
            return claims.get("sid")
        except (IndexError, ValueError, AttributeError):
            return None
    return None


def uses_throwaway_user(ctx):
    """Logout and password change run as a throwaway user (see the module doc)."""
    return ctx.operation.path in ("/api/auth/logout", "/api/auth/password")


def is_protected(ctx):
    return bool(ctx.operation.definition.raw.get("security")) and not uses_throwaway_user(ctx)


@schemathesis.auth(refresh_interval=120).apply_to(is_protected)
class AdminToken:
    """The admin's token for every operation that declares security, but
    those of a throwaway user."""

    def get(self, case, context):
        return login()

    def set(self, case, data, context):
        put_token(case, data)


@schemathesis.auth(refresh_interval=None).apply_to(uses_throwaway_user)
class ThrowawayUser:
    """A new user for each logout and password change, whose sessions and
    password these may end and change at will."""

    def get(self, case, context):
        return register_throwaway()

    def set(self, case, data, context):
        password, pair = data
        put_token(case, pair["token"])
        if case.operation.path == "/api/auth/password" and has_string(case, "current_password"):
            case.body = {**case.body, "current_password": password}


def has_string(case, field):
    """True for a positive case whose body has `field` as a string."""
    return (
        case.meta is not None
        and not case.meta.generation.mode.is_negative
        and isinstance(case.body, dict)
        and isinstance(case.body.get(field), str)
    )


def nowhere(case):
    """The case sent to a user or session id that does not exist (404)."""
    case.path_parameters = {**case.path_parameters, "id": str(uuid.uuid4())}


@schemathesis.hook
def before_call(context, case, kwargs):
    """Keeps schemathesis from changing or deleting the admin it runs as, or
    ending the admin's session; gives refresh real tokens (see the module
    doc)."""
    path, method = case.operation.path, case.method.upper()
    if path == "/api/auth/refresh":
        # Every other positive refresh presents a real refresh token.
        if has_string(case, "refresh_token") and next(_refresh_turn) % 2 == 0:
            case.body = {**case.body, "refresh_token": register_throwaway()[1]["refresh_token"]}
        return
    target = (case.path_parameters or {}).get("id")
    if target is None:
        return
    if path in ("/api/users/{id}", "/api/users/{id}/sessions") and method in (
        "PUT",
        "PATCH",
        "DELETE",
    ):
        if target == admin_id():
            nowhere(case)
    elif path == "/api/auth/sessions/{id}" and method == "DELETE":
        if target == session_of(case):
            nowhere(case)


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
