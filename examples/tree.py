"""A ten-line supervision tree: run it with ``threadotp run examples.tree:tree --observe``."""

import otp


class Ticker(otp.GenServer):
    def init(self, name):
        return ("ok", 0, 0.5)  # a "timeout" message after 0.5 s without other messages

    def handle_info(self, msg, ticks):
        return ("noreply", ticks + 1, 0.5)


def tree():
    return [(Ticker, "a"), {"id": "b", "start": (Ticker.start_link, ("b",))}]
