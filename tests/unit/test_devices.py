"""The device rules as data (esker.system.devices): v1's deny lines, and the BPF program, both by its bytes and by
what it answers, run through a small interpreter of the few instructions it uses."""

from __future__ import annotations

import struct

import pytest

from esker.system import devices
from esker.system.devices import NVIDIA_MAJOR, device_program, insn, v1_rules

CHAR, BLOCK = 2, 1
READ, WRITE, MKNOD = 2, 4, 1  # BPF_DEVCG_ACC_*


def test_v1_rules_without_gpus_deny_every_gpu_minor():
    rules = v1_rules(())
    assert rules == [f"c 195:{m} rwm" for m in range(254)]
    assert "c 195:254 rwm" not in rules and "c 195:255 rwm" not in rules  # modeset and nvidiactl stay allowed


def test_v1_rules_leave_out_the_allowed_minors():
    one = v1_rules((1,))
    assert len(one) == 253 and "c 195:1 rwm" not in one
    assert one[:2] == ["c 195:0 rwm", "c 195:2 rwm"]
    two = v1_rules((3, 0, 3))  # order and repeats do not matter
    assert two == v1_rules((0, 3))
    assert len(two) == 252 and "c 195:0 rwm" not in two and "c 195:3 rwm" not in two
    assert {"c 195:1 rwm", "c 195:2 rwm", "c 195:4 rwm", "c 195:253 rwm"} <= set(two)


@pytest.mark.parametrize("bad", [-1, 254, 255, 1.0, "1"])
def test_a_minor_that_is_not_a_gpu_is_refused(bad):
    with pytest.raises(ValueError):
        v1_rules((bad,))
    with pytest.raises(ValueError):
        device_program((bad,))


def test_a_v1_listing_that_still_allows_a_forbidden_gpu_is_found():
    leaks = devices._v1_leaks
    assert leaks("a *:* rwm\n", {1}) == []  # default allow: the deny exceptions are not listed
    assert leaks("c 1:3 rwm\nc 195:1 rwm\nc 195:255 rwm\nb 195:0 rwm\n", {1}) == []
    assert leaks("c 195:* rwm\nc 195:1 rwm\n", {1}) == ["c 195:* rwm"]
    assert leaks("c *:* m\n", {1}) == ["c *:* m"]
    assert leaks("c 195:0 rw\nc 195:1 rw\n", {1}) == ["c 195:0 rw"]


def test_instruction_encoding():
    assert insn(0x95) == bytes([0x95, 0, 0, 0, 0, 0, 0, 0])  # exit
    assert insn(0x61, dst=2, src=1, off=4) == bytes([0x61, 0x12, 4, 0, 0, 0, 0, 0])  # r2 = *(u32 *)(r1 + 4)
    assert insn(0xB7, dst=0, imm=1) == bytes([0xB7, 0x00, 0, 0, 1, 0, 0, 0])  # r0 = 1
    assert insn(0x55, dst=2, off=5, imm=195) == bytes([0x55, 0x02, 5, 0, 195, 0, 0, 0])  # if r2 != 195 goto +5
    assert insn(0x15, dst=2, off=-1, imm=0) == bytes([0x15, 0x02, 0xFF, 0xFF, 0, 0, 0, 0])
    assert insn(0x57, dst=2, imm=0xFFFF) == bytes([0x57, 0x02, 0, 0, 0xFF, 0xFF, 0, 0])  # r2 &= 0xffff


def decode(code: bytes) -> list[tuple[int, int, int, int, int]]:
    out = []
    for i in range(0, len(code), 8):
        op, regs, off, imm = struct.unpack_from("<BBhi", code, i)
        out.append((op, regs & 0xF, regs >> 4, off, imm))
    return out


@pytest.mark.parametrize("allowed", [(), (1,), (0, 3)])
def test_program_structure(allowed):
    prog = decode(device_program(allowed))
    assert len(device_program(allowed)) == 8 * len(prog) == 8 * (11 + len(allowed))
    assert prog[0] == (0x61, 2, 1, 0, 0)  # r2 = access_type
    assert prog[1] == (0x57, 2, 0, 0, 0xFFFF)  # its low half: the device type
    assert prog[3] == (0x61, 2, 1, 4, 0) and prog[4][4] == NVIDIA_MAJOR  # the major
    assert prog[5] == (0x61, 2, 1, 8, 0) and prog[6][0] == 0x35 and prog[6][4] == 254  # minor >= 254: allowed
    assert [p[4] for p in prog[7:7 + len(allowed)]] == sorted(allowed)
    assert prog[-4:] == [(0xB7, 0, 0, 0, 0), (0x95, 0, 0, 0, 0), (0xB7, 0, 0, 0, 1), (0x95, 0, 0, 0, 0)]
    allow = len(prog) - 2
    for i, (op, *_rest) in enumerate(prog):
        if op in (0x15, 0x35, 0x55):
            assert i + 1 + prog[i][3] == allow  # every jump lands on "return 1"


def run(code: bytes, dev_type: int, major: int, minor: int, access: int = READ | WRITE) -> int:
    """Interpret the program for one access (the instructions it may use, and nothing else)."""
    ctx = struct.pack("<III", (access << 16) | dev_type, major, minor)
    prog, regs, pc = decode(code), [0] * 11, 0
    for _ in range(1000):
        op, dst, src, off, imm = prog[pc]
        pc += 1
        if op == 0x61:
            regs[dst] = struct.unpack_from("<I", ctx, off)[0]
        elif op == 0x57:
            regs[dst] &= imm
        elif op == 0xB7:
            regs[dst] = imm
        elif op in (0x15, 0x55, 0x35):
            taken = {0x15: regs[dst] == imm, 0x55: regs[dst] != imm, 0x35: regs[dst] >= imm}[op]
            pc += off if taken else 0
        elif op == 0x95:
            return regs[0]
        else:
            raise AssertionError(f"unexpected opcode {op:#x}")
    raise AssertionError("no exit")


@pytest.mark.parametrize("allowed", [(), (1,), (0, 3), tuple(range(254))])
def test_program_answers(allowed):
    code = device_program(allowed)
    for minor in range(254):
        assert run(code, CHAR, 195, minor) == (minor in allowed), minor
    for minor in (254, 255, 256, 1 << 19):
        assert run(code, CHAR, 195, minor) == 1  # modeset, nvidiactl, anything beyond
    assert run(code, CHAR, 195, 0, access=MKNOD) == (0 in allowed)
    assert run(code, BLOCK, 195, 0) == 1  # a block device of that major is not a GPU
    for major, minor in ((1, 3), (1, 9), (5, 2), (10, 229), (136, 0), (194, 0), (196, 0), (511, 0)):
        assert run(code, CHAR, major, minor) == 1  # /dev/null, urandom, ptmx, fuse, ptys, uvm's dynamic majors


def test_syscall_numbers():
    assert devices._BPF_SYSCALL == {"x86_64": 321, "aarch64": 280}
