"""A memory hog for the systemd guest: fills memory from user space (bytearray's
memset, 8 MiB at a time) until it is stopped. (An OOM kill inside a kernel copy,
as with `dd if=/dev/zero`, can panic the UML 6.1 kernel.)"""

chunks = []
while True:
    chunks.append(bytearray(8 << 20))
