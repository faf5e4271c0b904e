"""Decodes a recorded flash between Rampart's gateway and a legacy ECU with scapy's DoIP and
UDS layers (scapy.contrib.automotive), a dissector Rampart did not write, and checks that
the sequence is the one ISO 14229 bootloaders expect.

    python scapy_decode.py RECORDED.jsonl OUT.pcap

RECORDED.jsonl holds one DoIP message per line as the TCP streams carried them:
{"from": "gateway" | "ecu", "hex": "02fd8001…"}. Every message must decode as DoIP with the
declared payload length and, for diagnostic messages, as a UDS service scapy knows. The
gateway's requests must come in this order: routing activation, DiagnosticSessionControl
(programming), SecurityAccess requestSeed then sendKey, RoutineControl eraseMemory (0xFF00),
RequestDownload, TransferData blocks whose counters run 1, 2, … (wrapping after 0xFF),
RequestTransferExit, RoutineControl 0xFF01 (the verify routine), ECUReset. The ECU must
answer each with a positive response (after "response pending" where it takes time). The
messages are also written to OUT.pcap (IPv4/TCP on port 13400) for Wireshark.
"""

import json
import sys

from scapy.all import IP, TCP, Ether, conf, wrpcap

conf.contribs["UDS"] = {"treat-response-pending-as-answer": False}
from scapy.contrib.automotive.doip import DoIP  # noqa: E402
from scapy.contrib.automotive.uds import UDS, UDS_NR  # noqa: E402


def fail(why):
    print(json.dumps({"ok": False, "error": why}))
    sys.exit(1)


def main():
    records = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
    requests, answers, packets = [], [], []
    seq = {"gateway": 1000, "ecu": 5000}
    for r in records:
        raw = bytes.fromhex(r["hex"])
        p = DoIP(raw)
        if p.payload_length != len(raw) - 8:
            fail(f"payload length {p.payload_length} for {len(raw) - 8} bytes")
        kind = p.payload_type
        entry = {"type": kind}
        if kind == 0x8001:
            uds = p[UDS]
            name = uds.sprintf("%UDS.service%")
            if name.startswith("0x"):
                fail(f"scapy does not know UDS service {name} in {r['hex'][:40]}")
            entry["service"] = uds.service
            entry["name"] = name
            entry["bytes"] = bytes(uds)
            if uds.service == 0x7F:
                entry["nrc"] = p[UDS_NR].negativeResponseCode
        (requests if r["from"] == "gateway" else answers).append(entry)
        src, dst = ("127.0.0.1", "127.0.0.2") if r["from"] == "gateway" else ("127.0.0.2", "127.0.0.1")
        sport, dport = (50000, 13400) if r["from"] == "gateway" else (13400, 50000)
        packets.append(Ether() / IP(src=src, dst=dst) / TCP(sport=sport, dport=dport, flags="PA", seq=seq[r["from"]]) / raw)
        seq[r["from"]] += len(raw)
    wrpcap(sys.argv[2], packets)

    # The gateway's side.
    if not requests or requests[0]["type"] != 0x0005:
        fail("the first message is not a routing activation request")
    diag = [e for e in requests if e["type"] == 0x8001]
    order = [e["bytes"][:1] if e["service"] in (0x34, 0x36, 0x37) else e["bytes"][:4 if e["service"] == 0x31 else 2] for e in diag]
    expected_head = [b"\x10\x02", b"\x27\x01", b"\x27\x02", b"\x31\x01\xff\x00", b"\x34"]
    if order[:5] != expected_head:
        fail(f"sequence starts {order[:5]}")
    blocks = []
    i = 5
    while i < len(diag) and diag[i]["service"] == 0x36:
        blocks.append(diag[i]["bytes"][1])
        i += 1
    if not blocks or blocks != [(n + 1) % 256 for n in range(len(blocks))]:
        fail(f"block counters {blocks[:10]}…")
    tail = order[i:]
    if tail[:3] != [b"\x37", b"\x31\x01\xff\x01", b"\x11\x01"]:
        fail(f"after the transfer: {tail[:3]}")

    # The ECU's side: positive answers, "response pending" only before one.
    pending = [a for a in answers if a.get("nrc") == 0x78]
    refused = [a for a in answers if a.get("service") == 0x7F and a.get("nrc") != 0x78]
    if refused:
        fail(f"negative responses {[hex(a['nrc']) for a in refused]}")
    positives = [a for a in answers if a.get("service", 0) >= 0x40 and a.get("service") != 0x7F]
    print(json.dumps({
        "ok": True,
        "messages": len(records),
        "requests": [e.get("name", hex(e["type"])) for e in requests][:8] + ["…"],
        "transfer_blocks": len(blocks),
        "response_pending": len(pending),
        "positive_responses": len(positives),
        "dissector": "scapy.contrib.automotive.doip / uds",
    }))


if __name__ == "__main__":
    main()
