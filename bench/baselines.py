"""The two baselines the collector is compared with, each run as its own process.

* `count`: a bare paho-mqtt subscriber that only counts messages: the ceiling for any Python
  subscriber on this machine.
* `count-buffered`: the same with the collector's `BufferedClient` (paho reading the socket in
  large chunks, collector/mqttclient.py): the ceiling for the collector's own MQTT client.
* `bridge`: a plain MQTT-to-InfluxDB bridge: parse each rating, turn it into a line-protocol point,
  write in batches. No validation, no signatures, no linking, no durability (acknowledged on
  receipt).

Both use a persistent session (QoS 1) like the collector, so all three drain the same backlog.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time

import paho.mqtt.client as mqtt
import urllib3
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from collector.mqttclient import BufferedClient


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["count", "count-buffered", "bridge"])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--prefix", default="evalterm")
    ap.add_argument("--expect", type=int, default=0,
                    help="exit after this many messages (0: only subscribe)")
    ap.add_argument("--influx", default="")
    ap.add_argument("--db", default="bridge")
    args = ap.parse_args()

    done = threading.Event()
    count = 0
    batch: list[str] = []
    lock = threading.Lock()
    http = urllib3.PoolManager()
    if args.mode == "bridge":
        http.request("POST", f"{args.influx}/query", fields={"q": f'CREATE DATABASE "{args.db}"'})

    def flush() -> None:
        nonlocal batch
        with lock:
            lines, batch = batch, []
        if lines:
            http.request("POST", f"{args.influx}/write?db={args.db}&precision=ns",
                         body="\n".join(lines).encode())

    def on_message(_c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        nonlocal count
        count += 1
        if args.mode == "bridge" and msg.topic.endswith("/rating"):
            m = json.loads(msg.payload)
            _, _, hall, window, dev, _ = msg.topic.rsplit("/", 5)
            ts = int(time.time() * 1e9)
            with lock:
                batch.append(f"rating,hall={hall},window={window},device={dev},level={m['level']} "
                             f"value={m['level']}i,seq={m['seq']}i {ts}")
        if args.expect and count >= args.expect:
            done.set()

    def on_connect(client: mqtt.Client, *_a: object) -> None:
        client.subscribe([(f"{args.prefix}/dev/+/+/+/rating", 1), (f"{args.prefix}/feed/+", 1)])

    cls = BufferedClient if args.mode == "count-buffered" else mqtt.Client
    client = cls(mqtt.CallbackAPIVersion.VERSION2, client_id=f"baseline-{args.mode}",
                 protocol=mqtt.MQTTv5)
    client.on_message = on_message
    client.on_connect = on_connect
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 3600
    props.ReceiveMaximum = 1000
    client.connect("127.0.0.1", args.port, clean_start=False, properties=props)
    client.loop_start()
    if not args.expect:
        time.sleep(1.0)  # the subscription exists now; the backlog will be kept for us
    else:
        while not done.wait(0.2):
            if args.mode == "bridge":
                flush()
        flush()
    client.disconnect()
    client.loop_stop()
    print(json.dumps({"received": count}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
