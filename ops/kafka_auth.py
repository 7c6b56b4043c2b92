"""Who each process is on the broker, and the client settings that say so.

The broker authenticates every client with SASL/SCRAM-SHA-512 and authorizes it by the rules
of ops/acls.yaml. Each process connects as its own principal:

    intelbus-admin    the brokers' super user: `intelbus up`, `topics apply`, `acls apply`,
                      the health and lag probes, the tests' and benchmarks' direct checks
    intelbus-jobs     the stream jobs          intelbus-sink     the sink
    intelbus-gateway  the gateway's feeds      local (INTELBUS_KAFKA_USER) the publishing tools

Passwords come from INTELBUS_KAFKA_PASSWORD_<USER> or <secrets dir>/kafka/<user>
(ops/secrets.py); `intelbus up` creates both the files and the broker's SCRAM credentials.
With INTELBUS_KAFKA_AUTH=none the clients send no credentials (a broker without SASL).
INTELBUS_KAFKA_SECURITY's settings are applied last, so production can add TLS
(security.protocol=SASL_SSL, ssl.ca.location=...) or replace anything here.
"""
from __future__ import annotations

ADMIN = "intelbus-admin"
JOBS = "intelbus-jobs"
SINK = "intelbus-sink"
GATEWAY = "intelbus-gateway"
SERVICES = (ADMIN, JOBS, SINK, GATEWAY)
MECHANISM = "SCRAM-SHA-512"
AUTH_CHOICES = ("scram-sha-512", "none")


def extra_settings(settings) -> dict[str, str]:
    """INTELBUS_KAFKA_SECURITY's 'k=v,k=v' as a dict."""
    conf = {}
    for item in filter(None, (p.strip() for p in settings.kafka_security.split(","))):
        key, _, value = item.partition("=")
        conf[key.strip()] = value.strip()
    return conf


def client_config(settings, user: str) -> dict:
    """librdkafka settings for a client acting as `user`."""
    if settings.kafka_auth not in AUTH_CHOICES:
        raise ValueError(f"INTELBUS_KAFKA_AUTH={settings.kafka_auth!r}: use one of {', '.join(AUTH_CHOICES)}")
    conf = {"bootstrap.servers": settings.kafka}
    if settings.kafka_auth == "scram-sha-512":
        from ops.secrets import kafka_password

        conf.update({"security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": MECHANISM,
                     "sasl.username": user, "sasl.password": kafka_password(settings, user)})
    conf.update(extra_settings(settings))
    return conf


def faust_credentials(settings, user: str):
    """The same identity for faust (aiokafka): SASLCredentials, with an SSL context under SASL_SSL."""
    conf = client_config(settings, user)
    protocol = conf.get("security.protocol", "PLAINTEXT").upper()
    context = None
    if protocol in ("SSL", "SASL_SSL"):
        import ssl

        context = ssl.create_default_context(cafile=conf.get("ssl.ca.location") or None)
        if conf.get("ssl.certificate.location"):
            context.load_cert_chain(conf["ssl.certificate.location"], conf.get("ssl.key.location"),
                                    conf.get("ssl.key.password"))
    if protocol.startswith("SASL"):
        import faust

        return faust.SASLCredentials(username=conf["sasl.username"], password=conf["sasl.password"],
                                     mechanism=conf.get("sasl.mechanism", MECHANISM), ssl_context=context)
    if context is not None:
        import faust

        return faust.SSLCredentials(context)
    return None


def upsert_scram(admin, passwords: dict[str, str], *, only_missing: bool = True, timeout: float = 30.0) -> list[str]:
    """Create (or, with only_missing=False, reset) SCRAM-SHA-512 credentials; the names changed."""
    from confluent_kafka.admin import ScramCredentialInfo, ScramMechanism, UserScramCredentialUpsertion

    names = sorted(passwords)
    if only_missing:
        names = [n for n in names if n not in existing_scram_users(admin, names, timeout=timeout)]
    if not names:
        return []
    info = ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 8192)
    futures = admin.alter_user_scram_credentials(
        [UserScramCredentialUpsertion(n, info, passwords[n].encode("utf-8")) for n in names], request_timeout=timeout)
    for name, fut in futures.items():
        fut.result()
    return names


def existing_scram_users(admin, names, *, timeout: float = 30.0) -> set[str]:
    """Which of `names` have a SCRAM-SHA-512 credential on the broker."""
    from confluent_kafka import KafkaException

    have = set()
    futures = admin.describe_user_scram_credentials(list(names), request_timeout=timeout)
    for name, fut in futures.items():
        try:
            desc = fut.result()
        except KafkaException as exc:
            if "RESOURCE_NOT_FOUND" in str(exc) or "not found" in str(exc).lower():
                continue
            raise
        if any(i.mechanism.name == "SCRAM_SHA_512" for i in desc.scram_credential_infos):
            have.add(name)
    return have
