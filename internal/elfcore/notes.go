package elfcore

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"fmt"
	"time"
)

// Note types of a Linux core that debug/elf does not name.
const (
	NTAuxv      elf.NType = 6          // NT_AUXV: the auxiliary vector, raw
	NTFile      elf.NType = 0x46494c45 // NT_FILE: which file backs which mapping
	NTSiginfo   elf.NType = 0x53494749 // NT_SIGINFO
	NTX86XState elf.NType = 0x202      // NT_X86_XSTATE: AVX and later registers ("LINUX")
)

// Arch is what a core needs to know about a machine's registers: the size of
// elf_gregset_t (pr_reg in NT_PRSTATUS, and exactly what PTRACE_GETREGSET
// NT_PRSTATUS returns) and where the registers a debugger starts unwinding
// from sit inside it.
type Arch struct {
	Machine  elf.Machine
	RegsSize int    // bytes of pr_reg
	PC, SP   int    // byte offsets of the program counter and stack pointer
	Syscall  int    // byte offset of the register holding the syscall number
	Args     [6]int // byte offsets of the six syscall argument registers
}

// x86-64 struct user_regs_struct and AArch64 struct user_pt_regs, as byte
// offsets of 8-byte registers.
var arches = map[elf.Machine]Arch{
	elf.EM_X86_64: {
		Machine:  elf.EM_X86_64,
		RegsSize: 27 * 8,
		PC:       16 * 8, // rip
		SP:       19 * 8, // rsp
		Syscall:  15 * 8, // orig_rax
		// rdi, rsi, rdx, r10, r8, r9
		Args: [6]int{14 * 8, 13 * 8, 12 * 8, 7 * 8, 9 * 8, 8 * 8},
	},
	elf.EM_AARCH64: {
		Machine:  elf.EM_AARCH64,
		RegsSize: 34 * 8,
		PC:       32 * 8,
		SP:       31 * 8,
		Syscall:  8 * 8, // x8
		Args:     [6]int{0, 8, 16, 24, 32, 40},
	},
}

// ArchOf returns the register layout of m.
func ArchOf(m elf.Machine) (Arch, error) {
	a, ok := arches[m]
	if !ok {
		return Arch{}, fmt.Errorf("%w: %v", ErrUnsupportedMachine, m)
	}
	return a, nil
}

// MachineOf maps a Go GOARCH to the ELF machine of its cores.
func MachineOf(goarch string) (elf.Machine, error) {
	switch goarch {
	case "amd64":
		return elf.EM_X86_64, nil
	case "arm64":
		return elf.EM_AARCH64, nil
	}
	return elf.EM_NONE, fmt.Errorf("%w: GOARCH %s", ErrUnsupportedMachine, goarch)
}

// prstatusCommon is the size of struct elf_prstatus_common on a 64-bit
// kernel: siginfo (12), cursig (2, padded to 8), sigpend, sighold, four pids
// and four timevals.
const prstatusCommon = 112

// PRStatusSize is the size of NT_PRSTATUS for a: BFD recognises a thread's
// registers by this exact size (336 on x86-64, 392 on AArch64).
func (a Arch) PRStatusSize() int {
	return alignUp8(prstatusCommon + a.RegsSize + 4)
}

func alignUp8(n int) int { return (n + 7) &^ 7 }

// PRStatus is one thread's NT_PRSTATUS.
type PRStatus struct {
	Signal                       int // signal being delivered, if stopped in one
	SigPend, SigHold             uint64
	PID, PPID, PGRP, SID         int32 // PID is the thread id
	UTime, STime, CUTime, CSTime time.Duration
	// Regs is pr_reg, Arch.RegsSize bytes; nil means all zero.
	Regs []byte
}

// Encode lays s out as the kernel's struct elf_prstatus for a.
func (s PRStatus) Encode(a Arch) ([]byte, error) {
	if s.Regs != nil && len(s.Regs) != a.RegsSize {
		return nil, fmt.Errorf("elfcore: %d bytes of registers for %v, want %d", len(s.Regs), a.Machine, a.RegsSize)
	}
	b := make([]byte, a.PRStatusSize())
	le := binary.LittleEndian
	le.PutUint32(b[0:], uint32(s.Signal)) // pr_info.si_signo
	le.PutUint16(b[12:], uint16(s.Signal))
	le.PutUint64(b[16:], s.SigPend)
	le.PutUint64(b[24:], s.SigHold)
	le.PutUint32(b[32:], uint32(s.PID))
	le.PutUint32(b[36:], uint32(s.PPID))
	le.PutUint32(b[40:], uint32(s.PGRP))
	le.PutUint32(b[44:], uint32(s.SID))
	for i, d := range []time.Duration{s.UTime, s.STime, s.CUTime, s.CSTime} {
		le.PutUint64(b[48+16*i:], uint64(d/time.Second))
		le.PutUint64(b[56+16*i:], uint64(d%time.Second/time.Microsecond))
	}
	copy(b[prstatusCommon:], s.Regs)
	return b, nil
}

// DecodePRStatus parses an NT_PRSTATUS descriptor written for a.
func DecodePRStatus(a Arch, b []byte) (PRStatus, error) {
	if len(b) != a.PRStatusSize() {
		return PRStatus{}, fmt.Errorf("%w: NT_PRSTATUS of %d bytes for %v, want %d", ErrFormat, len(b), a.Machine, a.PRStatusSize())
	}
	le := binary.LittleEndian
	s := PRStatus{
		Signal:  int(le.Uint16(b[12:])),
		SigPend: le.Uint64(b[16:]),
		SigHold: le.Uint64(b[24:]),
		PID:     int32(le.Uint32(b[32:])),
		PPID:    int32(le.Uint32(b[36:])),
		PGRP:    int32(le.Uint32(b[40:])),
		SID:     int32(le.Uint32(b[44:])),
		Regs:    bytes.Clone(b[prstatusCommon : prstatusCommon+a.RegsSize]),
	}
	for i, d := range []*time.Duration{&s.UTime, &s.STime, &s.CUTime, &s.CSTime} {
		*d = time.Duration(le.Uint64(b[48+16*i:]))*time.Second + time.Duration(le.Uint64(b[56+16*i:]))*time.Microsecond
	}
	return s, nil
}

// Reg reads the 8-byte register at byte offset off of pr_reg.
func Reg(regs []byte, off int) uint64 {
	if off < 0 || off+8 > len(regs) {
		return 0
	}
	return binary.LittleEndian.Uint64(regs[off:])
}

// PutReg sets the 8-byte register at byte offset off of pr_reg.
func PutReg(regs []byte, off int, v uint64) {
	if off >= 0 && off+8 <= len(regs) {
		binary.LittleEndian.PutUint64(regs[off:], v)
	}
}

// prpsinfoSize is sizeof(struct elf_prpsinfo) on every 64-bit Linux target.
const prpsinfoSize = 136

// PRPSInfo is the process's NT_PRPSINFO: what `gdb` prints as "Core was
// generated by ...".
type PRPSInfo struct {
	State                byte // index of SName in "RSDTZW"
	SName                byte // state letter from /proc/PID/stat
	Zombie               bool
	Nice                 int8
	Flag                 uint64 // task flags
	UID, GID             uint32
	PID, PPID, PGRP, SID int32
	Fname                string // comm; at most 15 bytes are kept
	Args                 string // command line, arguments joined by spaces; at most 79 bytes are kept
}

// Encode lays p out as struct elf_prpsinfo.
func (p PRPSInfo) Encode() []byte {
	b := make([]byte, prpsinfoSize)
	le := binary.LittleEndian
	b[0] = p.State
	b[1] = p.SName
	if p.Zombie {
		b[2] = 1
	}
	b[3] = byte(p.Nice)
	le.PutUint64(b[8:], p.Flag)
	le.PutUint32(b[16:], p.UID)
	le.PutUint32(b[20:], p.GID)
	le.PutUint32(b[24:], uint32(p.PID))
	le.PutUint32(b[28:], uint32(p.PPID))
	le.PutUint32(b[32:], uint32(p.PGRP))
	le.PutUint32(b[36:], uint32(p.SID))
	// Both strings are NUL-terminated C arrays; the last byte stays 0.
	copy(b[40:40+15], p.Fname)
	copy(b[56:56+79], p.Args)
	return b
}

// DecodePRPSInfo parses an NT_PRPSINFO descriptor.
func DecodePRPSInfo(b []byte) (PRPSInfo, error) {
	if len(b) != prpsinfoSize {
		return PRPSInfo{}, fmt.Errorf("%w: NT_PRPSINFO of %d bytes, want %d", ErrFormat, len(b), prpsinfoSize)
	}
	le := binary.LittleEndian
	return PRPSInfo{
		State: b[0], SName: b[1], Zombie: b[2] != 0, Nice: int8(b[3]),
		Flag: le.Uint64(b[8:]),
		UID:  le.Uint32(b[16:]), GID: le.Uint32(b[20:]),
		PID: int32(le.Uint32(b[24:])), PPID: int32(le.Uint32(b[28:])),
		PGRP: int32(le.Uint32(b[32:])), SID: int32(le.Uint32(b[36:])),
		Fname: cstring(b[40:56]),
		Args:  cstring(b[56:136]),
	}, nil
}

func cstring(b []byte) string {
	if i := bytes.IndexByte(b, 0); i >= 0 {
		b = b[:i]
	}
	return string(b)
}

// FileMapping is one entry of NT_FILE: the file mapped at [Start, End) from
// byte Offset of the file.
type FileMapping struct {
	Start, End, Offset uint64
	Name               string
}

// EncodeFileNote lays out NT_FILE. Offsets are stored in units of pageSize,
// as the kernel does, so each Offset must be a multiple of it.
func EncodeFileNote(pageSize uint64, maps []FileMapping) ([]byte, error) {
	if pageSize == 0 {
		return nil, fmt.Errorf("elfcore: NT_FILE with page size 0")
	}
	n := 16 + 24*len(maps)
	for _, m := range maps {
		n += len(m.Name) + 1
	}
	b := make([]byte, 16+24*len(maps), n)
	le := binary.LittleEndian
	le.PutUint64(b[0:], uint64(len(maps)))
	le.PutUint64(b[8:], pageSize)
	for i, m := range maps {
		if m.Offset%pageSize != 0 {
			return nil, fmt.Errorf("elfcore: NT_FILE offset %#x of %s is not a multiple of the page size %d", m.Offset, m.Name, pageSize)
		}
		if bytes.IndexByte([]byte(m.Name), 0) >= 0 {
			return nil, fmt.Errorf("elfcore: NT_FILE name %q contains NUL", m.Name)
		}
		e := b[16+24*i:]
		le.PutUint64(e[0:], m.Start)
		le.PutUint64(e[8:], m.End)
		le.PutUint64(e[16:], m.Offset/pageSize)
	}
	for _, m := range maps {
		b = append(b, m.Name...)
		b = append(b, 0)
	}
	return b, nil
}

// DecodeFileNote parses NT_FILE into its page size and mappings.
func DecodeFileNote(b []byte) (pageSize uint64, maps []FileMapping, err error) {
	if len(b) < 16 {
		return 0, nil, fmt.Errorf("%w: NT_FILE of %d bytes", ErrFormat, len(b))
	}
	le := binary.LittleEndian
	count, pageSize := le.Uint64(b[0:]), le.Uint64(b[8:])
	// Each entry takes 24 bytes plus at least a NUL, which bounds count by
	// the descriptor and keeps a forged count from allocating.
	if count > uint64(len(b)-16)/25 {
		return 0, nil, fmt.Errorf("%w: NT_FILE claims %d mappings in %d bytes", ErrFormat, count, len(b))
	}
	names := b[16+24*count:]
	maps = make([]FileMapping, count)
	for i := range maps {
		e := b[16+24*i:]
		off := le.Uint64(e[16:])
		if pageSize != 0 && off > ^uint64(0)/pageSize {
			return 0, nil, fmt.Errorf("%w: NT_FILE offset %#x pages overflows", ErrFormat, off)
		}
		j := bytes.IndexByte(names, 0)
		if j < 0 {
			return 0, nil, fmt.Errorf("%w: NT_FILE name %d is not NUL-terminated", ErrFormat, i)
		}
		maps[i] = FileMapping{Start: le.Uint64(e[0:]), End: le.Uint64(e[8:]), Offset: off * pageSize, Name: string(names[:j])}
		names = names[j+1:]
	}
	return pageSize, maps, nil
}

// x86XSaveStandard is where Intel's standard XSAVE format puts each state
// component (by XCR0 bit): the layout gdb, and every tool that predates the
// kernel's NT_X86_XSAVE_LAYOUT note, assume when reading NT_X86_XSTATE.
var x86XSaveStandard = map[int]struct{ off, size int }{
	2: {576, 256},   // AVX: upper halves of YMM0-15
	3: {960, 64},    // MPX bound registers
	4: {1024, 64},   // MPX bound config and status
	5: {1088, 64},   // AVX-512 opmask
	6: {1152, 512},  // AVX-512 upper halves of ZMM0-15
	7: {1664, 1024}, // AVX-512 ZMM16-31
	9: {2688, 8},    // PKRU
}

// xcr0Offset is where the kernel records XCR0 in an XSAVE area's software
// reserved bytes (struct _fpx_sw_bytes.xfeatures).
const xcr0Offset = 464

// X86XStateStandard reports whether an NT_X86_XSTATE descriptor is laid out
// as Intel's standard format for the features it holds. AMD processors
// without MPX pack AVX-512 state lower, making the area shorter than that
// format needs; gdb then rejects it ("Section .reg-xstate in core file too
// small") and would misread it if it were padded.
func X86XStateStandard(b []byte) bool {
	if len(b) < xcr0Offset+8 {
		return false
	}
	xcr0 := binary.LittleEndian.Uint64(b[xcr0Offset:])
	want := 576 // legacy FXSAVE region and XSAVE header
	for bit, c := range x86XSaveStandard {
		if xcr0&(1<<bit) != 0 {
			want = max(want, c.off+c.size)
		}
	}
	return len(b) >= want
}
