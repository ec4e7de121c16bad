"""Load generator: signed device ratings and business-system transactions, published over MQTT.

Run as its own process by bench/run.py so that its CPU use is not counted as the collector's.
Messages are built and signed before the clock starts. Each device id is a registered device with
its own key; the messages of many devices share a few connections (the broker's per-connection cost
is not what is measured here).
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
import time
from pathlib import Path

import paho.mqtt.client as mqtt

from collector.clock import now_ms
from collector.db import connect
from collector.protocol import device_topic, feed_message, feed_topic, rating_message


def register_devices(state_db: str | Path, n: int, keys_file: Path) -> list[list[str]]:
    """Register n devices, each with its own key, in halls of 40 windows (a large real hall; the
    detector compares each window with the others of its hall); write their keys to keys_file
    for `build` and return them as [device, window, key_hex, hall] rows."""
    conn = connect(state_db)
    now = now_ms()
    devices = []
    conn.execute("BEGIN")
    for i in range(n):
        key = secrets.token_bytes(32)
        dev, hall, window = f"kp{i:05d}", f"hall{i // 40:03d}", f"w{i % 40:02d}"
        conn.execute("INSERT INTO device (device, hall, window, key_hex, state, created_ms) "
                     "VALUES (?, ?, ?, ?, 'active', ?)", (dev, hall, window, key.hex(), now))
        devices.append([dev, window, key.hex(), hall])
    conn.execute("COMMIT")
    conn.close()
    keys_file.write_text(json.dumps(devices))
    return devices


def build(prefix: str, keys_file: str, n: int, start_ms: int) -> list[tuple[str, bytes]]:
    """n (transaction, rating) pairs, round-robin over the devices, as (topic, payload)."""
    with open(keys_file) as f:
        devices = json.load(f)  # [[device, window, key_hex, hall], ...]
    msgs: list[tuple[str, bytes]] = []
    for i in range(n):
        dev, window, key_hex, hall = devices[i % len(devices)]
        ftopic = feed_topic(prefix, hall)
        txn = f"B{start_ms}-{i:07d}"
        msgs.append((ftopic, feed_message(
            "txn_completed", id=f"e{start_ms}-{i}", window=window, ts=start_ms, txn=txn,
            staff={"id": f"s-{window}", "name": "张伟"},
            service={"code": "sfz", "name": "居民身份证换领"}, started=start_ms - 60_000,
            completed=start_ms, outcome="completed")))
        topic = device_topic(prefix, hall, window, dev, "rating")
        level = 1 + (i * 7) % 5
        msgs.append((topic, rating_message(
            bytes.fromhex(key_hex), topic, dev=dev, boot=start_ms // 1000 % 2**30 + 1, seq=i,
            ts=None, up=i, level=level, txn=txn, reason="wait" if level <= 2 else None, rt=2500,
            mode="invited")))
    return msgs


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--prefix", default="evalterm")
    ap.add_argument("--keys", required=True)
    ap.add_argument("--pairs", type=int, required=True)
    ap.add_argument("--rate", type=float, default=0,
                    help="pairs per second (0: as fast as possible)")
    ap.add_argument("--connections", type=int, default=4)
    ap.add_argument("--latency-out", help="with --rate: write [rating_id, publish_ms] lines here")
    args = ap.parse_args()

    start_ms = now_ms()
    with open(args.keys) as f:
        devices = json.load(f)
    clients = []
    for c in range(args.connections):
        cl = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"loadgen-{start_ms}-{c}",
                         protocol=mqtt.MQTTv311)
        cl.max_inflight_messages_set(1000)
        cl.max_queued_messages_set(0)
        cl.connect("127.0.0.1", args.port, keepalive=60)
        cl.loop_start()
        clients.append(cl)

    if args.rate <= 0:
        msgs = build(args.prefix, args.keys, args.pairs, start_ms)
        t0 = time.perf_counter()
        infos = [clients[i % len(clients)].publish(t, p, qos=1) for i, (t, p) in enumerate(msgs)]
        for info in infos:
            info.wait_for_publish(120)
        dt = time.perf_counter() - t0
        print(json.dumps({"published": len(msgs), "seconds": dt}))
    else:
        # Paced: sign each rating at its publish time so `ts` is the publish time (latency).
        out = open(args.latency_out, "w") if args.latency_out else None
        boot = start_ms // 1000 % 2**30 + 1
        t0 = time.perf_counter()
        infos = []
        for i in range(args.pairs):
            due = t0 + i / args.rate
            while (now := time.perf_counter()) < due:
                time.sleep(min(0.002, due - now))
            dev, window, key_hex, hall = devices[i % len(devices)]
            ftopic = feed_topic(args.prefix, hall)
            ms = now_ms()
            txn = f"L{start_ms}-{i:07d}"
            cl = clients[i % len(clients)]
            infos.append(cl.publish(ftopic, feed_message(
                "txn_completed", id=f"l{start_ms}-{i}", window=window, ts=ms, txn=txn,
                staff={"id": f"s-{window}"}, service={"code": "sfz"}, started=ms - 60_000,
                completed=ms, outcome="completed"), qos=1))
            topic = device_topic(args.prefix, hall, window, dev, "rating")
            infos.append(cl.publish(topic, rating_message(
                bytes.fromhex(key_hex), topic, dev=dev, boot=boot, seq=i, ts=ms, up=i, level=5,
                txn=txn, reason=None, rt=2000, mode="invited"), qos=1))
            if out:
                out.write(f"{dev}:{boot}:{i} {ms}\n")
        for info in infos:
            info.wait_for_publish(120)
        if out:
            out.close()
        print(json.dumps({"published": len(infos), "seconds": time.perf_counter() - t0}))
    for cl in clients:
        cl.disconnect()
        cl.loop_stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
