"""An ECU Rampart did not write, for Rampart's gateway to flash: scapy's automotive ECU
emulator (scapy.contrib.automotive.ecu.EcuAnsweringMachine — its UDS codec and its session
and security-level state machine) behind a small DoIP front.

    python scapy_ecu.py PLAN.json

PLAN.json: {"listen": "127.0.0.1", "port_file": PATH, "logical_address": 16, "secret": HEX,
"image_out": PATH, "report": PATH}. The script listens on a free TCP port and writes it to
port_file. scapy's machine answers the standard services from its own state: programming
session (0x10 02), SecurityAccess (seed, and a key checked with Rampart's documented
function, HMAC-SHA256 under the shared secret, as scapy's custom `answers` hook allows),
erase and verify routines, RequestDownload, TransferData (any counter it has a response for
only in order), RequestTransferExit, ECUReset — each only in the session and security level
scapy's EcuState says. The front does DoIP (routing activation, acknowledgements), keeps the
TransferData bytes, and answers Rampart's vendor DIDs (0xF189 software name after the reset,
0xF1A0 length and hashes of what it received, 0xF1A2 an empty log), which scapy cannot
compute. At ECUReset the received image is written to image_out and a JSON report of the
services scapy answered to `report`.
"""

import hashlib
import hmac
import json
import os
import socket
import struct
import sys

from scapy.all import conf, Raw

conf.contribs["UDS"] = {"treat-response-pending-as-answer": False}
import scapy.contrib.automotive.uds_ecu_states  # noqa: E402,F401  (how UDS responses change EcuState)
from scapy.contrib.automotive.ecu import EcuAnsweringMachine, EcuResponse, EcuState  # noqa: E402
from scapy.contrib.automotive.uds import (  # noqa: E402
    UDS,
    UDS_DSCPR,
    UDS_ERPR,
    UDS_RCPR,
    UDS_RDPR,
    UDS_RTEPR,
    UDS_SAPR,
    UDS_TDPR,
)

plan = json.load(open(sys.argv[1]))
secret = bytes.fromhex(plan["secret"])
seed = os.urandom(16)
key = hmac.new(secret, b"rampart-uds-security-access-v1" + b"\x01" + seed, hashlib.sha256).digest()[:16]
programming = EcuState(session=2)
unlocked = EcuState(session=2, security_level=2)


def is_key(resp, req):
    return bytes(req)[:2] == b"\x27\x02" and bytes(req)[2:] == key


def in_download(matches):
    return lambda resp, req: hasattr(machine.state, "req_download") and matches(req)


def is_routine(rid):
    # In scapy's state: programming session, unlocked (a finished download leaves its mark,
    # so the state is read field by field rather than compared whole).
    return lambda resp, req: (
        getattr(machine.state, "session", None) == 2
        and getattr(machine.state, "security_level", None) == 2
        and bytes(req)[:4] == b"\x31\x01" + rid.to_bytes(2, "big")
    )


responses = [
    EcuResponse(None, UDS() / UDS_DSCPR(diagnosticSessionType=2, sessionParameterRecord=b"\x00\x32\x01\xf4")),
    EcuResponse(None, UDS() / UDS_DSCPR(diagnosticSessionType=1, sessionParameterRecord=b"\x00\x32\x01\xf4")),
    EcuResponse(programming, UDS() / UDS_SAPR(securityAccessType=1, securitySeed=seed)),
    EcuResponse(programming, UDS() / UDS_SAPR(securityAccessType=2), answers=is_key),
    EcuResponse(None, UDS() / UDS_RCPR(routineControlType=1, routineIdentifier=0xFF00) / Raw(b"\x00"), answers=is_routine(0xFF00)),
    EcuResponse(None, UDS() / UDS_RCPR(routineControlType=1, routineIdentifier=0xFF01) / Raw(b"\x00"), answers=is_routine(0xFF01)),
    EcuResponse(unlocked, UDS() / UDS_RDPR(memorySizeLen=2, maxNumberOfBlockLength=b"\x10\x02")),
    # After RequestDownload scapy's EcuState carries `req_download`: transfers and the exit
    # are answered only then (scapy's own model of the download sequence).
    EcuResponse(None, UDS() / UDS_RTEPR(), answers=in_download(lambda req: bytes(req)[:1] == b"\x37")),
    EcuResponse(None, UDS() / UDS_ERPR(resetType=1)),
] + [
    EcuResponse(None, UDS() / UDS_TDPR(blockSequenceCounter=n), answers=in_download(lambda req, n=n: bytes(req)[:2] == bytes([0x36, n])))
    for n in range(256)
]
machine = EcuAnsweringMachine(supported_responses=responses, basecls=UDS)

me = plan["logical_address"]
image = bytearray()
flashed = None
answered = []


def doip(payload_type, payload):
    return struct.pack("!BBHI", 2, 0xFD, payload_type, len(payload)) + payload


def diag(tester, data):
    return doip(0x8001, struct.pack("!HH", me, tester) + data)


def vendor_did(req):
    """Rampart's DIDs, from what this ECU received (scapy cannot compute them)."""
    did = req[1:3]
    if req[:1] != b"\x22" or did not in (b"\xf1\x89", b"\xf1\xa0", b"\xf1\xa2"):
        return None
    if did == b"\xf1\x89":
        value = (flashed or "factory").encode()
    elif did == b"\xf1\xa0":
        data = bytes(image) if flashed else b""
        value = struct.pack("!QQ", len(data), 0) + hashlib.sha256(data).digest() + hashlib.sha512(data).digest()
    else:
        value = struct.pack("!Q", 0)
    return b"\x62" + did + value


def recv_exact(conn, n):
    out = b""
    while len(out) < n:
        chunk = conn.recv(n - len(out))
        if not chunk:
            raise EOFError
        out += chunk
    return out


def serve(conn):
    global flashed
    while True:
        head = recv_exact(conn, 8)
        _, _, payload_type, length = struct.unpack("!BBHI", head)
        payload = recv_exact(conn, length)
        if payload_type == 0x0005:
            tester = struct.unpack("!H", payload[:2])[0]
            conn.sendall(doip(0x0006, struct.pack("!HHB", tester, me, 0x10) + b"\0" * 4))
            continue
        if payload_type != 0x8001:
            continue
        tester = struct.unpack("!H", payload[:2])[0]
        req = payload[4:]
        conn.sendall(doip(0x8002, struct.pack("!HHB", me, tester, 0)))
        answer = vendor_did(req)
        if answer is not None:
            conn.sendall(diag(tester, answer))
            continue
        replies = machine.make_reply(UDS(req))
        for r in replies:
            conn.sendall(diag(tester, bytes(r)))
        ok = bytes(replies[-1])[:1] != b"\x7f"
        answered.append({"request": req[:4].hex(), "ok": ok})
        if ok and req[:1] == b"\x31" and req[2:4] == b"\xff\x00":
            image.clear()
        if ok and req[:1] == b"\x36":
            image.extend(req[2:])
        if ok and req[:1] == b"\x31" and req[2:4] == b"\xff\x01":
            flashed = "pending"
            doc = json.loads(req[4:])
            flashed = next(iter(doc["signed"]["targets"]))
        if ok and req[:1] == b"\x11":
            machine.reset_state()
            open(plan["image_out"], "wb").write(bytes(image))
            json.dump({"answered": answered, "flashed": flashed, "bytes": len(image)}, open(plan["report"], "w"))
            return


def main():
    server = socket.socket()
    server.bind((plan["listen"], 0))
    server.listen(4)
    with open(plan["port_file"] + ".tmp", "w") as f:
        f.write(str(server.getsockname()[1]))
    os.rename(plan["port_file"] + ".tmp", plan["port_file"])
    while True:
        conn, _ = server.accept()
        try:
            serve(conn)
        except (EOFError, ConnectionError):
            pass
        finally:
            conn.close()


if __name__ == "__main__":
    main()
