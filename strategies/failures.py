"""Client failures as the server sees them: who failed, and a one-line reason (plumbing: no algorithm of docs/algorithms.md here).

Flower reports a failed fit as a bare exception or a (proxy, result) pair with an error status;
`TrackedClient` tags each fit call with the partition id it was sent to, and `error_text`
turns any failure into "ExceptionType: message" or "no answer within round_timeout".
"""

from __future__ import annotations

import re

from flwr.server.client_proxy import ClientProxy


class ClientFailed(RuntimeError):
    """A selected client did not deliver an update; carries its partition id."""

    def __init__(self, partition_id: int, error: BaseException):
        super().__init__(f"client {partition_id}: {type(error).__name__}: {error}")
        self.partition_id, self.error = partition_id, error


class TrackedClient(ClientProxy):
    """Wraps a ClientProxy for one fit (or evaluate) call so that a failure names the client it came from, and
    `on_done(num_examples)` hears of each answer as it arrives (the live progress line)."""

    def __init__(self, inner: ClientProxy, partition_id: int, on_done=None):
        super().__init__(inner.cid)
        self.inner, self.partition_id, self.on_done = inner, partition_id, on_done

    def fit(self, ins, timeout, group_id):
        try:
            res = self.inner.fit(ins, timeout=timeout, group_id=group_id)
        except BaseException as err:  # noqa: BLE001 - re-raised with the client's id
            raise ClientFailed(self.partition_id, err) from err
        if self.on_done is not None:
            self.on_done(int(getattr(res, "num_examples", 0)))
        return res

    def get_properties(self, ins, timeout, group_id):
        return self.inner.get_properties(ins, timeout, group_id)

    def get_parameters(self, ins, timeout, group_id):
        return self.inner.get_parameters(ins, timeout, group_id)

    def evaluate(self, ins, timeout, group_id):
        try:
            return self.inner.evaluate(ins, timeout=timeout, group_id=group_id)
        except BaseException as err:  # noqa: BLE001 - re-raised with the client's id
            raise ClientFailed(self.partition_id, err) from err

    def reconnect(self, ins, timeout, group_id):
        return self.inner.reconnect(ins, timeout, group_id)


NOT_CONNECTED = "not connected at the start of the round (its node is offline)"
NODE_LOST = "node lost during the round (no heartbeat from its SuperNode: stopped, crashed or disconnected)"
_DEPLOYED = re.compile(r"<class '([\w.]+)'>:<'(.*?)'>\)")
_CAUSE = re.compile(r"\b([A-Za-z_][\w.]*(?:Error|Exception|Fault|Mismatch)): ([^\n'\\]+)")


def error_text(failure) -> str:
    """A one-line reason: the client's own exception, or that its message expired (timeout)."""
    if isinstance(failure, ClientFailed):
        text = str(failure.error)
    elif isinstance(failure, BaseException):
        text = f"{type(failure).__name__}: {failure}"
    else:
        _, res = failure
        return f"status {res.status.code.name}: {res.status.message}"
    if "Node Unavailable" in text:
        return NODE_LOST
    raised = _DEPLOYED.search(text)  # a ClientApp's exception as a SuperNode reports it
    if raised:
        return f"{raised.group(1).rsplit('.', 1)[-1]}: {raised.group(2)}"
    if "TTL" in text or "expired" in text:
        return "no answer within round_timeout (the message expired)"
    causes = [m for m in _CAUSE.findall(text) if "RayTaskError" not in m[0] and m[0] != "ValueError"]
    return f"{causes[-1][0]}: {causes[-1][1].strip()}" if causes else text[:500]


def failed_partition(failure, pid_of: dict[str, int]) -> int | None:
    """The partition id a failure belongs to, when it can be told."""
    if isinstance(failure, ClientFailed):
        return failure.partition_id
    if isinstance(failure, tuple):
        return pid_of.get(failure[0].cid)
    return None
