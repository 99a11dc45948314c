package artifact

import (
	"bufio"
	"cmp"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
)

// procRegion is one mapping of /proc/PID/smaps (or maps, which has the same
// header lines and none of the counters).
//
// procfs.ProcMaps is not used: it rebuilds the path with strings.Fields and
// so turns "/tmp/a  b" into "/tmp/a b", and it stops silently on a line it
// cannot scan. A mapping's path is evidence (an attacker chooses it) and
// must survive byte for byte; and the smaps counters below decide what is
// captured.
type procRegion struct {
	Start, End                uint64
	Read, Write, Exec, Shared bool
	Offset                    uint64 // in the backing file
	Dev                       string // "major:minor", hex
	Inode                     uint64
	Path                      string // as the kernel shows it, " (deleted)" included
	// From smaps only.
	Rss, Anonymous uint64 // bytes
	Flags          vmFlags
}

// vmFlags are the VmFlags of smaps that decide a capture, as bits: a
// process may have hundreds of thousands of mappings, and the agent holds
// them all while it lays out the core.
type vmFlags uint8

const (
	vmIO       vmFlags = 1 << iota // "io": memory-mapped I/O
	vmPFNMap                       // "pf": raw page frames, no struct page
	vmDontDump                     // "dd": madvise(MADV_DONTDUMP)
)

// maxProcRegions bounds the parser's memory: vm.max_map_count is 65530 by
// default and rarely raised past 262144.
const maxProcRegions = 1 << 20

// maxRegionLine is the longest line accepted: PATH_MAX plus the fixed fields,
// with room to spare.
const maxRegionLine = 8 << 10

var errRegionSyntax = errors.New("malformed maps line")

// parseRegions parses /proc/PID/maps or /proc/PID/smaps.
func parseRegions(r io.Reader) ([]procRegion, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 4096), maxRegionLine)
	var regions []procRegion
	// A library's five mappings share one path string.
	paths := map[string]string{}
	line := 0
	for sc.Scan() {
		line++
		text := sc.Text()
		if text == "" {
			continue
		}
		first, _, _ := strings.Cut(text, " ")
		if strings.HasSuffix(first, ":") {
			if len(regions) == 0 {
				return nil, fmt.Errorf("line %d: %w: %q before any mapping", line, errRegionSyntax, first)
			}
			if err := regions[len(regions)-1].setField(strings.TrimSuffix(first, ":"), strings.TrimSpace(text[len(first):])); err != nil {
				return nil, fmt.Errorf("line %d: %w", line, err)
			}
			continue
		}
		reg, err := parseRegionHeader(text)
		if err != nil {
			return nil, fmt.Errorf("line %d: %w", line, err)
		}
		if p, ok := paths[reg.Path]; ok {
			reg.Path = p
		} else {
			paths[reg.Path] = reg.Path
		}
		if len(regions) == maxProcRegions {
			return nil, fmt.Errorf("more than %d mappings", maxProcRegions)
		}
		regions = append(regions, reg)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("line %d: %w", line+1, err)
	}
	return regions, nil
}

// parseRegionHeader parses "start-end perms offset dev inode   path".
func parseRegionHeader(s string) (procRegion, error) {
	var r procRegion
	bad := func(what string) (procRegion, error) {
		return procRegion{}, fmt.Errorf("%w: %s in %q", errRegionSyntax, what, s)
	}
	var fields [5]string
	rest := s
	for i := range fields {
		var ok bool
		fields[i], rest, ok = strings.Cut(rest, " ")
		if !ok && i < 4 {
			return bad("too few fields")
		}
	}
	lo, hi, ok := strings.Cut(fields[0], "-")
	if !ok {
		return bad("address range")
	}
	var err1, err2 error
	r.Start, err1 = strconv.ParseUint(lo, 16, 64)
	r.End, err2 = strconv.ParseUint(hi, 16, 64)
	if err1 != nil || err2 != nil || r.Start >= r.End {
		return bad("address range")
	}
	p := fields[1]
	if len(p) != 4 || !strings.ContainsRune("r-", rune(p[0])) || !strings.ContainsRune("w-", rune(p[1])) ||
		!strings.ContainsRune("x-", rune(p[2])) || !strings.ContainsRune("ps", rune(p[3])) {
		return bad("permissions")
	}
	r.Read, r.Write, r.Exec, r.Shared = p[0] == 'r', p[1] == 'w', p[2] == 'x', p[3] == 's'
	var err error
	if r.Offset, err = strconv.ParseUint(fields[2], 16, 64); err != nil {
		return bad("offset")
	}
	major, minor, ok := strings.Cut(fields[3], ":")
	if _, err := strconv.ParseUint(major, 16, 32); !ok || err != nil {
		return bad("device")
	}
	if _, err := strconv.ParseUint(minor, 16, 32); err != nil {
		return bad("device")
	}
	r.Dev = fields[3]
	if r.Inode, err = strconv.ParseUint(fields[4], 10, 64); err != nil {
		return bad("inode")
	}
	// The kernel pads with spaces up to the path's column; what follows is
	// the path exactly as d_path gave it (only a newline is escaped, as
	// \012), trailing spaces included.
	r.Path = strings.TrimLeft(rest, " ")
	return r, nil
}

func (r *procRegion) setField(key, value string) error {
	switch key {
	case "Rss", "Anonymous":
		num, unit, _ := strings.Cut(value, " ")
		n, err := strconv.ParseUint(num, 10, 64)
		if err != nil || unit != "kB" || n > 1<<53 {
			return fmt.Errorf("%w: %s: %q", errRegionSyntax, key, value)
		}
		if key == "Rss" {
			r.Rss = n << 10
		} else {
			r.Anonymous = n << 10
		}
	case "VmFlags":
		for _, f := range strings.Fields(value) {
			switch f {
			case "io":
				r.Flags |= vmIO
			case "pf":
				r.Flags |= vmPFNMap
			case "dd":
				r.Flags |= vmDontDump
			}
		}
	}
	return nil
}

func (r procRegion) size() uint64 { return r.End - r.Start }

// kernelSpecial are mappings that are not the process's memory: reading
// [vvar] faults, and [vsyscall] is execute-only or emulated.
func (r procRegion) kernelSpecial() bool {
	switch r.Path {
	case "[vvar]", "[vvar_vclock]", "[vsyscall]":
		return true
	}
	// VM_IO and VM_PFNMAP: device memory, where a read can have side
	// effects. The kernel's own core dumper skips them too.
	return r.Flags&(vmIO|vmPFNMap) != 0
}

// anonymous reports memory no file on disk backs: heap, stacks, anonymous
// mmaps (named with prctl or not) and anonymous shared memory, which the
// kernel shows as a deleted /dev/zero or SYSV segment.
func (r procRegion) anonymous() bool {
	p := r.Path
	return p == "" || p == "[heap]" || strings.HasPrefix(p, "[stack") ||
		strings.HasPrefix(p, "[anon:") || strings.HasPrefix(p, "[anon_shmem:") ||
		p == "/dev/zero (deleted)" || strings.HasPrefix(p, "/SYSV")
}

// fileBacked reports a mapping of a named file, deleted or not.
func (r procRegion) fileBacked() bool {
	return strings.HasPrefix(r.Path, "/") && !r.anonymous()
}

// recoverableFromDisk reports a mapping whose contents the file on disk
// still holds: a named, undeleted, non-memfd file. What is not on disk —
// a deleted binary, code run from a memfd — is exactly what fileless
// malware looks like and is never skipped.
func (r procRegion) recoverableFromDisk() bool {
	return r.fileBacked() && !strings.HasSuffix(r.Path, " (deleted)") && !strings.HasPrefix(r.Path, "/memfd:")
}

// regionClasses are the values of the regions parameter. A region is
// captured if it belongs to any listed class.
var regionClasses = map[string]func(procRegion) bool{
	"all":      func(procRegion) bool { return true },
	"anon":     procRegion.anonymous,
	"heap":     func(r procRegion) bool { return r.Path == "[heap]" },
	"stack":    func(r procRegion) bool { return strings.HasPrefix(r.Path, "[stack") },
	"writable": func(r procRegion) bool { return r.Write },
	"exec":     func(r procRegion) bool { return r.Exec },
	"file":     procRegion.fileBacked,
}

// regionFilter decides which regions a core holds.
type regionFilter struct {
	classes []string // names in regionClasses
	// skipFileRO leaves out read-only mappings of files that are on disk
	// and unmodified in memory: a debugger reads them from the file through
	// NT_FILE, and they are most of a process's mappings by count.
	skipFileRO bool
}

func (f regionFilter) wants(r procRegion) bool {
	for _, c := range f.classes {
		if regionClasses[c](r) {
			return true
		}
	}
	return false
}

// plannedSegment is a range to capture; it is a whole region, or its first
// bytes when only the ELF header page or a byte cap's remainder is taken.
type plannedSegment struct {
	Start, End uint64
	Flags      elf.ProgFlag
}

// regionPlan is what one process's core will hold, and what it leaves out.
type regionPlan struct {
	segments                []plannedSegment // by address
	bytes                   uint64
	filtered, unreadable    int    // regions left out by the filter; regions not readable or device memory
	filteredBytes           uint64 // bytes left out by the filter
	capped                  int    // regions left out, or cut short, by a byte cap
	cappedBytes             uint64 // bytes not captured because of a cap
	headerPages, modifiedRO int    // read-only file mappings kept in part or in full
	dontDump                int    // captured regions the process excluded from its own core dumps
}

// planRegions applies the filter and a byte cap (0: none) to a process's
// regions.
func planRegions(regions []procRegion, f regionFilter, limit uint64, pageSize uint64) regionPlan {
	var p regionPlan
	type cand struct {
		seg      plannedSegment
		rank     int
		dontDump bool
	}
	var cands []cand
	for _, r := range regions {
		if !r.Read || r.kernelSpecial() {
			p.unreadable++
			continue
		}
		if !f.wants(r) {
			p.filtered++
			p.filteredBytes += r.size()
			continue
		}
		seg := plannedSegment{Start: r.Start, End: r.End, Flags: elf.PF_R}
		if r.Write {
			seg.Flags |= elf.PF_W
		}
		if r.Exec {
			seg.Flags |= elf.PF_X
		}
		if f.skipFileRO && !r.Write && r.recoverableFromDisk() {
			switch {
			case r.Anonymous > 0:
				// Private pages written since mapping: relocations, and
				// also inline hooks patched into code. The file no longer
				// tells what is in memory.
				p.modifiedRO++
			case r.Offset == 0 && pageSize > 0:
				// The first page holds the ELF header and build-id note, by
				// which a debugger matches the file; the kernel's core
				// dumper keeps it for the same reason.
				seg.End = min(seg.End, seg.Start+pageSize)
				p.headerPages++
				p.filteredBytes += r.size() - (seg.End - seg.Start)
			default:
				p.filtered++
				p.filteredBytes += r.size()
				continue
			}
		}
		// madvise(MADV_DONTDUMP) keeps a region out of the kernel's cores
		// and gcore's; it is evidence all the same.
		cands = append(cands, cand{seg, triageRank(r), r.Flags&vmDontDump != 0})
	}
	// Under a cap the regions that matter most to a responder go first:
	// code that exists nowhere on disk, then stacks and heap, then other
	// writable anonymous memory, then file data; address order otherwise.
	slices.SortStableFunc(cands, func(a, b cand) int { return cmp.Compare(a.rank, b.rank) })
	for _, c := range cands {
		size := c.seg.End - c.seg.Start
		if limit > 0 && p.bytes+size > limit {
			keep := (limit - p.bytes) / max(pageSize, 1) * max(pageSize, 1)
			p.capped++
			p.cappedBytes += size - keep
			if keep == 0 {
				continue
			}
			c.seg.End = c.seg.Start + keep
			size = keep
		}
		p.segments = append(p.segments, c.seg)
		p.bytes += size
		if c.dontDump {
			p.dontDump++
		}
	}
	slices.SortFunc(p.segments, func(a, b plannedSegment) int { return cmp.Compare(a.Start, b.Start) })
	return p
}

func triageRank(r procRegion) int {
	switch {
	case r.Exec && !r.recoverableFromDisk() && r.Path != "[vdso]" && r.Path != "[uprobes]":
		return 0
	case strings.HasPrefix(r.Path, "[stack") || r.Path == "[heap]":
		return 1
	case r.Write && r.anonymous():
		return 2
	case r.Write:
		return 3
	}
	return 4
}
