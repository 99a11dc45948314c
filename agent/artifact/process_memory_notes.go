package artifact

import (
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/procfs"

	"github.com/custodyhq/custody/internal/elfcore"
)

// coreProcInfo is what a core's notes say about the process as a whole.
type coreProcInfo struct {
	pid     int
	stat    procfs.ProcStat
	uid     uint32
	gid     uint32
	cmdline []string
	auxv    []byte
}

// coreThread is what a core's notes say about one thread.
type coreThread struct {
	status elfcore.PRStatus
	fpregs []byte // NT_FPREGSET, when frozen
	xstate []byte // NT_X86_XSTATE, when frozen on x86-64
}

// xstateOwnerNonStandard owns NT_X86_XSTATE notes whose XSAVE layout is
// not Intel's standard one (AMD's packed AVX-512 state): BFD ignores notes of
// owners it does not know, so gdb loads the core cleanly and the registers
// are still in it.
const xstateOwnerNonStandard = "CUSTODY"

// Register sets fetched from a frozen thread, with buffer sizes that hold
// them: user_fpregs_struct is 512 bytes on x86-64 and user_fpsimd_state 528
// on AArch64; the x86 XSAVE area depends on the CPU's features (AMX makes it
// about 11 KiB), and the kernel returns its true length.
const (
	fpregsBufSize = 1 << 10
	xstateBufSize = 16 << 10
)

func procMemStartTicks(procRoot string, pid int) (uint64, error) {
	p, err := procMemFS(procRoot).Proc(pid)
	if err != nil {
		return 0, err
	}
	st, err := p.Stat()
	if err != nil {
		return 0, err
	}
	return st.Starttime, nil
}

// procMemFS returns a procfs view of procRoot. NewFS only fails for a root
// that is not a directory; the reads that follow then fail with the reason.
func procMemFS(procRoot string) procfs.FS {
	fs, err := procfs.NewFS(procRoot)
	if err != nil {
		return procfs.FS{}
	}
	return fs
}

// procTaskIDs lists a process's threads, the thread group leader first.
func procTaskIDs(procRoot string, pid int) ([]int, error) {
	ents, err := os.ReadDir(filepath.Join(procRoot, strconv.Itoa(pid), "task"))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("pid %d: %w", pid, ErrProcessGone)
		}
		return nil, fmt.Errorf("pid %d: list threads: %w", pid, err)
	}
	var tids []int
	for _, e := range ents {
		if tid, err := strconv.Atoi(e.Name()); err == nil {
			tids = append(tids, tid)
		}
	}
	slices.SortFunc(tids, func(a, b int) int {
		switch {
		case a == pid:
			return -1
		case b == pid:
			return 1
		}
		return a - b
	})
	return tids, nil
}

func readCoreProcInfo(procRoot string, pid int) (coreProcInfo, error) {
	info := coreProcInfo{pid: pid}
	p, err := procMemFS(procRoot).Proc(pid)
	if err != nil {
		return info, err
	}
	if info.stat, err = p.Stat(); err != nil {
		return info, err
	}
	if st, err := p.NewStatus(); err == nil {
		info.uid, info.gid = uint32(st.UIDs[0]), uint32(st.GIDs[0])
	}
	info.cmdline, _ = p.CmdLine()
	// Without the auxiliary vector gdb cannot find where a PIE executable
	// was loaded, so its symbols would point nowhere; worth a warning, not
	// a failed capture.
	info.auxv, _ = readSmall(filepath.Join(procRoot, strconv.Itoa(pid), "auxv"))
	return info, nil
}

// auxvFromStack finds the auxiliary vector where the kernel put it at exec:
// on the initial stack, at /proc/PID/stat's startstack, after argc, the argv
// pointers and the envp pointers, each array ended by a null pointer.
func auxvFromStack(mem interface {
	ReadAt([]byte, uint64) (int, error)
}, startStack uint64) ([]byte, error) {
	if startStack == 0 {
		return nil, errors.New("start of stack unknown")
	}
	word := func(addr uint64) (uint64, error) {
		var b [8]byte
		if _, err := mem.ReadAt(b[:], addr); err != nil {
			return 0, fmt.Errorf("read stack at %#x: %w", addr, err)
		}
		return binary.LittleEndian.Uint64(b[:]), nil
	}
	argc, err := word(startStack)
	if err != nil {
		return nil, err
	}
	// The kernel caps argv and envp together by the stack limit; these
	// bounds only stop a walk through a stack the process has overwritten.
	const maxPointers, maxAuxv = 1 << 20, 512
	if argc > maxPointers {
		return nil, fmt.Errorf("argc %d on the stack is implausible", argc)
	}
	addr := startStack + 8 + (argc+1)*8
	for n := 0; ; n++ {
		v, err := word(addr)
		if err != nil {
			return nil, err
		}
		addr += 8
		if v == 0 {
			break
		}
		if n == maxPointers {
			return nil, errors.New("no end to the environment pointers on the stack")
		}
	}
	var auxv []byte
	for range maxAuxv {
		var pair [16]byte
		if _, err := mem.ReadAt(pair[:], addr); err != nil {
			return nil, fmt.Errorf("read stack at %#x: %w", addr, err)
		}
		auxv = append(auxv, pair[:]...)
		if binary.LittleEndian.Uint64(pair[:]) == 0 { // AT_NULL
			return auxv, nil
		}
		addr += 16
	}
	return nil, errors.New("no AT_NULL in the auxiliary vector on the stack")
}

// readCoreThreads gathers each thread's NT_PRSTATUS (and, frozen, its other
// register sets). regs says where the registers came from.
func readCoreThreads(procRoot string, info coreProcInfo, fr *freezer, arch elfcore.Arch) (threads []coreThread, regs string, err error) {
	type src struct {
		tid    int
		frozen *frozenThread
	}
	var srcs []src
	if fr != nil {
		for _, t := range fr.stopped() {
			srcs = append(srcs, src{t.tid, t})
		}
	}
	if len(srcs) == 0 {
		tids, err := procTaskIDs(procRoot, info.pid)
		if err != nil {
			return nil, "", err
		}
		for _, tid := range tids {
			srcs = append(srcs, src{tid: tid})
		}
	}
	regs = "ptrace"
	var unreadable error
	running := 0
	deadline := time.Now().Add(syscallBudget)
	fs := procMemFS(procRoot)
	for _, s := range srcs {
		st := elfcore.PRStatus{
			PID: int32(s.tid), PPID: int32(info.stat.PPID), PGRP: int32(info.stat.PGRP), SID: int32(info.stat.Session),
		}
		if t, err := fs.Thread(info.pid, s.tid); err == nil {
			if ts, err := t.Stat(); err == nil {
				st.UTime = tickDuration(ts.UTime)
				st.STime = tickDuration(ts.STime)
			}
		}
		st.SigPend, st.SigHold = threadSignals(procRoot, info.pid, s.tid)
		var th coreThread
		if s.frozen != nil {
			st.Signal = int(s.frozen.signal)
			if r, err := ptraceRegset(s.tid, int(elf.NT_PRSTATUS), arch.RegsSize); err == nil && len(r) == arch.RegsSize {
				st.Regs = r
			} else {
				regs = "partial: some threads' registers could not be read"
			}
			th.fpregs, _ = ptraceRegset(s.tid, int(elf.NT_FPREGSET), fpregsBufSize)
			if arch.Machine == elf.EM_X86_64 {
				th.xstate, _ = ptraceRegset(s.tid, int(elfcore.NTX86XState), xstateBufSize)
			}
		} else {
			r, err := syscallRegs(procRoot, info.pid, s.tid, arch, deadline)
			switch {
			case err != nil:
				unreadable = err
			case r == nil:
				running++
			}
			st.Regs = r
		}
		th.status = st
		threads = append(threads, th)
	}
	if fr == nil || len(fr.stopped()) == 0 {
		switch {
		case unreadable != nil:
			// The file is mode 0400: an agent with CAP_SYS_PTRACE but not
			// the target's uid (or CAP_DAC_OVERRIDE) cannot open it.
			regs = fmt.Sprintf("none: %v (freeze=true reads them through ptrace)", unreadable)
		default:
			regs = "partial: program counter, stack pointer and syscall arguments from /proc/PID/task/TID/syscall, other registers zero (freeze=true reads them all)"
			if running > 0 {
				regs += fmt.Sprintf("; %d threads were running on a CPU and have none", running)
			}
		}
	}
	return threads, regs, nil
}

// tickDuration converts clock ticks (USER_HZ, 100 on every Linux architecture Go
// supports) to a duration.
func tickDuration(n uint) time.Duration { return time.Duration(n) * time.Second / 100 }

// threadSignals reads the pending and blocked signal masks of a thread.
func threadSignals(procRoot string, pid, tid int) (pending, blocked uint64) {
	b, err := readSmall(filepath.Join(procRoot, strconv.Itoa(pid), "task", strconv.Itoa(tid), "status"))
	if err != nil {
		return 0, 0
	}
	for line := range strings.Lines(string(b)) {
		k, v, _ := strings.Cut(strings.TrimSpace(line), ":")
		n, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
		if err != nil {
			continue
		}
		switch k {
		case "SigPnd":
			pending = n
		case "SigBlk":
			blocked = n
		}
	}
	return pending, blocked
}

// syscallRegs builds the registers a running process gives away without
// being stopped: /proc/PID/task/TID/syscall holds, for a blocked thread, its
// stack pointer and program counter, and for one in a system call also the
// call's number and arguments. That is enough for a debugger to start a
// backtrace; everything else reads as zero. A running thread yields nothing.
//
// A thread caught between two sleeps reads as "running"; a few retries
// catch most threads that are not busy on a CPU.
// Retries stop at the deadline, so a process with thousands of busy
// threads costs a bounded delay.
func syscallRegs(procRoot string, pid, tid int, arch elfcore.Arch, deadline time.Time) ([]byte, error) {
	path := filepath.Join(procRoot, strconv.Itoa(pid), "task", strconv.Itoa(tid), "syscall")
	for try := 0; ; try++ {
		b, err := readSmall(path)
		if err != nil {
			return nil, err
		}
		if regs, ok := parseSyscallRegs(string(b), arch); ok {
			return regs, nil
		}
		if try == syscallRetries || time.Now().After(deadline) {
			return nil, nil
		}
		time.Sleep(time.Duration(try+1) * 100 * time.Microsecond)
	}
}

// syscallRetries bounds the retries of a thread that reads as running (at
// most about 5 ms), and syscallBudget those of a whole process.
const (
	syscallRetries = 9
	syscallBudget  = 250 * time.Millisecond
)

// parseSyscallRegs parses "nr a1 a2 a3 a4 a5 a6 sp pc" or "-1 sp pc".
func parseSyscallRegs(s string, arch elfcore.Arch) ([]byte, bool) {
	f := strings.Fields(s)
	var vals []uint64
	for _, x := range f[min(1, len(f)):] {
		v, err := strconv.ParseUint(x, 0, 64)
		if err != nil {
			return nil, false
		}
		vals = append(vals, v)
	}
	if len(f) == 0 {
		return nil, false
	}
	nr, err := strconv.ParseInt(f[0], 10, 64)
	if err != nil || (nr == -1 && len(vals) != 2) || (nr >= 0 && len(vals) != 8) || nr < -1 {
		return nil, false
	}
	regs := make([]byte, arch.RegsSize)
	elfcore.PutReg(regs, arch.SP, vals[len(vals)-2])
	elfcore.PutReg(regs, arch.PC, vals[len(vals)-1])
	if nr >= 0 {
		elfcore.PutReg(regs, arch.Syscall, uint64(nr))
		for i, off := range arch.Args {
			elfcore.PutReg(regs, off, vals[i])
		}
	}
	return regs, true
}

// buildCoreNotes lays out the notes the way the kernel's core dumper does: the
// first thread's NT_PRSTATUS, then the process-wide notes, then that
// thread's other register sets, then each further thread.
func buildCoreNotes(arch elfcore.Arch, info coreProcInfo, threads []coreThread, regions []procRegion, pageSize uint64) ([]elfcore.Note, error) {
	var files []elfcore.FileMapping
	for _, r := range regions {
		// NT_FILE names every file mapping, captured or not: it is how a
		// debugger finds, on disk, what the core leaves out.
		if r.fileBacked() && r.Offset%pageSize == 0 && !strings.ContainsRune(r.Path, 0) {
			files = append(files, elfcore.FileMapping{Start: r.Start, End: r.End, Offset: r.Offset, Name: r.Path})
		}
	}
	fileNote, err := elfcore.EncodeFileNote(pageSize, files)
	if err != nil {
		return nil, err
	}
	var notes []elfcore.Note
	for i, th := range threads {
		st, err := th.status.Encode(arch)
		if err != nil {
			return nil, err
		}
		notes = append(notes, elfcore.Note{Name: "CORE", Type: elf.NT_PRSTATUS, Desc: st})
		if i == 0 {
			notes = append(notes,
				elfcore.Note{Name: "CORE", Type: elf.NT_PRPSINFO, Desc: corePRPSInfo(info).Encode()},
				elfcore.Note{Name: "CORE", Type: elfcore.NTAuxv, Desc: info.auxv},
				elfcore.Note{Name: "CORE", Type: elfcore.NTFile, Desc: fileNote})
		}
		if th.fpregs != nil {
			notes = append(notes, elfcore.Note{Name: "CORE", Type: elf.NT_FPREGSET, Desc: th.fpregs})
		}
		if th.xstate != nil {
			// A layout gdb would reject or misread is kept, but under an
			// owner name debuggers skip.
			owner := "LINUX"
			if !elfcore.X86XStateStandard(th.xstate) {
				owner = xstateOwnerNonStandard
			}
			notes = append(notes, elfcore.Note{Name: owner, Type: elfcore.NTX86XState, Desc: th.xstate})
		}
	}
	return notes, nil
}

func corePRPSInfo(info coreProcInfo) elfcore.PRPSInfo {
	st := info.stat
	p := elfcore.PRPSInfo{
		Nice: int8(st.Nice), Flag: uint64(st.Flags),
		UID: info.uid, GID: info.gid,
		PID: int32(info.pid), PPID: int32(st.PPID), PGRP: int32(st.PGRP), SID: int32(st.Session),
		Fname: st.Comm,
		Args:  strings.Join(info.cmdline, " "),
	}
	if st.State != "" {
		p.SName = st.State[0]
		if i := strings.IndexByte("RSDTZW", p.SName); i >= 0 {
			p.State = byte(i)
		}
		p.Zombie = p.SName == 'Z'
	}
	return p
}
