"""Deletes the bench's queues and exchanges on the broker (py-amqp, which
Celery brings): ``python broker.py URL --queue Q ... --exchange X ...``.
A name that is already gone is not an error."""

import argparse
from urllib.parse import unquote, urlparse

import amqp


def channel_for(url):
    u = urlparse(url)
    vhost = unquote(u.path[1:]) if len(u.path) > 1 else "/"
    conn = amqp.Connection(host="%s:%d" % (u.hostname or "127.0.0.1", u.port or 5672),
                           userid=unquote(u.username or "guest"),
                           password=unquote(u.password or "guest"), virtual_host=vhost)
    conn.connect()
    return conn


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("url")
    p.add_argument("--queue", action="append", default=[])
    p.add_argument("--exchange", action="append", default=[])
    args = p.parse_args()
    conn = channel_for(args.url)
    try:
        for kind, names in (("queue", args.queue), ("exchange", args.exchange)):
            for name in names:
                # A failed delete closes the channel: one channel per name.
                ch = conn.channel()
                try:
                    if kind == "queue":
                        ch.queue_delete(name)
                    else:
                        ch.exchange_delete(name)
                    print("deleted %s %s" % (kind, name))
                except amqp.exceptions.NotFound:
                    pass
                finally:
                    try:
                        ch.close()
                    except Exception:  # noqa: BLE001 - already closed by the broker
                        pass
    finally:
        conn.close()


if __name__ == "__main__":
    main()
