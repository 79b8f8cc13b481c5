"""The lb_cookie's attributes through the real `lbcore run`: Secure on HTTPS
listeners (never on plain HTTP, where a browser would drop the cookie),
SameSite=Lax by default, both configurable; and the stickiness itself still
holds over both listeners."""

from __future__ import annotations

import ssl

import httpx
import pytest

from lbcore.config import ConfigError, load_config_text
from tests.support.lbproc import free_port, run_config


def config(certs, https_port: int, http_port: int, members: list[int], sticky: str) -> str:
    lines = "\n".join(f"      - {{address: 127.0.0.1, port: {p}}}" for p in members)
    return f"""\
load_balancer: {{admin: {{port: {free_port()}}}}}
certificates:
  site: {{type: server, certificate: "{certs['crt']}", private_key: "{certs['key']}"}}
listeners:
  - {{name: tls, protocol: HTTPS, address: 127.0.0.1, port: {https_port},
     server_certificate: site, http2: true, default_pool: web}}
  - {{name: plain, protocol: HTTP, address: 127.0.0.1, port: {http_port}, default_pool: web}}
pools:
  web:
    health_check: {{enabled: false}}
    sticky_session: {sticky}
    members:
{lines}
"""


def set_cookie(resp: httpx.Response) -> list[str]:
    """The lb_cookie's attributes after its value, as sent."""
    (value,) = resp.headers.get_list("set-cookie")
    name_value, *attrs = [part.strip() for part in value.split(";")]
    assert name_value.startswith("lbcore_sticky=")
    return attrs


@pytest.fixture
def serve(tmp_path, backends, certs):
    started = []

    def start(sticky: str):
        https_port, http_port = free_port(), free_port()
        lb = run_config(tmp_path, config(certs, https_port, http_port, backends(2), sticky),
                        [https_port, http_port])
        started.append(lb)
        return f"https://localhost:{https_port}", f"http://127.0.0.1:{http_port}"

    yield start
    for lb in started:
        lb.stop()


def test_secure_on_https_only_and_samesite_lax_by_default(serve, certs):
    https, http = serve("{type: lb_cookie, timeout_minutes: 10}")
    trust = ssl.create_default_context(cafile=str(certs["ca"]))
    for http2 in (False, True):
        with httpx.Client(verify=trust, http2=http2) as c:
            first = c.get(f"{https}/")
            assert first.http_version == ("HTTP/2" if http2 else "HTTP/1.1")
            assert set_cookie(first) == ["Max-Age=600", "Path=/", "HttpOnly", "SameSite=Lax",
                                         "Secure"]
            served = {c.get(f"{https}/").json()["name"] for _ in range(6)}
            assert served == {first.json()["name"]}         # the cookie is sent back
    with httpx.Client() as c:
        first = c.get(f"{http}/")
        assert set_cookie(first) == ["Max-Age=600", "Path=/", "HttpOnly", "SameSite=Lax"]
        assert {c.get(f"{http}/").json()["name"] for _ in range(6)} == {first.json()["name"]}


def test_attributes_are_configurable(serve, certs):
    https, http = serve("{type: lb_cookie, secure: true, same_site: Strict}")
    trust = ssl.create_default_context(cafile=str(certs["ca"]))
    want = ["Max-Age=86400", "Path=/", "HttpOnly", "SameSite=Strict", "Secure"]
    assert set_cookie(httpx.get(f"{https}/", verify=trust)) == want
    assert set_cookie(httpx.get(f"{http}/")) == want     # asked for on HTTP too


def test_no_secure_and_no_samesite(serve, certs):
    https, _ = serve("{type: lb_cookie, secure: false, same_site: null}")
    trust = ssl.create_default_context(cafile=str(certs["ca"]))
    assert set_cookie(httpx.get(f"{https}/", verify=trust)) == \
        ["Max-Age=86400", "Path=/", "HttpOnly"]


@pytest.mark.parametrize("sticky,message", [
    ({"type": "source_ip", "secure": True}, "secure and same_site are the lb_cookie's"),
    ({"type": "app_cookie", "cookie_name": "s", "same_site": "Lax"},
     "secure and same_site are the lb_cookie's"),
    ({"type": "lb_cookie", "same_site": "None", "secure": False}, "same_site None needs Secure"),
    ({"type": "lb_cookie", "same_site": "Loose"}, "same_site"),
])
def test_check_refuses_attributes_that_cannot_act(sticky, message):
    import yaml

    text = yaml.safe_dump({
        "listeners": [{"name": "l", "protocol": "HTTP", "port": 8080, "default_pool": "p"}],
        "pools": {"p": {"sticky_session": sticky, "members": [
            {"address": "127.0.0.1", "port": 9}]}}})
    with pytest.raises(ConfigError) as exc:
        load_config_text(text)
    assert message in str(exc.value)
