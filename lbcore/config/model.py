"""The configuration model: every key of spec/lb.example.yaml with the ranges
and defaults of spec/LISTENER.md. Immutable once built; unknown keys refused."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, model_validator


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def in_range(lo: float, hi: float):
    """An int (or float) validator whose message names both bounds, as users
    of nginx -t expect: '5000 is outside 0-4000'."""

    def check(v):
        if isinstance(v, bool):
            raise ValueError(f"expected a number, got {v!r}")
        if not lo <= v <= hi:
            raise ValueError(f"{v} is outside {lo}-{hi}")
        return v

    return AfterValidator(check)


def no_bool(v: Any) -> Any:
    if isinstance(v, bool):
        raise ValueError(f"expected a number, got {v!r}")
    return v


def Int(lo: int, hi: int):  # noqa: N802 - reads like a type in annotations
    return Annotated[int, BeforeValidator(no_bool), in_range(lo, hi)]


Port = Int(1, 65535)
Name = Annotated[str, Field(min_length=1, max_length=255)]
ALIAS = re.compile(r"^[A-Za-z0-9_-]{1,40}$")


class Admin(Model):
    address: str = "127.0.0.1"
    port: Port = 9100


class AccessLog(Model):
    path: str = "-"
    format: Literal["json", "elb", "combined"] = "json"


class LoadBalancer(Model):
    name: Name = "lbcore"
    id: str | None = None
    eip: str | None = None
    workers: Literal["auto"] | Int(1, 1024) = "auto"
    # Seconds a stopping or replaced worker may take to finish in-flight requests.
    drain_timeout: Int(0, 3600) = 30
    # Seconds without a heartbeat after which the master replaces a worker.
    heartbeat_timeout: Int(1, 300) = 10
    # Seconds between session-ticket key rotations (the previous key still
    # resumes sessions for one more period).
    session_ticket_rotation: Int(1, 604800) = 43200
    admin: Admin = Admin()
    access_log: AccessLog = AccessLog()


class Certificate(Model):
    type: Literal["server", "ca"]
    certificate: Path
    private_key: Path | None = None
    crl: Path | None = None
    info: Any = Field(default=None, exclude=True)   # filled in by the loader, never from YAML


class IpGroup(Model):
    description: Annotated[str, Field(max_length=255)] = ""
    addresses: tuple[str, ...] = ()


TlsVersion = Literal["TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3"]


class SecurityPolicy(Model):
    description: str = ""
    protocols: Annotated[tuple[TlsVersion, ...], Field(min_length=1)]
    ciphers: Annotated[tuple[str, ...], Field(min_length=1)]


class Sni(Model):
    enabled: bool = False
    match: Literal["wildcard", "longest_suffix"] = "wildcard"
    certificates: Annotated[tuple[str, ...], Field(max_length=50)] = ()


class AccessControl(Model):
    mode: Literal["all", "whitelist", "blacklist"] = "all"
    ip_group: str | None = None

    @model_validator(mode="after")
    def group_needed(self):
        if self.mode != "all" and not self.ip_group:
            raise ValueError(f"mode {self.mode} needs an ip_group")
        return self


ClientCertField = Literal["subjectdn", "issuerdn", "fingerprint", "serialnumber", "end",
                          "clientverify", "cert"]
OPTIONAL_HEADER_KEYS = (
    "x_forwarded_for", "x_forwarded_host", "x_forwarded_proto", "x_real_ip", "x_forwarded_port",
    "x_forwarded_for_port", "x_forwarded_elb_id", "x_forwarded_elb_ip",
    "x_forwarded_tls_protocol", "x_forwarded_tls_cipher", "x_forwarded_tls_certificate_id",
    "x_forwarded_tls_sni", "x_forwarded_alpn_protocol", "x_forwarded_clientcert",
)


def check_aliases(v: dict[str, str]) -> dict[str, str]:
    for key, alias in v.items():
        if key not in OPTIONAL_HEADER_KEYS:
            raise ValueError(f"aliases: {key!r} is not an insert_headers key")
        if not ALIAS.match(alias):
            raise ValueError(f"aliases.{key}: {alias!r} must be 1-40 characters [A-Za-z0-9_-]")
    return v


class InsertHeaders(Model):
    x_forwarded_for: Literal["append", "remove", "preserve"] = "append"
    x_forwarded_host: bool = True
    x_forwarded_proto: bool = True
    x_real_ip: bool = True
    x_forwarded_port: bool = False
    x_forwarded_for_port: bool = False
    x_forwarded_elb_id: bool = False
    x_forwarded_tls_protocol: bool = False
    x_forwarded_tls_cipher: bool = False
    x_forwarded_tls_certificate_id: bool = False
    x_forwarded_tls_sni: bool = False
    x_forwarded_alpn_protocol: bool = False
    x_forwarded_clientcert: tuple[ClientCertField, ...] = ()
    aliases: Annotated[dict[str, str], AfterValidator(check_aliases)] = {}


class Limits(Model):
    """Ranges: generous enough for any real client, tight enough that a typo
    (an extra zero) is caught rather than served."""

    max_request_line: Int(256, 1 << 20) = 8192
    max_header_size: Int(256, 1 << 20) = 16384
    max_header_block: Int(1024, 1 << 22) = 65536
    max_headers: Int(1, 10000) = 100
    max_body: Int(0, 1 << 50) = 10737418240
    max_connections: Int(0, 10_000_000) = 0
    max_new_connections_per_second: Int(0, 10_000_000) = 0


HEADER_NAME = re.compile(r"^[A-Za-z0-9_-]{1,40}$")


class Rule(Model):
    """One condition of a forwarding policy (spec 10). Values OR together;
    the rules of one policy AND together."""

    type: Literal["host", "path", "method", "header", "query", "cookie", "source_ip"]
    # path rules only: exact, prefix (the default) or regex (RE2, a match anywhere)
    match: Literal["exact", "prefix", "regex"] | None = None
    name: str | None = None
    values: Annotated[tuple[Annotated[str, Field(min_length=1, max_length=128)], ...],
                      Field(min_length=1)]

    @model_validator(mode="after")
    def consistent(self):
        if self.type in ("header", "query", "cookie") and not self.name:
            raise ValueError(f"a {self.type} rule needs a name")
        if self.type not in ("header", "query", "cookie") and self.name is not None:
            raise ValueError(f"name applies to header, query and cookie rules, not {self.type}")
        if self.match is not None and self.type != "path":
            raise ValueError("match applies to path rules only")
        if self.type == "header" and not HEADER_NAME.match(self.name):
            raise ValueError(f"header name {self.name!r}: 1-40 of A-Z a-z 0-9 _ -")
        for v in self.values:
            if self.type == "path" and self.match != "regex" and not v.startswith("/"):
                raise ValueError(f"path {v!r} must start with /")
            if self.type == "method" and not re.fullmatch(r"[A-Z]{1,20}", v):
                raise ValueError(f"method {v!r}: upper-case letters, e.g. GET")
            if self.type == "host" and not re.fullmatch(r"(\*\.)?[A-Za-z0-9.-]+", v):
                raise ValueError(f"host {v!r}: a name, or *. then a name")
        return self


class UrlSpec(Model):
    """A redirect's target. Each part defaults to the request's own; host,
    path and query may use ${protocol} ${host} ${port} ${path} ${query}."""

    protocol: Literal["HTTP", "HTTPS"] | None = None
    host: str | None = None
    port: Port | None = None
    path: str | None = None
    query: str | None = None


class UrlRewrite(Model):
    """What a forward sends instead of the request's host, path or query;
    each may use ${host} ${path} ${query}, and defaults to the original."""

    host: str | None = None
    path: str | None = None
    query: str | None = None


# ELB's: 1-128 printable ASCII, no space at either end.
HeaderValue = Annotated[str, Field(min_length=1, max_length=128,
                                   pattern=r"^[\x21-\x7e]([\x20-\x7e]*[\x21-\x7e])?$")]


class ForwardAction(Model):
    type: Literal["forward"]
    pool: str | None = None
    pools: dict[str, Int(0, 100)] | None = None
    # request headers added (name: value) or removed before forwarding;
    # names lbcore owns are refused by check
    insert_headers: dict[Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,40}$")], HeaderValue] = {}
    remove_headers: tuple[Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,40}$")], ...] = ()
    rewrite_url: UrlRewrite | None = None

    @model_validator(mode="after")
    def one_target(self):
        if (self.pool is None) == (self.pools is None):
            raise ValueError("forward needs exactly one of pool or pools")
        if self.pools is not None and not any(self.pools.values()):
            raise ValueError("pools: at least one weight above 0")
        return self


class RedirectAction(Model):
    type: Literal["redirect"]
    status: Literal[301, 302, 303, 307, 308] = 301
    url: UrlSpec


class FixedResponseAction(Model):
    type: Literal["fixed_response"]
    status: Int(200, 599) = 200
    content_type: Literal["text/plain", "text/css", "text/html", "application/javascript",
                          "application/json"] = "text/plain"
    body: Annotated[str, Field(max_length=1024)] = ""

    @model_validator(mode="after")
    def final_status(self):
        if 300 <= self.status < 400:
            raise ValueError("fixed_response status: 2xx, 4xx or 5xx (use redirect for 3xx)")
        return self


Action = Annotated[ForwardAction | RedirectAction | FixedResponseAction,
                   Field(discriminator="type")]


class ForwardingPolicy(Model):
    name: Name
    priority: Int(0, 10000)
    rules: tuple[Rule, ...] = ()
    action: Action
    qps_limit: Int(0, 1_000_000) = 0


class Listener(Model):
    name: Name
    protocol: Literal["HTTPS", "HTTP"]
    port: Port
    address: str | None = None
    description: Annotated[str, Field(max_length=255)] = ""
    ssl_authentication: Literal["one-way", "mutual"] = "one-way"
    server_certificate: str | None = None
    ca_certificate: str | None = None
    sni: Sni = Sni()
    access_control: AccessControl = AccessControl()
    transfer_client_ip: bool = True
    security_policy: str = "tls-1-2-fs-with-1-3"
    http2: bool = False
    transfer_eip: bool = False
    idle_timeout: Int(0, 4000) = 60
    request_timeout: Int(1, 300) = 60
    response_timeout: Int(1, 300) = 60
    connect_timeout: Annotated[float, BeforeValidator(no_bool), in_range(0.1, 60)] = 5.0
    insert_headers: InsertHeaders = InsertHeaders()
    limits: Limits = Limits()
    default_pool: str
    forwarding_policies: tuple[ForwardingPolicy, ...] = ()


class StickySession(Model):
    type: Literal["lb_cookie", "app_cookie", "source_ip"]
    cookie_name: str | None = None
    timeout_minutes: Int(1, 1440) = 1440
    # The lb_cookie's attributes. auto: Secure on HTTPS listeners only, since a
    # browser drops a Secure cookie that arrives over plain HTTP. null: no SameSite.
    secure: Literal["auto"] | bool = "auto"
    same_site: Literal["Lax", "Strict", "None"] | None = "Lax"

    @model_validator(mode="after")
    def app_cookie_named(self):
        if self.type == "app_cookie" and not self.cookie_name:
            raise ValueError("app_cookie needs cookie_name (the application's cookie)")
        if self.type != "lb_cookie" and {"secure", "same_site"} & self.model_fields_set:
            raise ValueError("secure and same_site are the lb_cookie's: lbcore sets no "
                             f"cookie for {self.type}")
        if self.same_site == "None" and self.secure is False:
            raise ValueError("same_site None needs Secure: browsers drop such a cookie "
                             "without it")
        return self


class SlowStart(Model):
    enabled: bool = False
    duration: Int(30, 1200) = 30


class Member(Model):
    name: str | None = None
    address: Annotated[str, Field(min_length=1)]
    port: Port
    weight: Int(0, 100) = 1

    @model_validator(mode="after")
    def default_name(self):
        if self.name is None:
            object.__setattr__(self, "name", f"{self.address}:{self.port}")
        return self


EXPECTED_CODES = re.compile(r"^\d{3}(-\d{3})?(,\d{3}(-\d{3})?)*$")


def check_codes(v: Any) -> str:
    v = str(v).replace(" ", "")
    if not EXPECTED_CODES.match(v):
        raise ValueError(f"expected_codes {v!r}: use 200, 200,202 or 200-299")
    return v


def check_path(v: str) -> str:
    if not v.startswith("/") or len(v) > 80:
        raise ValueError(f"path {v!r} must start with / and be at most 80 characters")
    return v


class HealthCheck(Model):
    enabled: bool = True
    protocol: Literal["HTTP", "TCP"] = "HTTP"
    port: Port | None = None
    domain: str | None = None
    path: Annotated[str, AfterValidator(check_path)] = "/"
    method: Literal["GET", "HEAD", "POST"] = "GET"
    interval: Int(1, 50) = 5
    timeout: Int(1, 50) = 3
    healthy_threshold: Int(1, 10) = 3
    unhealthy_threshold: Int(1, 10) = 3
    expected_codes: Annotated[str, BeforeValidator(check_codes)] = "200"


RetryOn = Literal["connect_failure", "reset", "response_timeout", "http_502", "http_503"]


class RetryBudget(Model):
    """Envoy's retry budget: a worker's requests of the pool that are on a
    retry stay below `percent` of its active requests, or `min_concurrent`
    when that is more. percent: 100 leaves only max_retries as a limit."""

    percent: Annotated[float, BeforeValidator(no_bool), in_range(0, 100)] = 20.0
    min_concurrent: Int(0, 1_000_000) = 3


class Retries(Model):
    """Which failures are retried on another member (spec 7.2 by default: a
    failed connect, a connection lost before any response byte, the response
    time-out; a member's own 502 or 503 only when listed), how many times."""

    # (not `on`: YAML 1.1 reads that key as true)
    retry_on: tuple[RetryOn, ...] = ("connect_failure", "reset", "response_timeout")
    max_retries: Int(0, 10) = 4
    budget: RetryBudget = RetryBudget()


class RequestBuffering(Model):
    """nginx's proxy_request_buffering, HAProxy's http-buffer-request: a
    request body up to max_bytes is read from the client before a member is
    chosen, so a slow upload holds no member connection. A larger body is
    streamed from max_bytes on. The whole body must arrive within timeout
    seconds while it is buffered; over it: 408."""

    enabled: bool = False
    max_bytes: Int(1024, 1 << 30) = 1 << 20
    timeout: Int(1, 3600) = 60


class Pool(Model):
    description: str = ""
    protocol: Literal["HTTP"] = "HTTP"
    algorithm: Literal["weighted_round_robin", "weighted_least_connections",
                       "source_ip_hash"] = "weighted_round_robin"
    sticky_session: StickySession | None = None
    slow_start: SlowStart = SlowStart()
    fail_open: bool = False
    # Bytes a member's response head may take, its interim (1xx) responses
    # included; over it: 502, reason upstream_header_too_big. Default: the
    # max_header_block of the listener the request came in on.
    max_response_header: Int(1024, 1 << 22) | None = None
    members: Annotated[tuple[Member, ...], Field(max_length=500)] = ()
    health_check: HealthCheck = HealthCheck()
    # Seconds between the master's lookups of member host names (a changed
    # answer swaps in the new member set); 0 = only when the config loads.
    resolve_interval: Int(0, 86400) = 30
    retries: Retries = Retries()
    request_buffering: RequestBuffering = RequestBuffering()

    @model_validator(mode="after")
    def slow_start_wrr_only(self):
        if self.slow_start.enabled and self.algorithm != "weighted_round_robin":
            raise ValueError("slow_start works with weighted_round_robin only")
        return self


def not_empty(what: str):
    def check(v: Any) -> Any:
        if isinstance(v, list | dict | tuple) and not v:
            raise ValueError(f"at least one {what} is needed")
        return v

    return check


class Config(Model):
    load_balancer: LoadBalancer = LoadBalancer()
    certificates: dict[str, Certificate] = {}
    ip_groups: dict[str, IpGroup] = {}
    security_policies: dict[str, SecurityPolicy] = {}
    # Emptiness is checked on the raw input: pydantic's min_length would also
    # fire when an item merely failed validation, adding a misleading error.
    listeners: Annotated[tuple[Listener, ...], BeforeValidator(not_empty("listener"))]
    pools: Annotated[dict[str, Pool], BeforeValidator(not_empty("pool"))]
    source: Path | None = Field(default=None, exclude=True)
    warnings: tuple[str, ...] = Field(default=(), exclude=True)
