"""Liveness and readiness of a gateway, for ``GET /health/live`` and ``/health/ready``.

Live: the process runs and its event loop answers (the REST server answering is the
proof; nothing else is checked, so a supervisor restarts only a hung process). Ready:
the gateway takes traffic: the CoAP server serves, the store is open and answers a
query, and, when ``[mqtt] enabled``, the uplink's publisher task runs (connected or
reconnecting: a broker outage is the outbox's job, not a reason to pull the gateway out
of service; ``uplink_connected`` says which). ``readiness`` returns the verdict and a
JSON-able reason per check.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..app import Gateway

__all__ = ["readiness"]


def readiness(gateway: Gateway) -> tuple[bool, dict[str, Any]]:
    """(ready, {"checks": {name: "ok" | reason}, ...}) of ``gateway`` now."""
    checks: dict[str, str] = {}
    checks["coap"] = "ok" if gateway.serving else "the CoAP server is not serving"
    try:
        gateway.store.last_send_id()  # open, and it answers
        checks["store"] = "ok"
    except Exception as e:  # noqa: BLE001 - any failure is the reason
        checks["store"] = f"the store cannot be read: {e}"
    body: dict[str, Any] = {}
    if gateway.config.mqtt.enabled:
        uplink = gateway.uplink
        task = getattr(uplink, "_task", None)
        running = uplink is not None and task is not None and not task.done()
        checks["uplink"] = "ok" if running else "the MQTT uplink is not running"
        body["uplink_connected"] = bool(uplink is not None and uplink.connected)
    ready = all(v == "ok" for v in checks.values())
    return ready, {"status": "ready" if ready else "not_ready", "checks": checks, **body}
