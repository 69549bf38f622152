"""Reporting: the results table, JUnit XML and pcap files (written by hand:
the runner process does not import scapy)."""
from __future__ import annotations

import os
import struct
import xml.etree.ElementTree as ET

PCAP_MAGIC = 0xA1B2C3D4
LINKTYPE_ETHERNET = 1


def write_pcap(path: str, packets) -> str:
    """``packets``: iterable of (timestamp, raw Ethernet frame bytes, ...)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "wb") as f:
        f.write(struct.pack("<IHHiIII", PCAP_MAGIC, 2, 4, 0, 0, 65535, LINKTYPE_ETHERNET))
        for p in packets:
            ts, raw = float(p[0]), bytes(p[1])
            sec = int(ts)
            usec = int(round((ts - sec) * 1e6))
            if usec >= 1000000:
                sec, usec = sec + 1, usec - 1000000
            f.write(struct.pack("<IIII", sec, usec, len(raw), len(raw)))
            f.write(raw)
    return path


def read_pcap(path: str) -> list[tuple[float, bytes]]:
    with open(path, "rb") as f:
        data = f.read()
    magic, = struct.unpack("<I", data[:4])
    if magic != PCAP_MAGIC:
        raise ValueError(f"{path}: not a pcap file")
    out, off = [], 24
    while off + 16 <= len(data):
        sec, usec, incl, _orig = struct.unpack("<IIII", data[off:off + 16])
        off += 16
        out.append((sec + usec / 1e6, data[off:off + incl]))
        off += incl
    return out


COLUMNS = ("expectation", "from -> to", "proto/port", "expected", "seen", "result")


def rows(results) -> list[tuple]:
    return [(r.label, f"{r.src} -> {r.dst}", r.exp.what, r.exp.expected_text, r.seen,
             "PASS" if r.passed else "FAIL") for r in results]


def table(results, max_seen: int = 70) -> str:
    data = [tuple(c if i != 4 or len(c) <= max_seen else c[:max_seen - 1] + "…"
                  for i, c in enumerate(row)) for row in rows(results)]
    if not data:
        return "   (no expectation was run)"
    widths = [max(len(COLUMNS[i]), *(len(r[i]) for r in data)) for i in range(len(COLUMNS))]
    line = "  ".join("-" * w for w in widths)
    fmt = "  ".join("{:<%d}" % w for w in widths)
    out = [fmt.format(*COLUMNS), line] + [fmt.format(*r) for r in data]
    return "\n".join("   " + x.rstrip() for x in out)


def write_junit(path: str, suites) -> str:
    """``suites``: list of (scenario, results, error, seconds)."""
    root = ET.Element("testsuites", name="pynet-scenarios")
    tt = tf = te = 0
    for scn, results, error, secs in suites:
        s = ET.SubElement(root, "testsuite", name=f"scenario.{scn.name}",
                          tests=str(len(results) + (1 if error else 0)),
                          failures=str(sum(not r.passed for r in results)),
                          errors="1" if error else "0", time=f"{secs:.3f}",
                          file=scn.path or "")
        for r in results:
            tc = ET.SubElement(s, "testcase", classname=f"scenario.{scn.name}", name=r.label,
                               time=f"{r.duration:.3f}")
            props = ET.SubElement(tc, "system-out")
            props.text = (f"{r.src} -> {r.dst} {r.exp.what}: expected {r.exp.expected_text}; "
                          f"seen: {r.seen}" + "".join(f"\n  {p[2]}" for p in r.packets[:50]))
            if not r.passed:
                f = ET.SubElement(tc, "failure", message=f"expected {r.exp.expected_text}, "
                                                         f"seen {r.seen}", type="ExpectationFailed")
                f.text = f"pcap: {r.pcap}" if r.pcap else ""
        if error:
            tc = ET.SubElement(s, "testcase", classname=f"scenario.{scn.name}", name="build")
            e = ET.SubElement(tc, "error", message=error, type="ScenarioError")
            e.text = error
        tt += len(results) + (1 if error else 0)
        tf += sum(not r.passed for r in results)
        te += 1 if error else 0
    root.set("tests", str(tt))
    root.set("failures", str(tf))
    root.set("errors", str(te))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)
    return path
