"""Drives `rampart uds-ecu` with tools Rampart did not write: udsoncan (ISO 14229 client)
over doipclient (ISO 13400 transport).

    python udsoncan_flash.py PLAN.json

PLAN.json names the ECU (ip, logical_address, vin, ecu_id), the security-access secret
(hex), the image to flash and its target name, a tampered copy, and the director's signed
targets metadata for the image. The script discovers the entity over UDP, reads its DIDs,
checks the negative responses a bootloader owes (no download without security access, a
wrong key, a wrong block sequence counter, a block longer than maxNumberOfBlockLength, a
tampered image refused by the verify routine), flashes the image, resets the ECU and reads
the new software version back. Each step prints one JSON line; any deviation exits 1 with
the step that failed.
"""

import hashlib
import hmac
import json
import sys
import time

import udsoncan
from doipclient import DoIPClient
from doipclient.connectors import DoIPClientUDSConnector
from udsoncan import DataFormatIdentifier, MemoryLocation
from udsoncan.client import Client
from udsoncan.exceptions import NegativeResponseException

TESTER = 0x0E00
ERASE = 0xFF00
CHECK_DEPENDENCIES = 0xFF01


class Text(udsoncan.DidCodec):
    """A variable-length ASCII DID (the rest of the response)."""

    def encode(self, value):
        return value.encode("ascii")

    def decode(self, payload):
        return bytes(payload).decode("ascii")

    def __len__(self):
        raise udsoncan.DidCodec.ReadAllRemainingData


def step(name, **fields):
    print(json.dumps({"step": name, **fields}), flush=True)


def fail(name, why):
    step(name, ok=False, error=why)
    sys.exit(1)


def expect_nrc(name, code, call):
    try:
        call()
    except NegativeResponseException as e:
        if e.response.code != code:
            fail(name, f"NRC 0x{e.response.code:02X}, expected 0x{code:02X}")
        step(name, ok=True, nrc=f"0x{code:02X}", meaning=e.response.code_name)
        return
    fail(name, f"a positive response, expected NRC 0x{code:02X}")


def connect(plan):
    doip = DoIPClient(
        plan["ip"],
        plan["logical_address"],
        client_logical_address=TESTER,
    )
    conn = DoIPClientUDSConnector(doip, close_connection=True)
    config = dict(udsoncan.configs.default_client_config)
    config["data_identifiers"] = {
        0xF180: Text(),
        0xF189: Text(),
        0xF18C: Text(),
        0xF190: udsoncan.AsciiCodec(17),
    }
    config["request_timeout"] = 20
    config["p2_timeout"] = 2
    config["p2_star_timeout"] = 10
    config["exception_on_negative_response"] = True
    return Client(conn, config=config)


def key_for(secret, level, seed):
    mac = hmac.new(secret, b"rampart-uds-security-access-v1" + bytes([level]) + seed, hashlib.sha256)
    return mac.digest()[:16]


def download(client, image, block):
    for i in range(0, len(image), block):
        counter = (i // block + 1) % 256
        client.transfer_data(counter, image[i : i + block])
    client.request_transfer_exit()


def main():
    plan = json.load(open(sys.argv[1]))
    secret = bytes.fromhex(plan["secret"])
    image = open(plan["image"], "rb").read()
    tampered = open(plan["tampered"], "rb").read()
    metadata = open(plan["metadata"], "rb").read()

    # Vehicle identification: a UDP request to the entity's address, port 13400.
    entity = DoIPClient.get_entity(ecu_ip_address=plan["ip"])
    announced = entity[1]
    if announced.vin != plan["vin"] or announced.logical_address != plan["logical_address"]:
        fail("vehicle identification", f"VIN {announced.vin}, address 0x{announced.logical_address:04X}")
    step("vehicle identification", ok=True, vin=announced.vin, logical_address=announced.logical_address)

    with connect(plan) as client:
        dids = {
            f"0x{d:04X}": client.read_data_by_identifier(d).service_data.values[d]
            for d in (0xF180, 0xF189, 0xF18C, 0xF190)
        }
        if dids["0xF190"] != plan["vin"] or dids["0xF18C"] != plan["ecu_id"]:
            fail("read DIDs", str(dids))
        step("read DIDs", ok=True, values=dids)
        before = dids["0xF189"]

        client.change_session(2)
        location = MemoryLocation(address=0, memorysize=len(image), address_format=32, memorysize_format=32)
        expect_nrc(
            "download without security access",
            0x33,
            lambda: client.request_download(location, dfi=DataFormatIdentifier(0, 0)),
        )

        seed = client.request_seed(1).service_data.seed
        expect_nrc("wrong key", 0x35, lambda: client.send_key(2, bytes(16)))

        seed = client.request_seed(1).service_data.seed
        client.send_key(2, key_for(secret, 1, seed))
        step("security access", ok=True, seed_len=len(seed))

        # A tampered image goes in, and the verify routine refuses it.
        client.start_routine(ERASE)
        answer = client.request_download(location, dfi=DataFormatIdentifier(0, 0))
        max_length = answer.service_data.max_length
        block = max_length - 2
        expect_nrc("wrong block sequence counter", 0x73, lambda: client.transfer_data(2, tampered[:block]))
        expect_nrc(
            "block longer than maxNumberOfBlockLength",
            0x13,
            lambda: client.transfer_data(1, tampered[: block + 1] + b"\0"),
        )
        download(client, tampered, block)
        status = client.start_routine(CHECK_DEPENDENCIES, data=metadata).service_data.routine_status_record
        if status[:1] != b"\x01":
            fail("tampered image", f"verify routine status {status!r}")
        step("tampered image refused by the verify routine", ok=True, rule=status[1:].decode())

        # The signed image: erase, download, verify, reset.
        started = time.monotonic()
        client.start_routine(ERASE)
        client.request_download(location, dfi=DataFormatIdentifier(0, 0))
        download(client, image, block)
        status = client.start_routine(CHECK_DEPENDENCIES, data=metadata).service_data.routine_status_record
        if status != b"\x00":
            fail("verify routine", f"status {status!r}")
        seconds = time.monotonic() - started
        step("flashed and verified", ok=True, bytes=len(image), max_length=max_length, seconds=round(seconds, 3))
        client.ecu_reset(1)
        step("reset", ok=True)

    # The ECU rebooted and closed the socket: a new connection reads the new version.
    for _ in range(50):
        try:
            client = connect(plan)
            break
        except (ConnectionError, OSError):
            time.sleep(0.1)
    with client:
        after = client.read_data_by_identifier(0xF189).service_data.values[0xF189]
    if after != plan["target"]:
        fail("read back", f"0xF189 is {after!r}, expected {plan['target']!r}")
    step("read back", ok=True, before=before, after=after)


if __name__ == "__main__":
    main()
