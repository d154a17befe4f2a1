"""Security settings: checked at start in one line, secrets masked, options derived once."""

from __future__ import annotations

import ssl
from pathlib import Path

import nats.errors
import natsauth
import pytest
import redis
from pki import TestCA
from pydantic import SecretStr

from bridge.nats_connect import auth_options, refusal
from bridge.settings import BridgeSettings
from orders.adapters.redis_client import redis_refusal, tls_options
from orders.celery_app import create_app
from orders.settings import ConfigError, WebSettings, WorkerSettings, load_settings, redact_url
from orders.web import basic_auth_entries

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    return TestCA(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def creds(tmp_path: Path) -> Path:
    user = natsauth.user_key()
    jwt = natsauth.user_jwt(natsauth.account_key(), user, "u")
    return natsauth.creds_file(tmp_path / "u.creds", jwt, user)


@pytest.fixture
def seed(tmp_path: Path) -> Path:
    path = tmp_path / "u.nk"
    path.write_text(natsauth.user_key().seed.decode() + "\n")
    return path


# --- redaction -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "redacted"),
    [
        ("nats://user:pw@h:4222", "nats://user:***@h:4222"),
        ("nats://s3cr3t-token@h:4222", "nats://***@h:4222"),
        ("redis://:pw@h:6379/0", "redis://***@h:6379/0"),
        ("tls://u:p%40ss@[::1]:4222", "tls://u:***@[::1]:4222"),
        ("rediss://h:6379/0?password=pw&db=1", "rediss://h:6379/0?password=***&db=1"),
        ("nats://a:b@h:1,nats://a:b@h2:2", "nats://a:***@h:1,nats://a:***@h2:2"),
        ("redis://h:6379/0", "redis://h:6379/0"),
    ],
)
def test_redact_url_hides_passwords_and_tokens(url: str, redacted: str) -> None:
    assert redact_url(url) == redacted


def test_printed_settings_mask_every_secret() -> None:
    bridge = load_settings(
        BridgeSettings,
        nats_url="nats://bridge:natspw@h:4222",
        redis_url="redis://:redispw@h:6379/0",
    )
    settings = load_settings(WebSettings, flower_basic_auth="admin:flowerpw")
    for text in (repr(bridge), str(bridge), repr(settings), str(settings)):
        for secret in ("natspw", "redispw", "flowerpw"):
            assert secret not in text
    assert settings.flower_basic_auth is not None
    assert settings.flower_basic_auth.get_secret_value() == "admin:flowerpw"


# --- files checked at start -------------------------------------------------------------


def test_blank_file_settings_mean_unset() -> None:
    settings = load_settings(BridgeSettings, nats_creds="", nats_tls_ca=" ")
    assert settings.nats_creds is None and settings.nats_tls_ca is None
    assert load_settings(WebSettings, flower_basic_auth="").flower_basic_auth is None


def test_good_security_files_load(pki: TestCA, creds: Path, seed: Path) -> None:
    client = pki.client("c")
    load_settings(
        BridgeSettings,
        nats_creds=str(creds),
        nats_tls_ca=str(pki.cert_file),
        nats_tls_cert=str(client.cert),
        nats_tls_key=str(client.key),
    )
    load_settings(BridgeSettings, nats_nkey=str(seed))
    load_settings(
        WorkerSettings,
        redis_url="rediss://h:6379/0",
        redis_tls_ca=str(pki.cert_file),
        redis_tls_cert=str(client.cert),
        redis_tls_key=str(client.key),
    )


@pytest.mark.parametrize(
    ("settings", "variable", "detail"),
    [
        ({"nats_creds": "/nonexistent"}, "NATS_CREDS", "cannot read that file"),
        ({"nats_creds": "{seed}"}, "NATS_CREDS", "not a NATS credentials file"),
        ({"nats_nkey": "{creds}"}, "NATS_NKEY", "not an NKey user seed file"),
        ({"nats_creds": "{creds}", "nats_nkey": "{seed}"}, "NATS_NKEY", "NATS_CREDS is set too"),
        ({"nats_tls_ca": "{key}"}, "NATS_TLS_CA", "no PEM certificate"),
        ({"nats_tls_cert": "{cert}"}, "NATS_TLS_KEY", "required with NATS_TLS_CERT"),
        ({"nats_tls_key": "{key}"}, "NATS_TLS_CERT", "required with NATS_TLS_KEY"),
        ({"nats_tls_cert": "{cert}", "nats_tls_key": "{other_key}"}, "NATS_TLS_CERT", "do not"),
        ({"redis_tls_ca": "{ca}"}, "REDIS_URL", "must be a rediss:// URL"),
        (
            {"redis_url": "rediss://h/0", "redis_tls_cert": "{cert}"},
            "REDIS_TLS_KEY",
            "required with REDIS_TLS_CERT",
        ),
        ({"nats_url": "nats://a:b@h:1,nats://c:d@h:2"}, "NATS_URL", "different credentials"),
        ({"nats_inbox_prefix": "_INBOX.>"}, "NATS_INBOX_PREFIX", ""),
    ],
)
def test_bad_security_settings_name_their_variable(
    pki: TestCA,
    creds: Path,
    seed: Path,
    settings: dict[str, str],
    variable: str,
    detail: str,
) -> None:
    client, other = pki.client("c"), pki.client("other")
    paths = {
        "ca": pki.cert_file,
        "cert": client.cert,
        "key": client.key,
        "other_key": other.key,
        "creds": creds,
        "seed": seed,
    }
    values = {name: value.format(**paths) for name, value in settings.items()}
    with pytest.raises(ConfigError) as error:
        load_settings(BridgeSettings, **values)
    message = str(error.value)
    assert message.startswith(f"invalid setting {variable}: "), message
    assert detail in message and "\n" not in message
    for path in paths.values():
        assert str(path) not in message


# --- options derived from the settings --------------------------------------------------


def test_nats_auth_options_decode_url_credentials() -> None:
    options = auth_options(
        load_settings(BridgeSettings, nats_url="nats://alice:p%40ss%2Fw@h:1,nats://h2:2")
    )
    assert (options["user"], options["password"]) == ("alice", "p@ss/w")
    assert options["inbox_prefix"] == "_INBOX"
    token = auth_options(
        load_settings(BridgeSettings, nats_url="tls://t%40k@h:1", nats_inbox_prefix="_I_b")
    )
    assert token["token"] == "t@k" and token["inbox_prefix"] == "_I_b"
    assert "tls" not in token  # nats-py's default context: the system's CAs


def test_nats_auth_options_pass_files_and_tls(pki: TestCA, creds: Path, seed: Path) -> None:
    client = pki.client("c")
    options = auth_options(
        load_settings(
            BridgeSettings,
            nats_creds=str(creds),
            nats_tls_ca=str(pki.cert_file),
            nats_tls_cert=str(client.cert),
            nats_tls_key=str(client.key),
        )
    )
    assert options["user_credentials"] == str(creds)
    context = options["tls"]
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert auth_options(load_settings(BridgeSettings, nats_nkey=str(seed)))["nkeys_seed"] == str(
        seed
    )


def test_redis_tls_options_verify_always(pki: TestCA) -> None:
    assert tls_options(load_settings(WorkerSettings, redis_url="redis://h/0")) == {}
    assert tls_options(load_settings(WorkerSettings, redis_url="rediss://h/0")) == {
        "ssl_cert_reqs": ssl.CERT_REQUIRED
    }
    client = pki.client("c")
    options = tls_options(
        load_settings(
            WorkerSettings,
            redis_url="rediss://h/0",
            redis_tls_ca=str(pki.cert_file),
            redis_tls_cert=str(client.cert),
            redis_tls_key=str(client.key),
        )
    )
    assert options == {
        "ssl_cert_reqs": ssl.CERT_REQUIRED,
        "ssl_ca_certs": str(pki.cert_file),
        "ssl_certfile": str(client.cert),
        "ssl_keyfile": str(client.key),
    }


def test_celery_broker_and_backend_verify_tls(pki: TestCA) -> None:
    plain = create_app(load_settings(WorkerSettings, redis_url="redis://h/0"))
    assert not plain.conf.broker_use_ssl and not plain.conf.redis_backend_use_ssl
    app = create_app(
        load_settings(WorkerSettings, redis_url="rediss://h/0", redis_tls_ca=str(pki.cert_file))
    )
    for options in (app.conf.broker_use_ssl, app.conf.redis_backend_use_ssl):
        assert options["ssl_cert_reqs"] == ssl.CERT_REQUIRED
        assert options["ssl_ca_certs"] == str(pki.cert_file)


def test_flower_basic_auth_is_checked_without_echoing_it() -> None:
    assert basic_auth_entries(None) is None
    assert basic_auth_entries(SecretStr(" a:b , c:d ")) == ["a:b", "c:d"]
    with pytest.raises(ConfigError) as error:
        basic_auth_entries(SecretStr("a:b,hunter2"))
    assert "hunter2" not in str(error.value) and "entry 2" in str(error.value)


# --- refusals told apart from unreachable servers ----------------------------------------


@pytest.mark.parametrize(
    ("error", "what"),
    [
        (nats.errors.Error("nats: 'Authorization Violation'"), "authorization violation"),
        (nats.errors.AuthorizationError(), "authorization violation"),
        (nats.errors.Error("nats: 'User Authentication Expired'"), "authentication expired"),
        (ssl.SSLError(1, "[SSL: TLSV13_ALERT_CERTIFICATE_REQUIRED]"), "TLS handshake failed"),
        (ConnectionRefusedError(111, "Connection refused"), None),
        (nats.errors.NoServersError(), None),
        (TimeoutError(), None),
    ],
)
def test_nats_refusals(error: Exception, what: str | None) -> None:
    found = refusal(error)
    assert found == what if what is None or found is None else found.startswith(what)


def test_redis_refusals() -> None:
    assert redis_refusal(redis.AuthenticationError("invalid password")) == "authentication failed"
    assert redis_refusal(redis.ResponseError("NOAUTH Authentication required.")) is not None
    assert redis_refusal(redis.ConnectionError("Error 111 connecting")) is None
    try:
        try:
            raise ssl.SSLCertVerificationError(1, "certificate verify failed")
        except ssl.SSLError as cause:
            raise redis.ConnectionError("Error 1 connecting") from cause
    except redis.ConnectionError as wrapped:
        assert (redis_refusal(wrapped) or "").startswith("TLS certificate verification failed")
