"""Each server's GPUs made exclusive by the kernel: its cgroup may open only its own /dev/nvidiaN (char 195:N)
and the shared control nodes; every other GPU minor is denied, and every other device is left alone.

Two mechanisms, one rule:

* cgroup v1's ``devices`` controller: a group created under a default-allow parent copies its "allow all", and
  each forbidden minor is written to ``devices.deny`` as an exception of its own (v1 has no "all but").
* cgroup v2 has no devices controller: a BPF program of type CGROUP_DEVICE, attached to the server's cgroup2
  directory, answers every device access of the tasks in it (1 allows, 0 denies). It is hand-assembled here, so
  no compiler or libbpf is needed; ``bpf(2)`` is called through ctypes.

nvidia-uvm, nvidia-uvm-tools and nvidia-caps (MIG) have dynamic majors and are not touched.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import struct
from pathlib import Path
from typing import Iterable

NVIDIA_MAJOR = 195
MODESET_MINOR = 254  # /dev/nvidia-modeset
CTL_MINOR = 255  # /dev/nvidiactl
GPU_MINORS = range(0, MODESET_MINOR)  # /dev/nvidia0 .. /dev/nvidia253: what the rule decides about

__all__ = ["NVIDIA_MAJOR", "MODESET_MINOR", "CTL_MINOR", "GPU_MINORS", "DeviceRuleError", "v1_rules",
           "device_program", "apply_v1", "attach_v2", "query_v2"]


class DeviceRuleError(RuntimeError):
    """A device rule could not be put in place (no mechanism, no permission, a verifier's refusal)."""


def _allowed(allowed_minors: Iterable[int]) -> list[int]:
    minors = sorted(set(allowed_minors))
    for m in minors:
        if not isinstance(m, int) or m not in GPU_MINORS:
            raise ValueError(f"not a GPU minor (0..{GPU_MINORS[-1]}): {m!r}")
    return minors


# -- cgroup v1 ---------------------------------------------------------------------------------------------------

def v1_rules(allowed_minors: Iterable[int]) -> list[str]:
    """The lines for devices.deny: one per forbidden GPU minor (an allow write would only remove an exact
    exception, so a "195:* then allow N" rule cannot be expressed in a default-allow group)."""
    allowed = set(_allowed(allowed_minors))
    return [f"c {NVIDIA_MAJOR}:{m} rwm" for m in GPU_MINORS if m not in allowed]


def _v1_leaks(listing: str, allowed: set[int]) -> list[str]:
    """Lines of a devices.list that still allow a forbidden GPU. A default-allow group lists only "a *:* rwm" (its
    deny exceptions are not shown); a default-deny one (a container's) lists its allows, and a wildcard such as
    "c 195:* rwm" there is not removed by exact denies."""
    leaks = []
    for line in listing.splitlines():
        kind, majmin, _ = line.split()
        major, minor = majmin.split(":")
        if line == "a *:* rwm" or kind == "b" or major not in ("*", str(NVIDIA_MAJOR)):
            continue
        if minor == "*" or (int(minor) in GPU_MINORS and int(minor) not in allowed):
            leaks.append(line)
    return leaks


def apply_v1(cgroup_dir: str | os.PathLike, allowed: Iterable[int]) -> None:
    """Deny every GPU minor but ``allowed`` to a v1 devices cgroup (idempotent: an exception written twice is one)."""
    allowed = _allowed(allowed)
    deny = Path(cgroup_dir, "devices.deny")
    try:
        for rule in v1_rules(allowed):
            deny.write_text(rule)  # one rule per write(2): that is how the file parses
        leaks = _v1_leaks(Path(cgroup_dir, "devices.list").read_text(), set(allowed))
    except OSError as e:
        raise DeviceRuleError(f"cannot write the device rules of {cgroup_dir}: {e}") from e
    if leaks:
        raise DeviceRuleError(f"{cgroup_dir} still allows {leaks} (inherited from its parent): "
                              "GPU exclusivity cannot be enforced there")


# -- cgroup v2: a BPF_PROG_TYPE_CGROUP_DEVICE program ---------------------------------------------------------------

_BPF_SYSCALL = {"x86_64": 321, "aarch64": 280}
BPF_PROG_LOAD, BPF_PROG_ATTACH, BPF_PROG_QUERY = 5, 8, 16
BPF_PROG_TYPE_CGROUP_DEVICE = 15
BPF_CGROUP_DEVICE = 6  # the attach type
BPF_F_ALLOW_MULTI = 2  # alongside any other device program (systemd's, a parent's): all must allow
BPF_DEVCG_DEV_CHAR = 2

# Opcodes (linux/bpf_common.h, linux/bpf.h).
LDX_W = 0x61  # BPF_LDX | BPF_MEM | BPF_W: dst = *(u32 *)(src + off)
AND64_K = 0x57  # BPF_ALU64 | BPF_AND | BPF_K: dst &= imm
MOV64_K = 0xB7  # BPF_ALU64 | BPF_MOV | BPF_K: dst = imm
JEQ_K, JNE_K, JGE_K = 0x15, 0x55, 0x35  # BPF_JMP | op | BPF_K: if dst op imm goto pc + 1 + off (JGE unsigned)
EXIT = 0x95
R0, R1, R2 = 0, 1, 2  # r0: the return value; r1: the context, struct bpf_cgroup_dev_ctx


def insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    """struct bpf_insn {u8 code; u8 dst_reg:4, src_reg:4; s16 off; s32 imm}, little-endian (dst is the low
    nibble)."""
    return struct.pack("<BBhi", code, (src << 4) | dst, off, imm)


def device_program(allowed_minors: Iterable[int]) -> bytes:
    """Deny (return 0) a char device of major 195 with a minor below 254 that is not allowed; allow the rest."""
    allowed = _allowed(allowed_minors)
    allow_at = 9 + len(allowed)  # the index of the "return 1" below

    def to_allow(i: int) -> int:  # a jump's offset, from instruction i, to allow_at
        return allow_at - i - 1

    # ctx: u32 access_type = (access << 16) | type at 0; u32 major at 4; u32 minor at 8.
    prog = [
        insn(LDX_W, R2, R1, 0),
        insn(AND64_K, R2, imm=0xFFFF),
        insn(JNE_K, R2, off=to_allow(2), imm=BPF_DEVCG_DEV_CHAR),
        insn(LDX_W, R2, R1, 4),
        insn(JNE_K, R2, off=to_allow(4), imm=NVIDIA_MAJOR),
        insn(LDX_W, R2, R1, 8),
        insn(JGE_K, R2, off=to_allow(6), imm=MODESET_MINOR),  # modeset, ctl (and anything above)
    ]
    prog += [insn(JEQ_K, R2, off=to_allow(7 + k), imm=m) for k, m in enumerate(allowed)]
    prog += [insn(MOV64_K, R0, imm=0), insn(EXIT), insn(MOV64_K, R0, imm=1), insn(EXIT)]
    assert len(prog) == allow_at + 2
    return b"".join(prog)


def _bpf(cmd: int, attr: ctypes.Array) -> int:
    nr = _BPF_SYSCALL.get(platform.machine())
    if nr is None:
        raise DeviceRuleError(f"bpf(2) device rules are not supported on {platform.machine()}")
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    r = libc.syscall(ctypes.c_long(nr), ctypes.c_int(cmd), attr, ctypes.c_uint(len(attr)))
    if r < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return r


def _attr(*fields: tuple[int, str, int]) -> ctypes.Array:
    """A zeroed union bpf_attr (128 bytes: the kernel requires unknown tail bytes to be zero) with the given
    (offset, struct format, value) fields."""
    buf = ctypes.create_string_buffer(128)
    for off, fmt, value in fields:
        struct.pack_into(fmt, buf, off, value)
    return buf


def _addr(buf) -> int:
    return ctypes.addressof(buf)


def _load(allowed: list[int]) -> int:
    code = device_program(allowed)
    insns = ctypes.create_string_buffer(code, len(code))
    license = ctypes.create_string_buffer(b"Apache-2.0")

    def load(log_level: int, log) -> int:
        # prog_type, insn_cnt, insns, license, log_level, log_size, log_buf, prog_name, expected_attach_type
        return _bpf(BPF_PROG_LOAD, _attr(
            (0, "<I", BPF_PROG_TYPE_CGROUP_DEVICE), (4, "<I", len(code) // 8), (8, "<Q", _addr(insns)),
            (16, "<Q", _addr(license)), (24, "<I", log_level), (28, "<I", len(log) if log else 0),
            (32, "<Q", _addr(log) if log else 0), (48, "16s", b"esker_gpus"), (68, "<I", BPF_CGROUP_DEVICE)))

    try:
        return load(0, None)
    except OSError as e:
        if e.errno != errno.EACCES and e.errno != errno.EINVAL:
            raise DeviceRuleError(f"cannot load the device program: {e}") from e
    log = ctypes.create_string_buffer(1 << 16)  # loaded again only to read why the verifier refused it
    try:
        return load(1, log)
    except OSError as e:
        raise DeviceRuleError(f"the kernel refused the device program ({e}):\n"
                              f"{log.value.decode(errors='replace')}") from e


def _dir_fd(cgroup2_dir) -> int:
    try:
        return os.open(cgroup2_dir, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as e:
        raise DeviceRuleError(f"cannot open {cgroup2_dir}: {e}") from e


def attach_v2(cgroup2_dir: str | os.PathLike, allowed: Iterable[int]) -> None:
    """Load the program for ``allowed`` and attach it to a cgroup2 directory. The attachment holds the program:
    it stays after this process exits, until the directory is removed. Each call attaches one more program (see
    query_v2 to attach only where none is)."""
    allowed = _allowed(allowed)
    fd = _dir_fd(cgroup2_dir)
    try:
        prog = _load(allowed)
        try:
            # target_fd, attach_bpf_fd, attach_type, attach_flags
            _bpf(BPF_PROG_ATTACH, _attr((0, "<I", fd), (4, "<I", prog), (8, "<I", BPF_CGROUP_DEVICE),
                                        (12, "<I", BPF_F_ALLOW_MULTI)))
        except OSError as e:
            raise DeviceRuleError(f"cannot attach the device program to {cgroup2_dir}: {e}") from e
        finally:
            os.close(prog)
    finally:
        os.close(fd)


def query_v2(cgroup2_dir: str | os.PathLike) -> int:
    """How many device programs are attached to this directory itself (not inherited from its parents)."""
    fd = _dir_fd(cgroup2_dir)
    try:
        # target_fd, attach_type, query_flags 0 (this directory only); prog_ids NULL: the kernel fills prog_cnt
        attr = _attr((0, "<I", fd), (4, "<I", BPF_CGROUP_DEVICE))
        _bpf(BPF_PROG_QUERY, attr)
        return struct.unpack_from("<I", attr, 24)[0]
    except OSError as e:
        raise DeviceRuleError(f"cannot query the device programs of {cgroup2_dir}: {e}") from e
    finally:
        os.close(fd)
