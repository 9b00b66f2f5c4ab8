#!/usr/bin/env python3
"""An emulated BLE environmental sensor (a Bumble GATT peripheral) for Warden's tests.

It attaches to one of the virtual controllers of
`python -m bumble.apps.controllers tcp-server:127.0.0.1:A tcp-server:127.0.0.1:B`
(HCI over TCP, `--hci tcp-client:127.0.0.1:B`), advertises under a static random
address and a complete local name, and serves:

* Environmental Sensing (0x181A)
  * Temperature (0x2A6E): sint16 little endian, 0.01 degC, read + notify. Scripted:
    starts at `--temperature` and rises by `--step` at every notification period.
  * Humidity (0x2A6F): uint16 little endian, 0.01 %, read only, constant.
  * Pressure (0x2A6D): uint32 little endian, 0.1 Pa, read + indicate. Scripted: starts
    at `--pressure` and rises by 1 hPa per period; the next indication waits for the
    central's confirmation.
* Warden test service (SETPOINT_SERVICE)
  * Setpoint (SETPOINT_CHAR): uint16 little endian, read + write. Every write is logged.

Events go to stdout, one JSON object per line, flushed at once, so a test can follow
them: `ready`, `connected`, `disconnected`, `notified`, `indicated`, `write`.

On SIGTERM or SIGINT the sensor disconnects its central and stops advertising before it
exits: the sensor "goes away" the way a powered-off device does for the central (the
link drops), without leaving a half-open link in the shared virtual controller.
"""

import argparse
import asyncio
import json
import signal
import struct
import sys

from bumble import hci
from bumble.core import AdvertisingData
from bumble.device import Device
from bumble.gatt import Characteristic, CharacteristicValue, Service
from bumble.transport import open_transport

ENVIRONMENTAL_SENSING = "181A"
TEMPERATURE = "2A6E"
HUMIDITY = "2A6F"
PRESSURE = "2A6D"
SETPOINT_SERVICE = "5741524E-0000-4000-8000-00805F9B34FB"
SETPOINT_CHAR = "5741524E-0001-4000-8000-00805F9B34FB"


def emit(event: str, **fields) -> None:
    """Writes one event line to stdout."""
    print(json.dumps({"event": event, **fields}), flush=True)


async def run(args: argparse.Namespace) -> None:
    transport = await open_transport(args.hci)
    device = Device.with_hci(
        args.name, hci.Address(args.address), transport.source, transport.sink
    )

    state = {
        "temperature": round(args.temperature * 100),
        "pressure": round(args.pressure * 10),
        "setpoint": args.setpoint,
    }

    def read_temperature(_connection):
        return struct.pack("<h", state["temperature"])

    def read_pressure(_connection):
        return struct.pack("<I", state["pressure"])

    def read_setpoint(_connection):
        return struct.pack("<H", state["setpoint"])

    def write_setpoint(_connection, value: bytes):
        emit("write", characteristic=SETPOINT_CHAR, value=value.hex())
        if len(value) == 2:
            state["setpoint"] = struct.unpack("<H", value)[0]

    temperature = Characteristic(
        TEMPERATURE,
        Characteristic.Properties.READ | Characteristic.Properties.NOTIFY,
        Characteristic.READABLE,
        CharacteristicValue(read=read_temperature),
    )
    humidity = Characteristic(
        HUMIDITY,
        Characteristic.Properties.READ,
        Characteristic.READABLE,
        struct.pack("<H", round(args.humidity * 100)),
    )
    pressure = Characteristic(
        PRESSURE,
        Characteristic.Properties.READ | Characteristic.Properties.INDICATE,
        Characteristic.READABLE,
        CharacteristicValue(read=read_pressure),
    )
    setpoint = Characteristic(
        SETPOINT_CHAR,
        Characteristic.Properties.READ | Characteristic.Properties.WRITE,
        Characteristic.READABLE | Characteristic.WRITEABLE,
        CharacteristicValue(read=read_setpoint, write=write_setpoint),
    )
    device.add_services(
        [
            Service(ENVIRONMENTAL_SENSING, [temperature, humidity, pressure]),
            Service(SETPOINT_SERVICE, [setpoint]),
        ]
    )

    connections = []

    def on_connection(connection):
        connections.append(connection)
        emit("connected", peer=str(connection.peer_address))

        def on_disconnection(reason):
            if connection in connections:
                connections.remove(connection)
            emit("disconnected", reason=reason)

        connection.on("disconnection", on_disconnection)

    device.on("connection", on_connection)

    await device.power_on()
    advertising_data = bytes(
        AdvertisingData(
            [
                (AdvertisingData.FLAGS, bytes([0x06])),
                (AdvertisingData.COMPLETE_LOCAL_NAME, args.name.encode()),
            ]
        )
    )
    await device.start_advertising(
        own_address_type=hci.OwnAddressType.RANDOM,
        advertising_data=advertising_data,
        auto_restart=True,
        advertising_interval_min=20,
        advertising_interval_max=20,
    )
    emit("ready", address=args.address, name=args.name)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    async def notify_forever():
        while True:
            await asyncio.sleep(args.period)
            state["temperature"] += round(args.step * 100)
            value = struct.pack("<h", state["temperature"])
            if connections:
                await device.notify_subscribers(temperature, value)
                emit("notified", value=state["temperature"])

    async def indicate_forever():
        while True:
            await asyncio.sleep(args.period)
            state["pressure"] += 1000
            if connections:
                # Returns once the central confirmed (or times out).
                await device.indicate_subscribers(pressure, struct.pack("<I", state["pressure"]))
                emit("indicated", value=state["pressure"])

    notifier = asyncio.create_task(notify_forever())
    indicator = asyncio.create_task(indicate_forever())
    await stop.wait()
    notifier.cancel()
    indicator.cancel()
    device.auto_restart_advertising = False
    await device.stop_advertising()
    for connection in list(connections):
        try:
            await connection.disconnect(hci.HCI_REMOTE_DEVICE_TERMINATED_CONNECTION_DUE_TO_POWER_OFF_ERROR)
        except Exception as error:  # noqa: BLE001 - best effort on the way out
            emit("disconnect_failed", error=str(error))
    emit("stopped")
    await transport.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hci", required=True, help="Bumble transport, e.g. tcp-client:127.0.0.1:9001")
    parser.add_argument("--address", default="F0:F1:F2:F3:F4:F5", help="static random address")
    parser.add_argument("--name", default="warden-sensor", help="complete local name")
    parser.add_argument("--temperature", type=float, default=21.5, help="first temperature, degC")
    parser.add_argument("--step", type=float, default=0.01, help="rise per period, degC")
    parser.add_argument("--period", type=float, default=0.2, help="notification period, s")
    parser.add_argument("--pressure", type=float, default=101325.0, help="first pressure, Pa")
    parser.add_argument("--humidity", type=float, default=45.5, help="constant humidity, %%")
    parser.add_argument("--setpoint", type=int, default=100, help="initial raw setpoint")
    args = parser.parse_args()
    try:
        asyncio.run(run(args))
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
