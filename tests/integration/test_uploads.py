"""Apps' messages on $hw/events/upload/# reach the cloud's uploadURL: through the edge
outbox and the cloud's queue, so a receiver that is down and a cloud that is away lose
nothing. Real mosquitto, real daemons, a real HTTP receiver."""

from __future__ import annotations

import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tests.mqtt import Mosquitto, require_mosquitto
from tests.support import Env, edit_yaml, free_port, join, make_cloud, wait_for


class Receiver:
    """The operator's endpoint: records every POSTed upload."""

    def __init__(self, port: int) -> None:
        self.port, self.received = port, []
        received = self.received

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(204)
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_uploads_reach_the_cloud_endpoint_late_but_all(env: Env, tmp_path: Path) -> None:
    require_mosquitto()
    receiver_port = free_port()
    receiver: Receiver | None = None
    with Mosquitto(tmp_path) as broker:
        cloud = make_cloud(env)
        edit_yaml(cloud.config, lambda d: d["modules"].update(router={
            "uploadURL": f"http://127.0.0.1:{receiver_port}/uploads", "timeout": "2s"}))
        cloud.start()
        edge = join(cloud, "edge-up")
        edit_yaml(edge.config, lambda d: d["modules"].update(eventBus={
            "enable": True, "mqttServerExternal": broker.url, "reconnectMax": "1s"}))
        edge.start()
        wait_for(lambda: cloud.node_ready("edge-up"), 20, what="the node to be Ready")
        wait_for(lambda: "connected to the MQTT broker" in edge.log(), 10,
                 what=lambda: f"the event bus to connect:\n{edge.log()}")

        def publish(topic: str, payload: bytes) -> None:
            env.run("/usr/bin/mosquitto_pub", "-h", "127.0.0.1", "-p", str(broker.port),
                    "-q", "1", "-t", topic, "-m", payload.decode("latin-1"))

        try:
            # The receiver is down: the cloud keeps them and retries.
            publish("$hw/events/upload/line-1/count", b"41")
            publish("$hw/events/upload/line-1/count", b"42")
            wait_for(lambda: "forwarding uploads to" in cloud.log(), 15,
                     what=lambda: f"a failed forward:\n{cloud.log()}\n{edge.log()}")
            # The cloud is away: the edge keeps it.
            cloud.stop()
            publish("$hw/events/upload/line-2/status", b"{\"ok\": true}")
            cloud.start()
            receiver = Receiver(receiver_port)
            wait_for(lambda: len(receiver.received) >= 3, 40,  # the retry backoff grows
                     what=lambda: f"3 uploads, got {receiver.received}:\n{cloud.log()}")
            got: list[tuple[Any, ...]] = [(u["node"], u["topic"],
                                           base64.b64decode(u["payload"]))
                                          for u in receiver.received]
            assert got == [("edge-up", "$hw/events/upload/line-1/count", b"41"),
                           ("edge-up", "$hw/events/upload/line-1/count", b"42"),
                           ("edge-up", "$hw/events/upload/line-2/status", b'{"ok": true}')]
            assert all(u["received"].endswith("Z") for u in receiver.received)
        finally:
            if receiver is not None:
                receiver.close()
