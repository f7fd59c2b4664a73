"""Why an MQTT connection to the control plane did not come up, in words a person can act on.

awscrt reports a failed connection as an error name (``AWS_IO_TLS_ERROR_NEGOTIATION_FAILURE``), some
TLS failures only after s2n's blinding delay (10-30 s): :func:`describe_connection_failure` turns the
name into a reason naming the config key to check, and :func:`probe_tls` finds the reason at once by
opening the same mutual-TLS connection with Python's ``ssl``. ``fleetloop_core.mqtt_control_plane``
reports what they say.
"""

from __future__ import annotations


def describe_connection_failure(exception: object) -> str:
    """Return a reason a person can act on for an awscrt connection failure (its error name kept)."""
    name = getattr(exception, "name", "") or type(exception).__name__
    text = str(exception) or name
    hints = (
        (
            "TLS",
            "TLS handshake failed: the broker refused our client certificate, or its certificate is not "
            "signed by control_plane.mqtt.ca_file",
        ),
        ("CERTIFICATE", "the broker's certificate is not trusted (control_plane.mqtt.ca_file)"),
        ("CONNECTION_REFUSED", "nothing listens there (connection refused)"),
        ("DNS", "the endpoint's host name does not resolve"),
        ("TIMEOUT", "the endpoint did not answer (timed out)"),
        ("NO_ROUTE", "no route to the endpoint"),
        ("NETWORK_UNREACHABLE", "the network is unreachable"),
        ("CONNACK", "the broker refused the connection (CONNACK)"),
        ("NOT_AUTHORIZED", "the broker refused the connection: not authorized"),
    )
    for key, hint in hints:
        if key in text.upper():
            return f"{hint} [{text}]"
    return text


def probe_tls(host: str, port: int, ca_file: str, cert_file: str, key_file: str, timeout_s: float) -> str:
    """Return why a mutual-TLS connection to ``host:port`` with these files fails ("" when it works).

    Python's ``ssl`` answers at once where awscrt (s2n) delays some failures by its blinding
    period; the robot uses it only to name the reason of a connection that did not come up.
    """
    import socket
    import ssl

    try:
        context = ssl.create_default_context(cafile=ca_file)
        context.load_cert_chain(cert_file, key_file)
    except (ssl.SSLError, OSError) as exc:
        return f"cannot load the TLS files ({exc}; control_plane.mqtt.ca_file/cert_file/key_file)"
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as raw:
            with context.wrap_socket(raw, server_hostname=host) as tls:
                tls.settimeout(min(timeout_s, 1.0))
                try:  # TLS 1.3: a refused client certificate arrives as an alert now
                    if tls.recv(1) == b"":
                        return "the broker closed the connection after the TLS handshake (client certificate refused?)"
                except (socket.timeout, TimeoutError):
                    return ""  # the broker waits for our MQTT CONNECT: TLS is fine
                except ssl.SSLError as exc:
                    return f"the broker refused our client certificate ({exc.reason or exc})"
    except ssl.SSLCertVerificationError as exc:
        return f"the broker's certificate is not trusted: {exc.verify_message} (control_plane.mqtt.ca_file {ca_file})"
    except ssl.SSLError as exc:
        return f"TLS handshake failed: {exc.reason or exc}"
    except ConnectionRefusedError:
        return "nothing listens there (connection refused)"
    except (socket.timeout, TimeoutError):
        return f"the endpoint did not answer within {timeout_s:g} s"
    except OSError as exc:
        return f"cannot reach the endpoint ({exc.strerror or exc})"
    return ""


__all__ = ["describe_connection_failure", "probe_tls"]
