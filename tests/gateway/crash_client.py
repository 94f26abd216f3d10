"""Streams messages into the gateway like a patient MTA, for the kill -9 test.

Usage: crash_client.py PORT COUNT OUTFILE. Each message is retried (new connection) until it
gets a 250; every 250 is appended to OUTFILE as ``index queue-id`` and flushed at once, so the
file lists exactly what the server acknowledged, even across the server's deaths.
"""

from __future__ import annotations

import smtplib
import sys
import time


def message(i: int) -> bytes:
    body = "".join(f"line {n} of message {i}: {'x' * (i % 70)}\r\n" for n in range(i % 40 + 1))
    return (f"From: crash@client.test\r\nTo: support@example.test\r\nSubject: crash {i}\r\n"
            f"Message-ID: <crash-{i}@client.test>\r\nDate: Sun, 22 Nov 2026 10:00:00 +0000\r\n"
            f"\r\n{body}").encode()


def main(port: int, count: int, outfile: str) -> None:
    out = open(outfile, "a", buffering=1)  # noqa: SIM115 — line-buffered for the whole run
    smtp: smtplib.SMTP | None = None
    i = 0
    while i < count:
        try:
            if smtp is None:
                smtp = smtplib.SMTP("127.0.0.1", port, timeout=10)
                smtp.ehlo("client.test")
            smtp.mail("crash@client.test")
            smtp.rcpt("support@example.test")
            code, reply = smtp.data(message(i))
            if code == 250:
                out.write(f"{i} {reply.split()[-1].decode()}\n")
                out.flush()
                i += 1
            else:
                smtp.rset()
        except (OSError, smtplib.SMTPException):
            smtp = None
            time.sleep(0.05)
    out.close()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
