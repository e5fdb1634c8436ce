"""Runs a command on a pseudo-terminal, answers its "(not shown)" prompt with the line given
in $PTY_ANSWER, and prints everything the terminal showed (for the `cjm secret set` test).
Bounded: gives up after 20 s."""
import os, pty, sys, select, time
argv = sys.argv[1:]
pid, fd = pty.fork()
if pid == 0:
    os.execv(argv[0], argv)
out = b""
deadline = time.time() + 20
sent = False
while time.time() < deadline:
    r, _, _ = select.select([fd], [], [], 0.5)
    if r:
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
        if not sent and b"not shown" in out:
            os.write(fd, os.environ["PTY_ANSWER"].encode() + b"\n")
            sent = True
if time.time() >= deadline:
    # Past the deadline and still running: end it rather than hang the test.
    os.kill(pid, 9)
_, status = os.waitpid(pid, 0)
sys.stdout.write(out.decode(errors="replace"))
sys.exit(os.waitstatus_to_exitcode(status))
