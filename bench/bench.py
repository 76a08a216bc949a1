#!/usr/bin/env python3
"""cachet end-to-end benchmark (issue 6). Run it through bench/run.sh; stdlib only, Python >= 3.11.

Topologies, all with the same load (smtp-source, --sessions sessions, N messages, each size and
recipient count) and the same final hop (dumping every transaction to tmpfs so every recipient is
counted and cachet's output can be checked):

  1 direct   smtp-source -> sink
  2 postfix  smtp-source -> Postfix relay (fsync'd queue) -> upstream
  3 diy      smtp-source -> Postfix, pipe content_filter (openssl cms -sign | openssl cms -encrypt
             -aes256, reinjected over SMTP into a second smtpd) -> sink
  4 cachet   smtp-source -> cachet (RSA-2048 signing, AES-256-CBC to RSA-2048 recipients, fsync'd
             spool) -> upstream
  5 postfix-reuse  as 2, with smtp_tls_connection_reuse = yes (tlsproxy: one TLS handshake per
             upstream connection, many messages per connection): Postfix relaying at its best

"upstream" requires STARTTLS (test certificate) and is the final hop, so the arrival time is the
delivery time. --sink light (default): bench/sink.rs (`cachet-bench-sink`, built beside cachet)
serves both the plain sink port and the STARTTLS upstream port on one thread. --sink postfix: the
upstream is a private Postfix smtpd that hands every message before-queue (smtpd_proxy_filter) to
Postfix's smtp-sink; that pair costs more CPU per message than cachet itself on the same cores
(docs/performance.md, "A lighter final hop"), so its end-to-end rates measure the harness.

Measured: msgs/s counted at the sink (a message counts when all its recipients arrived), CPU-ms per
message for the whole box (/proc/stat deltas; also net of the background load sampled just
before each run, because other builds share the box), each gateway's OWN CPU per message (cachet's
process; a Postfix instance's master and every process under it, reaped children included: this
does not depend on how busy the load generator and the sink are), cachet's ratios to 2, 5 and 3,
its own CPU per message against Postfix's relaying alone (5), the 3-recipient (2 Bcc) rate against
the 1-recipient rate, latency from
250 to delivery at half of cachet's peak rate, cachet's peak RSS (VmHWM) under --rss-sessions
concurrent sessions each sending one --rss-size message, and cachet on 2 cores vs pinned to one
(taskset -c 0). Every message cachet relayed is decrypted and verified with openssl cms when the
S/MIME stage is active (--smime auto detects it with one probe message; require makes it
mandatory; off measures relay-only).

Every private instance lives in a temp dir (Postfix: `postfix -c DIR start`, its own queue and data
directory, ports on 127.0.0.1); all of it is stopped and removed on exit, including on errors and
signals. Loops are bounded: every wait has a deadline and a stall timeout.
"""

from __future__ import annotations

import argparse
import atexit
import concurrent.futures
import json
import os
import re
import shutil
import signal
import smtplib
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SBIN = Path("/usr/sbin")
SENDER = "snd@bench.test"
RCPT_BASE = "rcpt@bench.test"  # smtp-source -r 3 sends to rcpt@, 2rcpt@, 3rcpt@
RECIPIENTS = ["rcpt@bench.test", "2rcpt@bench.test", "3rcpt@bench.test"]
TOPOLOGIES = {1: "direct", 2: "postfix", 3: "diy", 4: "cachet", 5: "postfix-reuse"}
TOPO_LABEL = {
    1: "1 source->sink",
    2: "2 postfix TLS relay",
    3: "3 postfix+openssl",
    4: "4 cachet",
    5: "5 postfix TLS reuse",
}


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class BenchError(Exception):
    pass


def run(cmd, *, timeout=60, check=True, input=None, env=None, quiet=False):
    """A bounded subprocess call; output captured (shown on failure)."""
    cmd = [str(c) for c in cmd]
    try:
        p = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        raise BenchError(f"timed out after {timeout}s: {' '.join(cmd)}")
    if check and p.returncode != 0:
        raise BenchError(f"failed ({p.returncode}): {' '.join(cmd)}\n{p.stdout}{p.stderr}")
    if not quiet and p.stderr.strip() and p.returncode != 0:
        log(p.stderr.strip())
    return p


def free_ports(names) -> dict[str, int]:
    """A distinct free loopback port per name. Every socket stays bound until all are chosen:
    a port whose socket is closed at once may be handed out again by the next bind."""
    held = []
    try:
        for _ in names:
            s = socket.socket()
            held.append(s)
            s.bind(("127.0.0.1", 0))
        return {n: s.getsockname()[1] for n, s in zip(names, held)}
    finally:
        for s in held:
            s.close()


def wait_port(port: int, timeout: float = 20, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.settimeout(2)
                if s.recv(64).startswith(b"220"):
                    s.sendall(b"QUIT\r\n")
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise BenchError(f"{what or 'service'} did not answer on 127.0.0.1:{port} within {timeout}s")


def cpu_busy_ms() -> float:
    """Busy CPU time of the whole box since boot, in ms (user+nice+system+irq+softirq+steal)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    busy = fields[0] + fields[1] + fields[2] + fields[5] + fields[6] + (fields[7] if len(fields) > 7 else 0)
    return busy * 1000.0 / os.sysconf("SC_CLK_TCK")


def proc_cpu_ms(pid: int, children: bool) -> float:
    """utime + stime of one process (+ cutime + cstime: its reaped children), in ms; 0 if gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = int(fields[11]) + int(fields[12])
    if children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks * 1000.0 / os.sysconf("SC_CLK_TCK")


def tree_cpu_ms(root: int) -> float:
    """CPU of a process tree: every live process under `root` and `root` itself, each with the
    children it has reaped (a Postfix master reaps its smtpd/smtp/cleanup/qmgr processes, pipe(8)
    reaps the filter it ran). A process that exits between two samples moves its time into its
    parent's reaped counters, so the difference of two samples is the work done in between."""
    parent: dict[int, int] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                parent[int(d)] = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
    tree, frontier = {root}, [root]
    while frontier:
        p = frontier.pop()
        for c, pp in parent.items():
            if pp == p and c not in tree:
                tree.add(c)
                frontier.append(c)
    return sum(proc_cpu_ms(p, children=True) for p in tree)


def background_rate(seconds: float) -> float:
    """Busy CPU-ms per second of the box while nothing of ours runs (other engineers' builds)."""
    a = cpu_busy_ms()
    time.sleep(seconds)
    return (cpu_busy_ms() - a) / seconds


# --------------------------------------------------------------------------------------------
# Cleanup registry: every process and directory we create is registered here and undone on exit.

_cleanups: list = []


def on_exit(fn) -> None:
    _cleanups.append(fn)


def _cleanup_all() -> None:
    while _cleanups:
        fn = _cleanups.pop()
        try:
            fn()
        except Exception as e:  # keep cleaning up
            log(f"cleanup: {e}")


def _on_signal(signum, _frame):
    raise SystemExit(128 + signum)


def kill_proc(p: subprocess.Popen, grace: float = 5) -> None:
    """Stop one process we started (its own session/process group), TERM then KILL."""
    if p.poll() is not None:
        return
    try:
        os.killpg(p.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        p.wait(grace)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.wait(5)


# --------------------------------------------------------------------------------------------
# Postfix installation


def postfix_present() -> bool:
    return all(os.access(SBIN / b, os.X_OK) for b in ("postfix", "smtp-source", "smtp-sink", "postsuper"))


def ensure_postfix(allow_install: bool) -> str | None:
    """None when Postfix is usable, else the reason it is not."""
    if postfix_present():
        return None
    if not allow_install:
        return "postfix is not installed and --no-install was given"
    if not shutil.which("apt-get") or not shutil.which("debconf-set-selections"):
        return "postfix is not installed and this machine has no apt-get"
    if os.geteuid() != 0:
        return "postfix is not installed and installing it needs root"
    log("installing postfix from Debian (No configuration; the system instance stays unconfigured)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    try:
        run(["debconf-set-selections"], input="postfix postfix/main_mailer_type select No configuration\n")
        run(["apt-get", "-o", "DPkg::Lock::Timeout=300", "update", "-qq"], timeout=600, env=env)
        run(["apt-get", "-o", "DPkg::Lock::Timeout=300", "install", "-y", "-qq", "--no-install-recommends",
             "postfix"], timeout=900, env=env)
    except BenchError as e:
        return f"apt-get install postfix failed: {e}"
    return None if postfix_present() else "postfix installed but smtp-source/smtp-sink are missing"


# --------------------------------------------------------------------------------------------
# Test PKI, generated at run time with openssl; never stored anywhere but the temp dir.


def make_pki(d: Path) -> dict:
    d.mkdir(parents=True)
    os.chmod(d, 0o755)
    ossl = shutil.which("openssl") or "openssl"

    def leaf(name: str, subj: str, ext: str) -> tuple[Path, Path]:
        key, csr, crt, extf = d / f"{name}.key", d / f"{name}.csr", d / f"{name}.crt", d / f"{name}.ext"
        extf.write_text(ext + "\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n")
        run([ossl, "req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr, "-subj", subj])
        run([ossl, "x509", "-req", "-in", csr, "-CA", d / "ca.pem", "-CAkey", d / "ca.key", "-CAcreateserial",
             "-days", "3", "-sha256", "-extfile", extf, "-out", crt])
        os.chmod(key, 0o600)
        return key, crt

    run([ossl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", d / "ca.key", "-out", d / "ca.pem",
         "-days", "3", "-sha256", "-subj", "/O=cachet bench/CN=cachet bench CA",
         "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,keyCertSign,cRLSign"])
    os.chmod(d / "ca.key", 0o600)
    pki = {"dir": d, "ca": d / "ca.pem"}
    pki["server"] = leaf("server", "/O=cachet bench/CN=127.0.0.1",
                         "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
                         "extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost")
    pki["signer"] = leaf("signer", f"/O=cachet bench/CN={SENDER}",
                         "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,nonRepudiation\n"
                         f"extendedKeyUsage=emailProtection\nsubjectAltName=email:{SENDER}")
    pki["rcpt"] = {}
    for i, addr in enumerate(RECIPIENTS):
        pki["rcpt"][addr] = leaf(f"rcpt{i + 1}", f"/O=cachet bench/CN={addr}",
                                 "basicConstraints=CA:FALSE\nkeyUsage=critical,keyEncipherment,digitalSignature\n"
                                 f"extendedKeyUsage=emailProtection\nsubjectAltName=email:{addr}")
    return pki


# --------------------------------------------------------------------------------------------
# The final sink: smtp-sink dumping each transaction to tmpfs, with a running counter.


class Sink:
    def __init__(self, base: Path, port: int):
        self.base, self.port = base, port
        self.proc: subprocess.Popen | None = None
        self.gen = 0
        self.dump: Path | None = None
        self.counter: Path | None = None
        self._parsed: dict[str, dict] = {}

    def restart(self) -> None:
        self.stop()
        self.gen += 1
        self.dump = self.base / f"dump{self.gen}"
        self.dump.mkdir()
        os.chmod(self.dump, 0o777)  # smtp-sink runs as nobody
        self.counter = self.base / f"count{self.gen}.txt"
        self._parsed = {}
        out = open(self.counter, "w")
        # -c: running counters (mesg=N counts completed transactions); -d: one file per transaction
        self.proc = subprocess.Popen(
            [SBIN / "smtp-sink", "-c", "-u", "nobody", "-m", "1024", "-t", "300",
             "-d", f"{self.dump}/%H%M%S.", f"127.0.0.1:{self.port}", "1024"],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        out.close()
        wait_port(self.port, what="smtp-sink")

    def stop(self) -> None:
        if self.proc:
            kill_proc(self.proc)
            self.proc = None
        if self.dump and self.dump.exists():
            shutil.rmtree(self.dump, ignore_errors=True)
        if self.counter and self.counter.exists():
            self.counter.unlink()

    def completed(self) -> int:
        try:
            with open(self.counter, "rb") as f:
                f.seek(0, 2)
                f.seek(max(0, f.tell() - 200))
                tail = f.read().decode("ascii", "replace")
        except OSError:
            return 0
        m = re.findall(r"mesg=(\d+)", tail)
        return int(m[-1]) if m else 0

    def _parse(self, name: str) -> dict:
        info = self._parsed.get(name)
        if info is None:
            path = self.dump / name
            st = path.stat()
            with open(path, "rb") as f:
                head = f.read(8192).decode("latin-1")
            hdr = head.split("\n\n", 1)[0]
            mid = re.search(r"^Message-Id:\s*(\S+)", hdr, re.M | re.I)
            mail = re.search(r"^X-Mail-Args: <([^>]*)>", hdr, re.M)
            info = {
                "rcpts": re.findall(r"^X-Rcpt-Args: <([^>]*)>", hdr, re.M),
                "mail": mail.group(1) if mail else "",
                "mid": mid.group(1) if mid else None,
                "mtime": st.st_mtime_ns / 1e9,
                "smime": "application/pkcs7-mime" in hdr.lower() or "application/x-pkcs7-mime" in hdr.lower(),
            }
            self._parsed[name] = info
        return info

    def wait(self, expected_rcpts: int, timeout: float, stall: float) -> dict:
        """Waits until `expected_rcpts` recipients arrived in completed transactions."""
        start = time.monotonic()
        last_k, last_progress = -1, start
        while True:
            now = time.monotonic()
            k = self.completed()
            if k != last_k:
                last_k, last_progress = k, now
            if k > 0:
                names = os.listdir(self.dump)
                if len(names) == k:  # every dumped transaction is complete
                    total = sum(len(self._parse(n)["rcpts"]) for n in names)
                    if total >= expected_rcpts:
                        return self.collect(done=True)
            if now - start > timeout or now - last_progress > stall:
                return self.collect(done=False)
            time.sleep(0.05)

    def collect(self, done: bool) -> dict:
        names = os.listdir(self.dump)
        files = {}
        for n in names:
            try:
                files[n] = self._parse(n)
            except OSError:
                pass
        return {"done": done, "files": files}


class LightSink(Sink):
    """The default final hop (--sink light): bench/sink.rs (`cachet-bench-sink`) on both the sink
    port (plain SMTP: topologies 1 and 3) and the upstream port (STARTTLS required: 2, 4, 5), in
    place of the Postfix upstream smtpd + smtp-sink pair, whose CPU per message exceeded the
    gateway's on the shared cores. Same dump format and `mesg=N` counter as smtp-sink. It keeps
    running across measurements (the gateways keep their upstream connections): `restart` empties
    the dump directory and counts from the current total."""

    def __init__(self, base: Path, port: int, tls_port: int, binary: Path, cert: str, key: str):
        super().__init__(base, port)
        self.tls_port, self.binary, self.cert, self.key = tls_port, binary, cert, key
        self.dump = base / "dump"
        self.counter = base / "count.txt"
        self.base_count = 0

    def _total(self) -> int:
        return super().completed()

    def restart(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            self.dump.mkdir(exist_ok=True)
            self.counter.write_text("")
            with open(self.base / "sink.log", "ab") as err:
                self.proc = subprocess.Popen(
                    [self.binary, "--plain", f"127.0.0.1:{self.port}", "--tls", f"127.0.0.1:{self.tls_port}",
                     "--cert", self.cert, "--key", self.key, "--dump", self.dump, "--counter", self.counter],
                    stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
            wait_port(self.port, what="cachet-bench-sink")
            wait_port(self.tls_port, what="cachet-bench-sink (STARTTLS)")
        time.sleep(0.15)  # the counter file is written every 50 ms
        for n in os.listdir(self.dump):
            (self.dump / n).unlink(missing_ok=True)
        self._parsed = {}
        self.base_count = self._total()

    def completed(self) -> int:
        return self._total() - self.base_count

    def stop(self) -> None:
        if self.proc:
            kill_proc(self.proc)
            self.proc = None
        shutil.rmtree(self.dump, ignore_errors=True)
        self.counter.unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------
# Private Postfix instances


POSTFIX_SERVICES = """\
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
tlsproxy  unix  -       -       n       -       0       tlsproxy
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


class Postfix:
    def __init__(self, work: Path, name: str, main: dict, services: str):
        self.name = name
        self.dir = work / f"postfix-{name}"
        self.etc = self.dir / "etc"
        self.queue = self.dir / "queue"
        self.etc.mkdir(parents=True)
        self.queue.mkdir()  # postfix start creates its subdirectories (owned by postfix)
        os.chmod(self.dir, 0o755)
        os.chmod(self.queue, 0o755)
        conf = {
            "compatibility_level": "3.6",
            "queue_directory": self.queue,
            "data_directory": self.dir / "data",
            "command_directory": "/usr/sbin",
            "daemon_directory": "/usr/lib/postfix/sbin",
            "shlib_directory": "/usr/lib/postfix",
            "meta_directory": "/etc/postfix",
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            "myhostname": f"{name}.bench.test",
            "mydomain": "bench.test",
            "myorigin": "$myhostname",
            "inet_interfaces": "loopback-only",
            "inet_protocols": "ipv4",
            "mydestination": "",
            "local_recipient_maps": "",
            "local_transport": "error:5.1.1 local delivery is disabled",
            "alias_maps": "",
            "alias_database": "",
            "mynetworks": "127.0.0.0/8",
            "smtpd_relay_restrictions": "permit_mynetworks, reject",
            "smtpd_recipient_restrictions": "",
            "biff": "no",
            "maillog_file": self.dir / "maillog",
            "maillog_file_prefixes": self.dir,
            "message_size_limit": "536870912",
            "mailbox_size_limit": "0",
            "smtputf8_enable": "no",
            "default_process_limit": "300",
            "smtpd_client_connection_count_limit": "0",
        }
        conf.update(main)
        (self.etc / "main.cf").write_text(
            f"# private benchmark instance '{name}' (generated by bench/bench.py)\n"
            + "".join(f"{k} = {v}\n" for k, v in conf.items()))
        (self.etc / "master.cf").write_text(services + POSTFIX_SERVICES)
        self.started = False

    def start(self) -> None:
        p = run([SBIN / "postfix", "-c", self.etc, "start"], timeout=60, check=False)
        if p.returncode != 0:  # postfix prints its fatal errors only to a tty or syslog: show its log
            detail = (self.dir / "maillog").read_text(errors="replace")[-2000:] if (self.dir / "maillog").exists() else ""
            raise BenchError(f"postfix instance {self.name} did not start ({p.returncode}):\n"
                             f"{p.stdout}{p.stderr}{detail}\n(try: script -qc 'postfix -c {self.etc} check' /dev/null)")
        self.started = True
        on_exit(self.stop)

    def stop(self) -> None:
        if not self.started:
            return
        self.started = False
        run([SBIN / "postfix", "-c", self.etc, "stop"], timeout=30, check=False, quiet=True)
        pidfile = self.queue / "pid" / "master.pid"
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and pidfile.exists():
            time.sleep(0.1)
        if pidfile.exists():  # still running: abort (immediate stop) this instance only
            run([SBIN / "postfix", "-c", self.etc, "abort"], timeout=30, check=False, quiet=True)

    def cpu_ms(self) -> float | None:
        """The instance's own CPU so far: its master and every process under it, reaped children
        included (`tree_cpu_ms`)."""
        try:
            pid = int((self.queue / "pid" / "master.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        return tree_cpu_ms(pid)

    def flush_queue(self) -> None:
        run([SBIN / "postsuper", "-c", self.etc, "-d", "ALL"], timeout=60, check=False, quiet=True)


DIY_FILTER = r"""#!/bin/bash
# Peer 3: the do-it-yourself S/MIME gateway. Postfix pipe(8) content_filter, runs as nobody:
#   argv: sender recipient...   stdin: the message
# openssl cms -sign, then openssl cms -encrypt -aes256 to each recipient's certificate, then
# reinjection over SMTP into the instance's second smtpd (no content_filter there).
# Exit 75 (EX_TEMPFAIL) on any failure so Postfix retries instead of losing mail.
set -o pipefail
dir=@DIR@
port=@PORT@
sender=$1; shift
certs=()
for r in "$@"; do
  c="$dir/certs/${r,,}.pem"
  [ -r "$c" ] || { echo "no certificate for $r" >&2; exit 75; }
  certs+=("$c")
done
tmp=$(mktemp "$dir/tmp/msg.XXXXXX") || exit 75
trap 'rm -f "$tmp"' EXIT
openssl cms -sign -md sha256 -signer "$dir/signer.crt" -inkey "$dir/signer.key" \
  | openssl cms -encrypt -aes256 -from "$sender" -to "$*" -subject "S/MIME (diy)" "${certs[@]}" \
  > "$tmp" || exit 75
exec 3<>"/dev/tcp/127.0.0.1/$port" || exit 75
expect() {  # expect CODE: read one (multi-line) reply
  local line
  while IFS= read -r -t 60 -u 3 line; do
    line=${line%$'\r'}
    case $line in "$1 "*) return 0 ;; "$1-"*) continue ;; *) echo "reinject: $line" >&2; return 1 ;; esac
  done
  return 1
}
expect 220 || exit 75
printf 'EHLO diy-filter.bench.test\r\n' >&3; expect 250 || exit 75
printf 'MAIL FROM:<%s>\r\n' "$sender" >&3; expect 250 || exit 75
for r in "$@"; do printf 'RCPT TO:<%s>\r\n' "$r" >&3; expect 250 || exit 75; done
printf 'DATA\r\n' >&3; expect 354 || exit 75
sed -e 's/\r$//' -e 's/^\./../' -e 's/$/\r/' "$tmp" >&3 || exit 75
printf '.\r\n' >&3; expect 250 || exit 75
printf 'QUIT\r\n' >&3
exit 0
"""


# --------------------------------------------------------------------------------------------
# cachet


class Cachet:
    def __init__(self, binary: Path, work: Path, port: int, upstream_port: int, pki: dict):
        self.bin, self.port = binary, port
        self.dir = work / "cachet"
        self.dir.mkdir()
        keys, certs = self.dir / "keys", self.dir / "recipients"
        keys.mkdir(mode=0o700)
        certs.mkdir()
        skey, scrt = pki["signer"]
        kf = keys / f"{SENDER}.pem"
        kf.write_text(skey.read_text() + scrt.read_text())
        os.chmod(kf, 0o600)
        for addr, (_k, crt) in pki["rcpt"].items():
            shutil.copy(crt, certs / f"{addr}.pem")
        self.common = f"""\
[server]
listen = ["127.0.0.1:{port}"]
hostname = "cachet.bench.test"
relay_networks = ["127.0.0.0/8"]
local_domains = ["bench.test", "example.org", "example.com"]
max_message_size = "256MiB"
max_connections = 1000

[spool]
dir = "spool"

[upstream]
url = "smtp://127.0.0.1:{upstream_port}"
tls = "verify"
ca_file = "{pki['ca']}"

[admin]
listen = ""

[log]
level = "warn"
"""
        self.smime_extra = f"""
[keys]
dir = "keys"

[certificates]
dir = "recipients"
trust = ["{pki['ca']}"]

[policy]
sign = "required"
encrypt = "required"
encryption = "aes256-cbc"
key_transport = "rsa-pkcs1"
on_missing_key = "reject"
signature = "detached"
digest = "sha256"
"""
        self.relay_extra = '\n[policy]\nsign = "never"\nencrypt = "never"\n'
        self.smime = True
        self.proc: subprocess.Popen | None = None
        self.logf = self.dir / "cachet.log"
        on_exit(self.stop)

    def config(self) -> Path:
        cfg = self.dir / "cachet.toml"
        cfg.write_text(self.common + (self.smime_extra if self.smime else self.relay_extra))
        return cfg

    def start(self, pin: str | None = None, fresh_spool: bool = True) -> None:
        self.stop()
        if fresh_spool:
            shutil.rmtree(self.dir / "spool", ignore_errors=True)
        cfg = self.config()
        chk = run([self.bin, "check", "--config", cfg], timeout=60, check=False)
        if chk.returncode != 0:
            raise BenchError(f"cachet check failed:\n{chk.stdout}{chk.stderr}")
        cmd = [str(self.bin), "serve", "--config", str(cfg)]
        if pin is not None:
            cmd = ["taskset", "-c", pin] + cmd
        logf = open(self.logf, "a")
        self.proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
        logf.close()
        wait_port(self.port, what="cachet")

    def pid(self) -> int:
        """The cachet process itself (taskset execs it, so the pid is the same)."""
        return self.proc.pid

    def hwm_kb(self) -> int | None:
        try:
            for line in open(f"/proc/{self.pid()}/status"):
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
        except OSError:
            return None
        return None

    def cpu_ms(self) -> float | None:
        """cachet's own CPU time so far (all threads: utime + stime from /proc/PID/stat), in ms."""
        try:
            with open(f"/proc/{self.pid()}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) * 1000.0 / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError, AttributeError):
            return None

    def stop(self) -> None:
        if self.proc:
            kill_proc(self.proc, grace=10)
            self.proc = None

    def log_tail(self, n: int = 20) -> str:
        try:
            return "\n".join(self.logf.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


# --------------------------------------------------------------------------------------------
# Verification of cachet's output with openssl cms


def strip_dump_prefix(raw: bytes) -> bytes:
    """smtp-sink dump files start with X-Client-Addr/X-Helo-Args/X-Mail-Args/X-Rcpt-Args lines."""
    lines = raw.split(b"\n")
    i = 0
    while i < len(lines) and re.match(rb"^X-(Client-Addr|Client-Proto|Helo-Args|Mail-Args|Rcpt-Args|"
                                      rb"Xclient|Xforward)[A-Za-z-]*:", lines[i]):
        i += 1
    return b"\n".join(lines[i:])


def verify_one(path: Path, info: dict, pki: dict, scratch: Path, body_marker: bytes) -> str | None:
    """None when the copy decrypts with a recipient's key, verifies against the CA and carries the
    original body; else what is wrong."""
    rcpt = info["rcpts"][0].lower() if info["rcpts"] else None
    if rcpt not in pki["rcpt"]:
        return f"unexpected recipient {rcpt}"
    key, crt = pki["rcpt"][rcpt]
    msg = scratch / (path.name + ".eml")
    dec = scratch / (path.name + ".dec")
    out = scratch / (path.name + ".out")
    try:
        msg.write_bytes(strip_dump_prefix(path.read_bytes()))
        p = subprocess.run(["openssl", "cms", "-decrypt", "-in", msg, "-recip", crt, "-inkey", key, "-out", dec],
                           capture_output=True, timeout=60)
        if p.returncode != 0:
            return "decrypt failed: " + p.stderr.decode(errors="replace").strip()[:200]
        p = subprocess.run(["openssl", "cms", "-verify", "-in", dec, "-CAfile", pki["ca"], "-out", out],
                           capture_output=True, timeout=60)
        if p.returncode != 0:
            return "verify failed: " + p.stderr.decode(errors="replace").strip()[:200]
        if body_marker not in out.read_bytes():
            return "verified content lacks the original body"
        return None
    finally:
        for f in (msg, dec, out):
            f.unlink(missing_ok=True)


def verify_all(sink: Sink, files: dict, pki: dict, scratch: Path, smime: bool) -> dict:
    scratch.mkdir(exist_ok=True)
    failures: list[str] = []
    checked = 0
    if not smime:
        # relay-only build: still check that what arrived is the message that was sent
        for name in files:
            checked += 1
            if b"XXXXXXXXXX" not in (sink.dump / name).read_bytes():
                failures.append(f"{name}: body missing")
        return {"checked": checked, "failed": len(failures), "mode": "plain", "examples": failures[:3]}
    not_smime = [n for n, i in files.items() if not i["smime"]]
    for n in not_smime:
        failures.append(f"{n}: not an S/MIME message (plaintext relayed)")
    todo = [n for n in files if files[n]["smime"]]
    with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as ex:
        futs = {ex.submit(verify_one, sink.dump / n, files[n], pki, scratch, b"XXXXXXXXXX"): n for n in todo}
        for f in concurrent.futures.as_completed(futs):
            checked += 1
            err = f.result()
            if err:
                failures.append(f"{futs[f]}: {err}")
    return {"checked": checked + len(not_smime), "failed": len(failures), "mode": "openssl cms -decrypt/-verify",
            "examples": failures[:3]}


# --------------------------------------------------------------------------------------------
# The benchmark


class Bench:
    def __init__(self, args, work: Path, shm: Path, cachet_bin: Path | None):
        self.args, self.work, self.shm = args, work, shm
        self.errors: list[str] = []
        self.pki = make_pki(work / "pki")
        p = free_ports(("sink", "upstream", "relay", "reuse", "diy", "diy_reinject", "cachet"))
        self.ports = p
        srv_key, srv_crt = self.pki["server"]
        if args.sink == "light":
            # one process serves the sink port (plain) and the upstream port (STARTTLS required)
            self.sink = LightSink(shm, p["sink"], p["upstream"], resolve_sink(args.sink_bin, cachet_bin),
                                  srv_crt, srv_key)
        else:
            self.sink = Sink(shm, p["sink"])
        on_exit(self.sink.stop)
        # --sink postfix: the STARTTLS upstream requires TLS and proxies each message before-queue
        # to smtp-sink
        self.upstream = None if args.sink == "light" else Postfix(work, "upstream", {
            "smtpd_tls_security_level": "encrypt",
            "smtpd_tls_cert_file": srv_crt,
            "smtpd_tls_key_file": srv_key,
            "smtpd_tls_loglevel": "0",
            "smtpd_proxy_filter": f"127.0.0.1:{p['sink']}",
            "smtpd_proxy_timeout": "300s",
        }, f"127.0.0.1:{p['upstream']} inet n - n - - smtpd\n")
        # peer 2: Postfix relay (fsync'd queue) to the upstream over STARTTLS
        self.relay = Postfix(work, "relay", {
            "relayhost": f"[127.0.0.1]:{p['upstream']}",
            "smtp_tls_security_level": "encrypt",
            "smtp_tls_CAfile": self.pki["ca"],
            "smtp_tls_loglevel": "0",
        }, f"127.0.0.1:{p['relay']} inet n - n - - smtpd\n")
        # peer 5: the same relay with TLS connection reuse (tlsproxy keeps the upstream sessions:
        # one handshake per connection, many messages per connection), Postfix at its best
        self.reuse = Postfix(work, "reuse", {
            "relayhost": f"[127.0.0.1]:{p['upstream']}",
            "smtp_tls_security_level": "encrypt",
            "smtp_tls_CAfile": self.pki["ca"],
            "smtp_tls_loglevel": "0",
            "smtp_tls_connection_reuse": "yes",
        }, f"127.0.0.1:{p['reuse']} inet n - n - - smtpd\n")
        # peer 3: Postfix + pipe content_filter (openssl cms sign, encrypt), reinjected on a 2nd smtpd
        diy = work / "diy"
        (diy / "certs").mkdir(parents=True)
        (diy / "tmp").mkdir()
        os.chmod(diy, 0o755)
        os.chmod(diy / "certs", 0o755)
        for addr, (_k, crt) in self.pki["rcpt"].items():
            shutil.copy(crt, diy / "certs" / f"{addr}.pem")
        shutil.copy(self.pki["signer"][1], diy / "signer.crt")
        shutil.copy(self.pki["signer"][0], diy / "signer.key")
        filt = diy / "filter.sh"
        filt.write_text(DIY_FILTER.replace("@DIR@", str(diy)).replace("@PORT@", str(p["diy_reinject"])))
        os.chmod(filt, 0o755)
        nobody = (65534, 65534)
        try:
            import pwd
            pw = pwd.getpwnam("nobody")
            nobody = (pw.pw_uid, pw.pw_gid)
        except KeyError:
            pass
        for f in (diy / "tmp", diy / "signer.key"):
            os.chown(f, *nobody)
        os.chmod(diy / "signer.key", 0o600)
        self.diy = Postfix(work, "diy", {
            "relayhost": f"[127.0.0.1]:{p['sink']}",
            "smtp_tls_security_level": "none",
            "smimefilter_destination_recipient_limit": "100",
        },
            f"127.0.0.1:{p['diy']} inet n - n - - smtpd -o content_filter=smimefilter:dummy\n"
            f"127.0.0.1:{p['diy_reinject']} inet n - n - - smtpd -o content_filter=\n"
            f"  -o receive_override_options=no_unknown_recipient_checks,no_header_body_checks\n"
            f"smimefilter unix - n n - 20 pipe flags=q user=nobody argv={filt} ${{sender}} ${{recipient}}\n")
        self.cachet = Cachet(cachet_bin, work, p["cachet"], p["upstream"], self.pki) if cachet_bin else None
        self.port_of = {1: p["sink"], 2: p["relay"], 3: p["diy"], 4: p["cachet"], 5: p["reuse"]}
        self.instance_of = {2: self.relay, 3: self.diy, 5: self.reuse}
        self.smime_active = False

    def start(self) -> None:
        self.sink.restart()
        for pf in (self.upstream, self.relay, self.reuse, self.diy):
            if pf:
                pf.start()
        wait_port(self.ports["upstream"], what="the STARTTLS upstream")
        wait_port(self.ports["relay"], what="postfix relay")
        wait_port(self.ports["reuse"], what="postfix relay with TLS reuse")
        wait_port(self.ports["diy"], what="postfix diy")
        wait_port(self.ports["diy_reinject"], what="postfix diy reinjection")
        if self.cachet:
            self.detect_smime()

    def detect_smime(self) -> None:
        mode = self.args.smime
        if mode != "off":
            self.cachet.smime = True
            self.cachet.start()
            why = self.probe()
            if why is None:
                self.smime_active = True
                log("cachet S/MIME stage active: every relayed message is signed+encrypted and checked")
                return
            if mode == "require":
                raise BenchError(f"--smime require: cachet's S/MIME stage is not active: {why}")
            log(f"cachet S/MIME stage NOT active ({why}); measuring cachet relay-only (placeholder row)")
        self.cachet.smime = False
        self.cachet.start()
        if self.probe(expect_smime=False) is not None:
            raise BenchError("cachet relay-only probe failed:\n" + self.cachet.log_tail())

    def probe(self, expect_smime: bool = True) -> str | None:
        """One message through cachet; None when it arrived (signed+encrypted if expected)."""
        self.sink.restart()
        msg = (f"From: <{SENDER}>\r\nTo: <{RECIPIENTS[0]}>\r\nSubject: probe\r\n"
               f"Message-Id: <probe.{time.time_ns()}@bench.test>\r\n\r\n" + "XXXXXXXXXXXX\r\n" * 10)
        try:
            with smtplib.SMTP("127.0.0.1", self.cachet.port, timeout=30) as s:
                s.sendmail(SENDER, [RECIPIENTS[0]], msg)
        except smtplib.SMTPException as e:
            return f"SMTP refused: {e}"
        res = self.sink.wait(1, timeout=30, stall=30)
        if not res["done"]:
            return "probe message did not arrive at the sink within 30s:\n" + self.cachet.log_tail()
        info = next(iter(res["files"].values()))
        if expect_smime and not info["smime"]:
            return "the probe message arrived in plaintext"
        if expect_smime:
            v = verify_all(self.sink, res["files"], self.pki, self.work / "verify", True)
            if v["failed"]:
                return f"probe did not verify: {v['examples']}"
        return None

    # one measurement ------------------------------------------------------------------------

    def measure(self, topo: int, size: int, rcpts: int, n: int, *, label: str | None = None,
                verify: bool = True) -> dict:
        a = self.args
        self.sink.restart()
        bg = background_rate(a.bg_sample)
        def own() -> float | None:
            if topo == 4:
                return self.cachet.cpu_ms()
            if topo in self.instance_of:
                return self.instance_of[topo].cpu_ms()
            return None

        own0 = own()
        c0, t0 = cpu_busy_ms(), time.time()
        expected = n * rcpts
        timeout = max(120.0, n * rcpts * 0.5)  # generous: DIY peer at ~20 msg/s still completes
        src = subprocess.Popen(
            [SBIN / "smtp-source", "-s", str(a.sessions), "-m", str(n), "-l", str(size), "-r", str(rcpts),
             "-f", SENDER, "-t", RCPT_BASE, "-M", "source.bench.test", f"127.0.0.1:{self.port_of[topo]}"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        res = self.sink.wait(expected, timeout=timeout, stall=a.stall)
        c1, t_c1 = cpu_busy_ms(), time.time()
        own1 = own()
        try:
            src_out = src.communicate(timeout=30)[0].decode(errors="replace")
        except subprocess.TimeoutExpired:
            kill_proc(src)
            src_out = "(smtp-source still running; killed)"
        files = res["files"]
        pairs = set()
        rcpt_total = 0
        for name, info in files.items():
            rcpt_total += len(info["rcpts"])
            for r in info["rcpts"]:
                pairs.add((info["mid"] or name, r.lower()))
        delivered = min(n, len({m for m, _ in pairs}) if all(i["mid"] for i in files.values())
                        else rcpt_total // rcpts)
        t_end = max((i["mtime"] for i in files.values()), default=time.time())
        secs = max(t_end - t0, 1e-6)
        cpu = c1 - c0
        net = max(0.0, cpu - bg * (t_c1 - t0))  # background as sampled just before, over the same window
        ok = res["done"] and delivered == n and rcpt_total >= expected and src.returncode == 0
        row = {
            "topology": topo, "name": label or TOPOLOGIES[topo], "size": size, "rcpts": rcpts,
            "sent": n, "expected_rcpts": expected, "delivered": delivered, "delivered_rcpts": rcpt_total,
            "copies": len(files), "ok": ok, "seconds": round(secs, 3),
            "msgs_per_s": round(delivered / secs, 1),
            "cpu_ms_per_msg": round(cpu / max(delivered, 1), 3),
            "cpu_ms_per_msg_net": round(net / max(delivered, 1), 3),
            "background_cpu_ms_per_s": round(bg, 1),
        }
        if own0 is not None and own1 is not None:
            row["own_cpu_ms_per_msg"] = round((own1 - own0) / max(delivered, 1), 3)
            if topo == 4:
                row["cachet_cpu_ms_per_msg"] = row["own_cpu_ms_per_msg"]
        if topo == 4 and verify:
            v = verify_all(self.sink, files, self.pki, self.work / "verify", self.smime_active)
            row["verified"] = v
            if v["failed"]:
                row["ok"] = False
                self.errors.append(f"{row['name']} {size}B x{rcpts}: {v['failed']} copies failed "
                                   f"verification, e.g. {v['examples']}")
        if not ok:
            self.errors.append(
                f"{row['name']} {size}B x{rcpts}: delivered {delivered}/{n} messages "
                f"({rcpt_total}/{expected} recipients) in {secs:.1f}s; smtp-source rc={src.returncode}: "
                f"{src_out.strip()[-300:]}")
            self.reset(topo)
        log(f"{TOPO_LABEL.get(topo, label)} {size // 1024}KB x{rcpts}: {row['msgs_per_s']} msg/s, "
            f"{row['cpu_ms_per_msg']} CPU-ms/msg, {delivered}/{n} delivered"
            + ("" if ok else "  << INCOMPLETE"))
        return row

    def reset(self, topo: int) -> None:
        """After an incomplete run: drop what is still queued so it cannot leak into the next run."""
        if topo == 2:
            self.relay.flush_queue()
        elif topo == 5:
            self.reuse.flush_queue()
        elif topo == 3:
            self.diy.flush_queue()
        elif topo == 4:
            self.cachet.start(fresh_spool=True)

    # extras ----------------------------------------------------------------------------------

    def latency(self, topo: int, rate: float, secs: float, size: int) -> dict:
        """Messages at a fixed `rate` over 16 connections; latency = arrival at the sink (the dump
        file's mtime, fine-grained on tmpfs) minus the moment the Python client read the 250."""
        self.sink.restart()
        total = max(20, int(rate * secs))
        conns = min(16, total)
        body = ("X" * 78 + "\r\n") * max(1, size // 80)
        t250: dict[int, float] = {}
        t_mail: dict[int, float] = {}
        errors: list[str] = []
        start = time.time() + 0.3

        def worker(i: int) -> None:
            try:
                with smtplib.SMTP("127.0.0.1", self.port_of[topo], timeout=60) as s:
                    s.ehlo("latency.bench.test")
                    for j in range(i, total, conns):
                        delay = start + j / rate - time.time()
                        if delay > 0:
                            time.sleep(delay)
                        msg = (f"From: <{SENDER}>\r\nTo: <{RECIPIENTS[0]}>\r\nSubject: latency {j}\r\n"
                               f"Message-Id: <lat{j}.{start}@bench.test>\r\n\r\n{body}")
                        t_mail[j] = time.time()
                        s.sendmail(f"lat{j}@bench.test", [RECIPIENTS[0]], msg)
                        t250[j] = time.time()
            except (OSError, smtplib.SMTPException) as e:
                errors.append(str(e))

        threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(conns)]
        old_switch = sys.getswitchinterval()
        sys.setswitchinterval(0.0001)  # a thread that read its 250 takes the clock without waiting ~5 ms for the GIL
        try:
            for t in threads:
                t.start()
            for t in threads:
                t.join(secs * 3 + 120)
        finally:
            sys.setswitchinterval(old_switch)
        sent_secs = max(t250.values(), default=start) - start
        res = self.sink.wait(len(t250), timeout=120, stall=30)
        lats, e2e = [], []
        for info in res["files"].values():
            m = re.match(r"lat(\d+)@", info["mail"])
            if m and int(m.group(1)) in t250:
                lats.append((info["mtime"] - t250[int(m.group(1))]) * 1000)
                e2e.append((info["mtime"] - t_mail[int(m.group(1))]) * 1000)
        lats.sort()
        e2e.sort()

        def pct(p: float, v: list | None = None) -> float | None:
            v = lats if v is None else v
            return round(v[min(len(v) - 1, int(p / 100 * len(v)))], 2) if v else None

        return {"topology": topo, "target_rate": round(rate, 1),
                "achieved_rate": round(len(t250) / max(sent_secs, 1e-3), 1), "sent": len(t250),
                "measured": len(lats), "p50_ms": pct(50), "p99_ms": pct(99),
                "submit_p50_ms": pct(50, e2e), "submit_p99_ms": pct(99, e2e),
                "max_ms": round(lats[-1], 1) if lats else None, "errors": errors[:3],
                "ok": not errors and len(lats) == total}

    def rss(self, sessions: int, size: int) -> dict:
        """cachet's peak RSS with `sessions` concurrent sessions each sending one `size` message."""
        self.cachet.start(fresh_spool=True)
        self.sink.restart()
        base = self.cachet.hwm_kb()
        t0 = time.time()
        src = subprocess.run(
            [SBIN / "smtp-source", "-s", str(sessions), "-m", str(sessions), "-l", str(size), "-r", "1",
             "-f", SENDER, "-t", RCPT_BASE, "-M", "source.bench.test", f"127.0.0.1:{self.cachet.port}"],
            capture_output=True, text=True, timeout=max(600, sessions * size / 2e6))
        res = self.sink.wait(sessions, timeout=max(600, sessions * size / 2e6), stall=self.args.stall * 2)
        hwm = self.cachet.hwm_kb()
        delivered = sum(len(i["rcpts"]) for i in res["files"].values())
        out = {"sessions": sessions, "size": size, "delivered": delivered, "ok": res["done"] and src.returncode == 0,
               "seconds": round(time.time() - t0, 1), "vmhwm_mb": round(hwm / 1024, 1) if hwm else None,
               "idle_vmhwm_mb": round(base / 1024, 1) if base else None}
        if not out["ok"]:
            self.errors.append(f"rss: delivered {delivered}/{sessions}; smtp-source rc={src.returncode} "
                               f"{(src.stdout + src.stderr).strip()[-300:]}")
        self.sink.restart()  # free the tmpfs dumps
        return out

    def scaling(self, n: int, size: int) -> dict:
        rows = {}
        for label, pin in (("2 cores", None), ("1 core (taskset -c 0)", "0")):
            self.cachet.start(pin=pin, fresh_spool=True)
            rows[label] = self.measure(4, size, 1, n, label=f"cachet {label}", verify=False)
        self.cachet.start(fresh_spool=True)
        r2, r1 = rows["2 cores"]["msgs_per_s"], rows["1 core (taskset -c 0)"]["msgs_per_s"]
        return {"size": size, "n": n, "rate_2cores": r2, "rate_1core": r1,
                "speedup": round(r2 / r1, 2) if r1 else None,
                "ok": all(r["ok"] for r in rows.values())}


# --------------------------------------------------------------------------------------------
# The crypto-only bound: cachet's own S/MIME stage in-process (benches/smime.rs), one core.


def crypto_bound() -> dict:
    """Runs `cargo bench --bench smime` and reads its sign+encrypt rows: msgs/s on one core."""
    if not (REPO / "benches" / "smime.rs").exists() or not shutil.which("cargo"):
        return {"ok": False, "why": "benches/smime.rs or cargo not available"}
    log("crypto-only bound: cargo bench --bench smime (in-process sign+encrypt, one core)")
    p = run(["cargo", "bench", "--locked", "--manifest-path", REPO / "Cargo.toml", "--bench", "smime"],
            timeout=3600, check=False)
    rows = {}
    for m in re.finditer(r"^\|\s*sign\+encrypt\s*\|\s*(\d+) KB\s*\|\s*(\d+)\s*\|\s*([\d.]+)\s*\|\s*([\d.]+)",
                         p.stdout, re.M):
        rows[f"{int(m.group(1)) * 1024}x{m.group(2)}"] = {"cachet_per_core": float(m.group(3)),
                                                         "openssl_cli": float(m.group(4))}
    if p.returncode != 0 or not rows:
        return {"ok": False, "why": f"cargo bench failed ({p.returncode}): {(p.stdout + p.stderr)[-300:]}"}
    return {"ok": True, "rows": rows, "cores": os.cpu_count()}


# --------------------------------------------------------------------------------------------
# Output


def fmt_size(b: int) -> str:
    return f"{b // 1048576}MB" if b >= 1048576 else f"{b // 1024}KB"


def print_table(summary: dict) -> None:
    runs = summary["runs"]
    out = []
    w = out.append
    w("")
    w(f"cachet end-to-end benchmark  ({summary['host']['cpus']} CPUs, {summary['started']}, N={summary['n']}, "
      f"{summary['sessions']} sessions; S/MIME in cachet: "
      f"{'ACTIVE (signed+encrypted, every copy verified)' if summary['smime_active'] else 'NOT ACTIVE: relay-only placeholder'})")
    w("")
    hdr = f"{'topology':<22} {'size':>5} {'rcpt':>4} {'delivered':>11} {'msg/s':>8} {'CPU-ms/msg':>10} {'net':>7}  notes"
    w(hdr)
    w("-" * len(hdr))
    for r in runs:
        notes = []
        if not r["ok"]:
            notes.append("INCOMPLETE")
        if "cachet_cpu_ms_per_msg" in r:
            notes.append(f"cachet itself {r['cachet_cpu_ms_per_msg']:.2f} CPU-ms/msg")
        elif "own_cpu_ms_per_msg" in r:
            notes.append(f"postfix itself {r['own_cpu_ms_per_msg']:.2f} CPU-ms/msg")
        if "verified" in r:
            v = r["verified"]
            notes.append(f"verified {v['checked'] - v['failed']}/{v['checked']} ({'cms' if summary['smime_active'] else 'plain'})")
        if r["copies"] != r["delivered"] and r["topology"] != 1:
            notes.append(f"{r['copies']} copies")
        w(f"{TOPO_LABEL[r['topology']]:<22} {fmt_size(r['size']):>5} {r['rcpts']:>4} "
          f"{str(r['delivered']) + '/' + str(r['sent']):>11} {r['msgs_per_s']:>8.1f} {r['cpu_ms_per_msg']:>10.2f} "
          f"{r['cpu_ms_per_msg_net']:>7.2f}  {', '.join(notes)}")
    w("")
    w("cachet ratios (msg/s, same run):")
    for k in summary["ratios"]:
        def x(v):
            return "n/a" if v is None else f"{v}x"
        w(f"  {fmt_size(k['size']):>5} x{k['rcpts']}: vs 2 postfix TLS relay {x(k['vs_postfix'])}, "
          f"vs 5 postfix TLS reuse {x(k.get('vs_postfix_reuse'))}, vs 3 postfix+openssl {x(k['vs_diy'])}")
        if k.get("cpu_vs_postfix_reuse") is not None:
            w(f"  {'':>5}    own CPU per message: cachet {k['cachet_cpu_ms']} ms, postfix relaying alone "
              f"(5, with reuse) {k['postfix_reuse_cpu_ms']} ms: cachet/postfix {k['cpu_vs_postfix_reuse']}")
        if k.get("vs_one_recipient") is not None:
            w(f"  {'':>5}    {k['rcpts']} recipients ({k['rcpts'] - 1} Bcc) vs 1 recipient: {x(k['vs_one_recipient'])}")
    lat = summary.get("latency")
    if lat:
        for l in lat:
            w(f"latency 250 -> delivered, {TOPO_LABEL[l['topology']]} at {l['achieved_rate']} msg/s "
              f"(target {l['target_rate']}): p50 {l['p50_ms']} ms, p99 {l['p99_ms']} ms, max {l['max_ms']} ms "
              f"({l['measured']}/{l['sent']} measured); from MAIL FROM: p50 {l['submit_p50_ms']} ms, "
              f"p99 {l['submit_p99_ms']} ms")
    rss = summary.get("rss")
    if rss:
        w(f"cachet peak RSS (VmHWM): {rss['vmhwm_mb']} MB with {rss['sessions']} concurrent sessions x "
          f"{fmt_size(rss['size'])} (idle {rss['idle_vmhwm_mb']} MB; delivered {rss['delivered']}/{rss['sessions']}, "
          f"{rss['seconds']} s)")
    sc = summary.get("scaling")
    if sc:
        w(f"cachet scaling {fmt_size(sc['size'])} x1: 2 cores {sc['rate_2cores']} msg/s, 1 core (taskset -c 0) "
          f"{sc['rate_1core']} msg/s: {sc['speedup']}x")
    cb = summary.get("crypto_bound")
    if cb and cb.get("ok"):
        w("crypto-only bound (cargo bench --bench smime: in-process sign+encrypt, one core; x cores = bound):")
        for r in runs:
            key = f"{r['size']}x{r['rcpts']}"
            if r["topology"] == 4 and key in cb["rows"]:
                per_core = cb["rows"][key]["cachet_per_core"]
                bound = per_core * cb["cores"]
                w(f"  {fmt_size(r['size']):>5} x{r['rcpts']}: {per_core:.0f} msg/s/core, bound {bound:.0f} msg/s; "
                  f"cachet end-to-end {r['msgs_per_s']:.0f} msg/s = {100 * r['msgs_per_s'] / bound:.0f}% of it "
                  f"(openssl cms CLI: {cb['rows'][key]['openssl_cli']:.0f} msg/s)")
    else:
        w("crypto-only bound: not measured (" + (cb or {}).get("why", "skipped in --quick, with --skip crypto, or without S/MIME; full runs use "
                                                    "cargo bench --bench smime") + ")")
    if summary["errors"]:
        w("")
        w("ERRORS:")
        for e in summary["errors"]:
            w(f"  - {e}")
    w("")
    print("\n".join(out), flush=True)


# --------------------------------------------------------------------------------------------


def parse_size(s: str) -> int:
    m = re.fullmatch(r"(\d+)\s*([kKmM]?)[bB]?", s.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"bad size {s!r} (e.g. 10k, 100k, 10m)")
    return int(m.group(1)) * {"": 1, "k": 1024, "m": 1048576}[m.group(2).lower()]


def resolve_cachet(arg: str | None) -> Path:
    if arg or os.environ.get("CACHET_BIN"):
        p = Path(arg or os.environ["CACHET_BIN"]).resolve()
        if not os.access(p, os.X_OK):
            raise BenchError(f"cachet binary {p} is not executable")
        return p
    log("no --cachet/CACHET_BIN: cargo build --release --locked")
    run(["cargo", "build", "--release", "--locked", "--manifest-path", REPO / "Cargo.toml"], timeout=3600)
    return REPO / "target" / "release" / "cachet"


def resolve_sink(arg: str | None, cachet_bin: Path | None) -> Path:
    """--sink-bin, $CACHET_SINK_BIN, or cachet-bench-sink beside the cachet binary (cargo builds
    both; resolve_cachet's `cargo build --release` included)."""
    if arg or os.environ.get("CACHET_SINK_BIN"):
        p = Path(arg or os.environ["CACHET_SINK_BIN"]).resolve()
    elif cachet_bin:
        p = cachet_bin.parent / "cachet-bench-sink"
    else:
        p = REPO / "target" / "release" / "cachet-bench-sink"
        if not os.access(p, os.X_OK):
            log("no cachet-bench-sink: cargo build --release --locked --bin cachet-bench-sink")
            run(["cargo", "build", "--release", "--locked", "--manifest-path", REPO / "Cargo.toml",
                 "--bin", "cachet-bench-sink"], timeout=3600)
    if not os.access(p, os.X_OK):
        raise BenchError(f"the light sink {p} is not there (cargo build --release builds it beside "
                         f"cachet; or --sink-bin PATH, or --sink postfix)")
    return p


def main() -> int:
    ap = argparse.ArgumentParser(prog="bench/run.sh", description="cachet end-to-end benchmark beside Postfix peers (issue 6)")
    ap.add_argument("--quick", action="store_true", help="small N, 10 KB only: < 3 minutes (CI smoke)")
    ap.add_argument("-n", type=int, help="messages per run (default 1000; --quick 100)")
    ap.add_argument("--sessions", type=int, default=20, help="smtp-source sessions (default 20)")
    ap.add_argument("--sizes", help="comma list, e.g. 10k,100k (default 10k,100k; --quick 10k)")
    ap.add_argument("--rcpts", default="1,3", help="comma list of recipient counts (default 1,3)")
    ap.add_argument("--topologies", default="1,2,3,4,5", help="which of 1..5 to run (default all)")
    ap.add_argument("--cachet", help="cachet binary (default $CACHET_BIN, else cargo build --release)")
    ap.add_argument("--smime", choices=["auto", "require", "off"], default="auto",
                    help="auto: sign+encrypt when the build has S/MIME, else relay-only (default)")
    ap.add_argument("--rss-sessions", type=int, default=200)
    ap.add_argument("--rss-size", type=parse_size, help="message size for the RSS run (default 10m; --quick 1m)")
    ap.add_argument("--latency-seconds", type=float, help="length of the latency run (default 10; --quick 3)")
    ap.add_argument("--skip", default="", help="comma list of extras to skip: latency,rss,scaling,crypto")
    ap.add_argument("--sink", choices=["light", "postfix"], default="light",
                    help="final hop: light = bench/sink.rs (cachet-bench-sink) on both the sink and the STARTTLS "
                         "upstream port (default); postfix = a Postfix smtpd requiring STARTTLS, proxying to smtp-sink")
    ap.add_argument("--sink-bin", help="cachet-bench-sink binary (default $CACHET_SINK_BIN, else beside --cachet)")
    ap.add_argument("--no-install", action="store_true", help="never apt-get install postfix")
    ap.add_argument("--stall", type=float, default=60, help="fail a run after this many seconds without progress")
    ap.add_argument("--json", help="also write the summary JSON to this file")
    ap.add_argument("--keep", action="store_true", help="keep the temp dirs (logs, configs) for debugging")
    a = ap.parse_args()
    a.n = a.n or (100 if a.quick else 1000)
    a.sizes = [parse_size(s) for s in (a.sizes or ("10k" if a.quick else "10k,100k")).split(",")]
    a.rcpts = [int(x) for x in a.rcpts.split(",")]
    topos = [int(x) for x in a.topologies.split(",")]
    a.rss_size = a.rss_size or (1048576 if a.quick else 10 * 1048576)
    a.latency_seconds = a.latency_seconds or (3 if a.quick else 10)
    a.bg_sample = 0.3 if a.quick else 1.0
    skip = {s for s in a.skip.split(",") if s}

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _on_signal)
    atexit.register(_cleanup_all)

    if sys.platform != "linux":
        print("BENCH_SKIP: needs Linux (/proc, taskset)", flush=True)
        return 2
    why = ensure_postfix(not a.no_install)
    if not why and os.geteuid() != 0:
        why = "private Postfix instances must be started as root"
    if why:
        print(f"BENCH_SKIP: {why}", flush=True)
        return 2
    for tool in ("openssl", "taskset"):
        if not shutil.which(tool):
            raise BenchError(f"{tool} is required")
    cachet_bin = resolve_cachet(a.cachet) if 4 in topos else None

    work = Path(tempfile.mkdtemp(prefix="cachet-bench-"))
    shm_root = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    shm = Path(tempfile.mkdtemp(prefix="cachet-bench-sink-", dir=shm_root))
    if not a.keep:
        on_exit(lambda: shutil.rmtree(work, ignore_errors=True))
    else:
        log(f"--keep: work dir {work}")
    on_exit(lambda: shutil.rmtree(shm, ignore_errors=True))
    os.chmod(work, 0o755)
    os.chmod(shm, 0o755)

    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    t_start = time.monotonic()
    b = Bench(a, work, shm, cachet_bin)
    log(f"work dir {work}, sink dumps in {shm}; ports {b.ports}")
    b.start()
    runs = []
    for size in a.sizes:
        for rc in a.rcpts:
            for topo in topos:
                runs.append(b.measure(topo, size, rc, a.n))
    ratios = []
    for size in a.sizes:
        for rc in a.rcpts:
            same = [r for r in runs if r["size"] == size and r["rcpts"] == rc]
            by = {r["topology"]: r["msgs_per_s"] for r in same}
            cpu = {r["topology"]: r.get("own_cpu_ms_per_msg") for r in same}
            one = next((r["msgs_per_s"] for r in runs
                        if r["size"] == size and r["rcpts"] == 1 and r["topology"] == 4), None)
            if 4 in by:
                ratios.append({"size": size, "rcpts": rc,
                               "vs_postfix": round(by[4] / by[2], 2) if by.get(2) else None,
                               "vs_postfix_reuse": round(by[4] / by[5], 2) if by.get(5) else None,
                               "vs_diy": round(by[4] / by[3], 2) if by.get(3) else None,
                               "cachet_cpu_ms": cpu.get(4),
                               "postfix_reuse_cpu_ms": cpu.get(5),
                               "cpu_vs_postfix_reuse": round(cpu[4] / cpu[5], 2) if cpu.get(4) and cpu.get(5) else None,
                               "vs_one_recipient": round(by[4] / one, 2) if rc > 1 and one else None})
    summary: dict = {"ok": False, "quick": a.quick, "n": a.n, "sessions": a.sessions, "started": started,
                     "host": {"cpus": os.cpu_count()}, "cachet": str(cachet_bin),
                     "sink": a.sink, "smime_active": b.smime_active, "runs": runs, "ratios": ratios}
    small = min(a.sizes)
    peak = next((r["msgs_per_s"] for r in runs if r["topology"] == 4 and r["size"] == small and r["rcpts"] == 1), None)
    if "latency" not in skip and peak:
        summary["latency"] = []
        for topo in (4, 2):
            if topo in topos:
                half = (peak if topo == 4 else next(r["msgs_per_s"] for r in runs if r["topology"] == 2
                                                   and r["size"] == small and r["rcpts"] == 1)) / 2
                lat = b.latency(topo, max(half, 1.0), a.latency_seconds, small)
                log(f"latency {TOPO_LABEL[topo]}: p50 {lat['p50_ms']} ms p99 {lat['p99_ms']} ms at {lat['achieved_rate']} msg/s")
                if not lat["ok"]:
                    b.errors.append(f"latency run {TOPO_LABEL[topo]}: {lat['measured']}/{lat['sent']} measured, "
                                    f"{lat['errors']}")
                summary["latency"].append(lat)
    if "scaling" not in skip and 4 in topos:
        summary["scaling"] = b.scaling(a.n, small)
    if "rss" not in skip and 4 in topos:
        summary["rss"] = b.rss(a.rss_sessions, a.rss_size)
    if "crypto" not in skip and not a.quick and 4 in topos and b.smime_active:
        summary["crypto_bound"] = crypto_bound()
    summary["errors"] = b.errors
    summary["seconds"] = round(time.monotonic() - t_start, 1)
    if a.smime == "require" and not b.smime_active:
        b.errors.append("--smime require but the S/MIME stage is not active")
    summary["ok"] = not b.errors and all(r["ok"] for r in runs)
    print_table(summary)
    line = json.dumps(summary, default=str)
    print("BENCH_SUMMARY " + line, flush=True)
    if a.json:
        Path(a.json).write_text(line + "\n")
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as e:
        print(f"bench: {e}", file=sys.stderr, flush=True)
        print("BENCH_SUMMARY " + json.dumps({"ok": False, "errors": [str(e)], "runs": []}), flush=True)
        sys.exit(1)
