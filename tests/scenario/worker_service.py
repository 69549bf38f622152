"""A tiny worker service for tests/scenario/test_worker.py (no namespace, no scapy)."""
import time


class Echo:
    def echo(self, value, delay: float = 0.0):
        if delay:
            time.sleep(delay)
        return value

    def packets(self):
        return [[1.5, "10.0.0.1", "[ns:eth0] x"]]
