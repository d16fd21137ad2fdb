#!/usr/bin/env python3
"""An order workflow that sleeps for 30 days, on Hourglass.

This mirrors the durable-timer page of Temporal's Python SDK: a workflow calls
``await asyncio.sleep(timedelta(days=30))``, and because the timer is durable, the workflow
continues after 30 days even if every worker and the whole service were down when the time came.

Here the workflow's durable sleep is an Hourglass timer:

1. ``place`` runs the workflow's first step (the order is placed) and then "sleeps": it
   schedules the timer ``order-<ID>/follow-up`` 30 days out (``--sleep`` shortens it). The
   call returns once the timer is committed on a majority of its partition's replicas.
2. ``worker`` wakes the workflow when the timer fires: it runs the next step (sending the
   customer a follow-up) and acknowledges the delivery. A timer that came due while the
   whole cluster, or every worker, was down is delivered as soon as both are back.
3. ``status`` shows the order's timers; ``cancel`` cancels the follow-up (for example when the
   order was returned), after which it is never delivered.

Try it against a local cluster (``deploy/local-cluster.sh up`` or ``hourglass dev``)::

    python examples/order_workflow.py place 42 --sleep 20s
    deploy/local-cluster.sh down          # the whole cluster is down when the timer is due
    sleep 30; deploy/local-cluster.sh up
    python examples/order_workflow.py worker --exit-after 1

Endpoints come from ``--endpoints`` or ``$HOURGLASS_ENDPOINTS`` (default 127.0.0.1:7001).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import signal
import sys
from datetime import datetime, timedelta, timezone

import hourglass

QUEUE = "orders"
TIMER = "follow-up"

_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)")


def parse_duration(text: str) -> timedelta:
    """``30d``, ``1h30m``, ``20s``, ``500ms`` or a number of seconds."""
    text = text.strip()
    try:
        return timedelta(seconds=float(text))
    except ValueError:
        pass
    parts = _PART.findall(text)
    if not parts or _PART.sub("", text).strip():
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (try 30d, 1h30m, 20s)")
    return timedelta(seconds=sum(float(n) * _UNITS[unit] for n, unit in parts))


def workflow_id(order: str) -> str:
    return f"order-{order}"


async def place(client: hourglass.Client, order: str, customer: str, sleep: timedelta) -> int:
    """The workflow's first step, then its durable sleep."""
    print(f"order {order}: placed by {customer}")
    payload = json.dumps({"order": order, "customer": customer, "step": TIMER}).encode()
    result = await client.schedule(
        workflow_id(order), TIMER, delay=sleep, payload=payload, queue=QUEUE
    )
    timer = result.timer
    verb = "sleeping" if result.created else "already sleeping"
    print(
        f"order {order}: {verb} until {timer.fire_at.isoformat()} "
        f"(timer {timer.workflow_id}/{timer.timer_id}, partition {timer.partition})"
    )
    return 0


async def follow_up(delivery: hourglass.Delivery) -> None:
    """The step after the sleep. Deliveries are at least once: a real system records that the
    follow-up was sent (keyed by workflow and timer id) and skips it when it comes again."""
    data = json.loads(delivery.payload)
    late = datetime.now(timezone.utc) - delivery.fire_at
    print(
        f"order {data['order']}: woke up after the durable sleep, sending the follow-up to "
        f"{data['customer']} (due {delivery.fire_at.isoformat()}, {late.total_seconds():.1f} s "
        f"ago; attempt {delivery.attempt}; from {delivery.node})",
        flush=True,
    )


async def work(client: hourglass.Client, exit_after: int | None, concurrency: int) -> int:
    done = asyncio.Event()
    handled = 0

    async def handle(delivery: hourglass.Delivery) -> None:
        nonlocal handled
        await follow_up(delivery)
        handled += 1
        if exit_after is not None and handled >= exit_after:
            done.set()

    worker = hourglass.Worker(client, QUEUE, handle, concurrency=concurrency)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, done.set)
    await worker.start()
    print(
        f"worker: waiting for timers of queue {QUEUE!r} from {', '.join(worker.nodes)}", flush=True
    )
    runner = asyncio.create_task(worker.run())
    stopper = asyncio.create_task(done.wait())
    await asyncio.wait({runner, stopper}, return_when=asyncio.FIRST_COMPLETED)
    await worker.stop()  # graceful: running handlers finish and are acknowledged
    stopper.cancel()
    await runner
    print(f"worker: stopped after {handled} follow-ups", flush=True)
    return 0


async def status(client: hourglass.Client, order: str) -> int:
    found = False
    async for page in client.list(workflow_id(order)):
        for timer in page:
            found = True
            print(
                f"{timer.workflow_id}/{timer.timer_id}: {timer.state.name.lower()}, due "
                f"{timer.fire_at.isoformat()}"
            )
    if not found:
        print(f"order {order}: no timers")
    return 0


async def cancel(client: hourglass.Client, order: str) -> int:
    try:
        result = await client.cancel(workflow_id(order), TIMER)
    except hourglass.NotFound:
        print(f"order {order}: no follow-up scheduled", file=sys.stderr)
        return 1
    if result.outcome is hourglass.CancelOutcome.CANCELLED:
        print(f"order {order}: follow-up cancelled; it will never be sent")
    else:
        print(f"order {order}: the follow-up already fired")
    return 0


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--endpoints", help="comma-separated HOST:PORT list")
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("place", help="place an order and sleep until its follow-up")
    p.add_argument("order")
    p.add_argument("--customer", default="ada@example.com")
    p.add_argument(
        "--sleep",
        type=parse_duration,
        default=timedelta(days=30),
        help="how long the workflow sleeps (default 30d)",
    )
    w = commands.add_parser("worker", help="wake sleeping orders when their timers fire")
    w.add_argument("--exit-after", type=int, help="stop after this many follow-ups")
    w.add_argument("--concurrency", type=int, default=8)
    s = commands.add_parser("status", help="show an order's timers")
    s.add_argument("order")
    c = commands.add_parser("cancel", help="cancel an order's follow-up")
    c.add_argument("order")
    args = parser.parse_args(argv)

    try:
        async with hourglass.Client(args.endpoints) as client:
            if args.command == "place":
                return await place(client, args.order, args.customer, args.sleep)
            if args.command == "worker":
                return await work(client, args.exit_after, args.concurrency)
            if args.command == "status":
                return await status(client, args.order)
            return await cancel(client, args.order)
    except hourglass.HourglassError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
