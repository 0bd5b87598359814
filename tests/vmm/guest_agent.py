"""The VMM tests' guest program (PID 1 of the test guest, next to a copy of kiln/vmm/mux.py).

It serves vsock port 5000: each line ``echo TEXT``, ``mmds PATH`` or ``host PORT TEXT`` (open a
connection to the host's port, send TEXT, relay the line it answers) gets one line back.
Ctrl-Alt-Del (SIGINT to PID 1) reboots, which ends the VM.
"""

import asyncio
import os
import signal

import mux  # type: ignore[import-not-found]

PORT = 5000


async def main() -> None:
    channel = await mux.open_guest_channel()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while line := await reader.readline():
            command, _, argument = line.decode().strip().partition(" ")
            try:
                if command == "echo":
                    reply = argument
                elif command == "mmds":
                    reply = (await mux.mmds_get(channel, argument)).replace("\n", "|")
                elif command == "host":
                    port, _, text = argument.partition(" ")
                    host_reader, host_writer = await channel.connect(int(port))
                    host_writer.write(text.encode() + b"\n")
                    reply = (await host_reader.readline()).decode().strip()
                    host_writer.close()
                else:
                    reply = f"unknown command {command}"
            except OSError as exc:
                reply = f"error {type(exc).__name__}: {exc}"
            writer.write(reply.encode() + b"\n")
            await writer.drain()

    channel.listen(PORT, handle)
    loop = asyncio.get_running_loop()

    def ctrl_alt_del() -> None:
        print("KILN_GUEST_CAD", flush=True)
        os.execv("/bin/reboot", ["reboot", "-f"])

    loop.add_signal_handler(signal.SIGINT, ctrl_alt_del)
    print("KILN_GUEST_READY", flush=True)
    await asyncio.Event().wait()


asyncio.run(main())
