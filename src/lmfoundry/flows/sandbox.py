"""The sandbox a flow process runs in: bubblewrap (`bwrap`, Debian's `bubblewrap` package).

Why bubblewrap: it is the maintained, unprivileged namespace launcher Flatpak is built on, one
small binary with no daemon, and it does in one exec what we need: new mount, pid, network,
IPC and UTS namespaces, a root made of read-only binds, a fresh /proc of the sandbox's own
pid namespace, no capabilities, a seccomp filter, and death with its parent. `unshare`
alone cannot build the root file system; a container runtime would be a daemon to operate.

Inside, only these exist: read-only system paths (/usr, a few files of /etc, the Python
installation and lmfoundry's own code), a fresh /proc, /dev and /tmp, and the flow's working
folder at /sandbox (its copy of the flow, HOME, TMPDIR and the egress socket). The server's
home (database, master key, credentials, instance sockets) is not there, and not even its
path where it lies under a bound one: a tmpfs covers it.

Users: run as root (servers in containers, CI), bwrap sets the sandbox up with root's
privileges and then `setpriv` drops to a uid/gid of its own from a pool (one per live flow
process, held by a lock file, so concurrent flows never share one) before Python starts. Run as
anyone else, bwrap makes a user namespace: the same uid outside, no capabilities inside, and no
further user namespaces.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import fcntl
import os
import shutil
import sys
from functools import lru_cache
from pathlib import Path

import lmfoundry
from lmfoundry.config import Settings
from lmfoundry.errors import Unavailable

INSIDE = Path("/sandbox")  # the flow's working folder, as the flow process sees it
UID_LOCKS = Path("/run/lmfoundry/flow-uids")  # root only: which pool uids are in use, host-wide
# Files of /etc that programs need (TLS roots, name service, time zone, the dynamic linker's
# cache, Debian's alternatives symlinks); the rest of /etc stays out.
ETC = (
    "alternatives",
    "ca-certificates",
    "ca-certificates.conf",
    "gai.conf",
    "group",
    "host.conf",
    "hosts",
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "localtime",
    "mime.types",
    "nsswitch.conf",
    "passwd",
    "pki",
    "protocols",
    "services",
    "ssl",
)
MERGED_USR = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")
# Syscalls no flow needs that widen what a process can reach: other processes' memory,
# kernel keyrings, eBPF, namespaces and mounts, modules, and the like.
DENIED_SYSCALLS = (
    "acct",
    "add_key",
    "bpf",
    "delete_module",
    "finit_module",
    "fsconfig",
    "fsmount",
    "fsopen",
    "fspick",
    "init_module",
    "ioperm",
    "iopl",
    "kexec_file_load",
    "kexec_load",
    "keyctl",
    "mount",
    "mount_setattr",
    "move_mount",
    "name_to_handle_at",
    "open_by_handle_at",
    "open_tree",
    "perf_event_open",
    "pivot_root",
    "process_vm_readv",
    "process_vm_writev",
    "ptrace",
    "quotactl",
    "reboot",
    "request_key",
    "setns",
    "swapoff",
    "swapon",
    "umount2",
    "unshare",
    "userfaultfd",
)
CLONE_NEWUSER = 0x10000000


class SandboxUnavailable(Unavailable):
    code = "flow_sandbox_unavailable"


def missing(reason: str) -> SandboxUnavailable:
    return SandboxUnavailable(
        f"Flows run sandboxed and the sandbox cannot be set up: {reason}. Fix that, or, to run "
        "flow code unsandboxed as the server's own user (it can then read the server's files), "
        "set LMFOUNDRY_FLOW_SANDBOX=off."
    )


class UidLease:
    """One pool uid, held (by an flock on its lock file) until `release`."""

    def __init__(self, uid: int, fd: int) -> None:
        self.uid = uid
        self._fd: int | None = fd

    @classmethod
    def take(cls, base: int, count: int) -> UidLease:
        UID_LOCKS.mkdir(parents=True, exist_ok=True, mode=0o700)
        for uid in range(base, base + count):
            fd = os.open(UID_LOCKS / str(uid), os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            return cls(uid, fd)
        raise Unavailable(
            f"All {count} flow uids ({base}-{base + count - 1}) are in use by running flow "
            "processes; wait for some to finish or raise LMFOUNDRY_FLOW_UID_COUNT."
        )

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None


class Sandbox:
    """How to start one flow process inside bubblewrap."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.as_root = os.geteuid() == 0
        self.lease: UidLease | None = None

    @property
    def uid(self) -> int:
        return self.lease.uid if self.lease else os.getuid()

    def acquire(self) -> None:
        """Check that bubblewrap is there and, as root, take a uid from the pool."""
        if shutil.which("bwrap") is None:
            raise missing("bubblewrap is not installed (`apt-get install bubblewrap`)")
        if self.as_root:
            if shutil.which("setpriv") is None:
                raise missing("setpriv is not installed (`apt-get install util-linux`)")
            self.lease = UidLease.take(self.settings.flow_uid_base, self.settings.flow_uid_count)

    def release(self) -> None:
        if self.lease is not None:
            self.lease.release()
            self.lease = None

    def own(self, workdir: Path) -> None:
        """Give the working folder to the sandbox's uid (as root; otherwise it already is)."""
        if not self.lease:
            return
        for path in (workdir, *workdir.rglob("*")):
            os.chown(path, self.lease.uid, self.lease.uid, follow_symlinks=False)

    def command(self, workdir: Path, inner: list[str], seccomp_fd: int | None) -> list[str]:
        argv = [
            "bwrap",
            "--die-with-parent",  # the server gone, the sandbox goes too
            "--new-session",  # no TIOCSTI into the server's terminal
            "--unshare-pid",
            "--unshare-net",
            "--unshare-ipc",
            "--unshare-uts",
            "--unshare-cgroup-try",
            "--hostname",
            "flow",
        ]
        if self.as_root:
            # Keep only what setpriv needs to change uid; it loses that too once it has.
            argv += ["--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
        else:
            argv += ["--unshare-user", "--disable-userns", "--cap-drop", "ALL"]
        argv += ["--ro-bind", "/usr", "/usr"]
        for name in MERGED_USR:
            path = Path("/", name)
            if path.is_symlink():
                argv += ["--symlink", os.readlink(path), str(path)]
            elif path.is_dir():
                argv += ["--ro-bind", str(path), str(path)]
        argv += ["--perms", "0755", "--dir", "/etc"]  # bwrap would make it 0700
        for name in ETC:
            argv += ["--ro-bind-try", f"/etc/{name}", f"/etc/{name}"]
        # A fresh /proc, /dev and /tmp first: the Python roots bound after them may lie
        # below /tmp (a checkout or venv there) and must not be covered by the empty tmpfs.
        argv += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]
        roots = python_roots()
        made: set[Path] = set()
        for root in roots:
            for parent in reversed(root.parents[:-1]):  # bwrap would make them 0700
                if parent not in made and not parent.is_relative_to("/usr"):
                    argv += ["--perms", "0755", "--dir", str(parent)]
                    made.add(parent)
            argv += ["--ro-bind", str(root), str(root)]
        for private in self._private_paths():
            if any(private.is_relative_to(root) for root in roots):
                argv += ["--tmpfs", str(private)]
        # cwd "/": as root, bwrap has no CAP_DAC_OVERRIDE left to enter the uid's 0700 folder;
        # the flow process changes into the flow's folder itself.
        argv += ["--bind", str(workdir), str(INSIDE), "--chdir", "/"]
        if seccomp_fd is not None:
            argv += ["--seccomp", str(seccomp_fd)]
        argv.append("--")
        if self.lease:
            uid = str(self.lease.uid)
            argv += ["setpriv", "--reuid", uid, "--regid", uid, "--clear-groups"]
            argv += ["--inh-caps=-all", "--"]
        return argv + inner

    def _private_paths(self) -> list[Path]:
        paths = [self.settings.home.resolve()]
        url = self.settings.resolved_database_url
        if url.startswith("sqlite:///"):
            paths.append(Path(url.removeprefix("sqlite:///")).resolve().parent)
        return paths


@lru_cache(maxsize=1)
def python_roots() -> tuple[Path, ...]:
    """Folders the flow process's Python needs: the interpreter's installation, the virtual
    environment and lmfoundry's own code (outside both when installed in editable mode).
    Never the working directory or other entries of the server's sys.path."""
    candidates = [
        Path(sys.base_prefix),
        Path(sys.prefix),
        Path(sys.exec_prefix),
        Path(lmfoundry.__file__).resolve().parent.parent,
    ]
    roots: list[Path] = []
    for path in sorted({p.resolve() for p in candidates}, key=lambda p: len(p.parts)):
        if path != Path("/") and not any(path.is_relative_to(r) for r in roots):
            roots.append(path)
    return tuple(roots)


@lru_cache(maxsize=1)
def seccomp_program() -> bytes | None:
    """A seccomp BPF program (built with libseccomp, through ctypes) that answers EPERM to
    DENIED_SYSCALLS and to clone() asking for a user namespace, and ENOSYS to clone3 (whose
    flags it cannot read; libc then falls back to clone). None where libseccomp is missing."""
    name = ctypes.util.find_library("seccomp")
    if name is None:
        return None
    lib = ctypes.CDLL(name)
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add_array.argtypes = [
        ctypes.c_void_p,
        ctypes.c_uint32,
        ctypes.c_int,
        ctypes.c_uint,
        ctypes.c_void_p,
    ]
    lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]

    class ArgCmp(ctypes.Structure):
        _fields_ = [
            ("arg", ctypes.c_uint),
            ("op", ctypes.c_int),
            ("datum_a", ctypes.c_uint64),
            ("datum_b", ctypes.c_uint64),
        ]

    allow, masked_eq = 0x7FFF0000, 7  # SCMP_ACT_ALLOW, SCMP_CMP_MASKED_EQ

    def fail(code: int) -> int:
        return 0x00050000 | code  # SCMP_ACT_ERRNO(code)

    ctx = lib.seccomp_init(allow)
    if not ctx:
        return None
    try:
        for syscall in DENIED_SYSCALLS:
            number = lib.seccomp_syscall_resolve_name(syscall.encode())
            if number >= 0:
                lib.seccomp_rule_add_array(ctx, fail(errno.EPERM), number, 0, None)
        clone3 = lib.seccomp_syscall_resolve_name(b"clone3")
        if clone3 >= 0:
            lib.seccomp_rule_add_array(ctx, fail(errno.ENOSYS), clone3, 0, None)
        clone = lib.seccomp_syscall_resolve_name(b"clone")
        if clone >= 0:
            # x86-64 and arm64 pass the flags first (s390 second; there this rule is moot)
            newuser = ArgCmp(0, masked_eq, CLONE_NEWUSER, CLONE_NEWUSER)
            lib.seccomp_rule_add_array(ctx, fail(errno.EPERM), clone, 1, ctypes.byref(newuser))
        fd = os.memfd_create("seccomp")
        with contextlib.closing(os.fdopen(fd, "rb")) as program:
            if lib.seccomp_export_bpf(ctx, fd) != 0:
                return None
            os.lseek(fd, 0, os.SEEK_SET)
            return program.read()
    finally:
        lib.seccomp_release(ctx)


def seccomp_fd() -> int | None:
    """An inheritable file holding the seccomp program for `bwrap --seccomp`; the caller
    closes it once the process has started."""
    program = seccomp_program()
    if program is None:
        return None
    fd = os.memfd_create("lmfoundry-seccomp", 0)  # no CLOEXEC: passed on to bwrap
    os.write(fd, program)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd
