"""A pymodbus SCADA client against the Warden gateway facade (interop test).

Usage: facade_client.py PORT DEAD_UNIT LIVE_UNIT STRING_ADDRESS STRING_REGISTERS
Prints one JSON line: the dead unit's exception code and how long it took, and the
live unit's string point as pymodbus decodes it.
"""

import json
import sys
import time

from pymodbus.client import ModbusTcpClient


def main() -> None:
    port, dead, live, address, count = (int(a) for a in sys.argv[1:6])
    # pymodbus's own default timeout is 3 s and it retries: a facade that waits behind
    # the poller makes it give up and later mismatch transaction IDs.
    client = ModbusTcpClient("127.0.0.1", port=port, timeout=15, retries=0)
    if not client.connect():
        sys.exit("cannot connect to the facade")
    asked = time.monotonic()
    dead_answer = client.read_holding_registers(0, count=1, device_id=dead)
    took_ms = (time.monotonic() - asked) * 1000
    live_answer = client.read_holding_registers(address, count=count, device_id=live)
    text = client.convert_from_registers(
        live_answer.registers, data_type=client.DATATYPE.STRING
    )
    client.close()
    print(
        json.dumps(
            {
                "dead_is_error": dead_answer.isError(),
                "dead_exception": getattr(dead_answer, "exception_code", None),
                "dead_ms": took_ms,
                "string": text.rstrip("\x00 "),
            }
        )
    )


if __name__ == "__main__":
    main()
