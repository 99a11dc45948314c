package artifact

// Parsers for /proc/PID/stat and /proc/PID/status. procfs covers both, but
// only reading by path through os (an open costs nine system calls there,
// three here) and parsing stat with fmt.Fscan; on a host with a thousand
// processes that was a third of the processes artifact's time. These read
// the bytes the snapshot already holds and take only the fields it uses.

import (
	"bytes"
	"errors"
	"fmt"
	"strconv"
)

// procStat is the part of /proc/PID/stat the processes artifact uses.
type procStat struct {
	Comm       string
	State      string
	PPID, PGRP int
	UTime      uint64 // clock ticks
	STime      uint64
	Nice       int
	NumThreads int
	Starttime  uint64 // clock ticks after boot
}

var errStat = errors.New("malformed stat")

// parseProcStat parses "pid (comm) state ppid pgrp ...". comm may hold
// anything, ")" and newlines included, so it ends at the last ")".
func parseProcStat(b []byte) (procStat, error) {
	var s procStat
	l, r := bytes.IndexByte(b, '('), bytes.LastIndexByte(b, ')')
	if l < 0 || r < l || r+2 > len(b) {
		return s, fmt.Errorf("%w: no (comm) in %q", errStat, b)
	}
	s.Comm = string(b[l+1 : r])
	f := bytes.Fields(b[r+1:])
	// state ppid pgrp session tty tpgid flags minflt cminflt majflt
	// cmajflt utime stime cutime cstime priority nice num_threads
	// itrealvalue starttime ...
	if len(f) < 20 {
		return s, fmt.Errorf("%w: %d fields after comm", errStat, len(f))
	}
	s.State = string(f[0])
	var errs []error
	atoi := func(i int) int {
		v, err := strconv.Atoi(string(f[i]))
		errs = append(errs, err)
		return v
	}
	atou := func(i int) uint64 {
		v, err := strconv.ParseUint(string(f[i]), 10, 64)
		errs = append(errs, err)
		return v
	}
	s.PPID, s.PGRP = atoi(1), atoi(2)
	s.UTime, s.STime = atou(11), atou(12)
	s.Nice, s.NumThreads = atoi(16), atoi(17)
	s.Starttime = atou(19)
	if err := errors.Join(errs...); err != nil {
		return s, fmt.Errorf("%w: %w", errStat, err)
	}
	return s, nil
}

// procStatus is the part of /proc/PID/status the processes artifact uses.
type procStatus struct {
	UIDs, GIDs [4]uint64 // real, effective, saved, filesystem
	HaveIDs    bool
	NSpid      []uint64 // outermost first; the last is the pid inside
	VmRSS      uint64   // bytes
	VmSize     uint64   // bytes
	CapEff     uint64
	HaveCapEff bool
}

// parseProcStatus parses the "Key:\tvalue" lines of /proc/PID/status.
// Lines it does not use, or cannot parse, are skipped: the file grows new
// lines with kernel versions, and Name may hold anything.
func parseProcStatus(b []byte) (procStatus, error) {
	var s procStatus
	var haveUID, haveGID bool
	for len(b) > 0 {
		line := b
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			line, b = b[:i], b[i+1:]
		} else {
			b = nil
		}
		key, val, ok := bytes.Cut(line, []byte(":"))
		if !ok {
			continue
		}
		switch string(key) {
		case "Uid":
			haveUID = parseIDs(val, &s.UIDs)
		case "Gid":
			haveGID = parseIDs(val, &s.GIDs)
		case "NSpid":
			s.NSpid = s.NSpid[:0]
			for _, f := range bytes.Fields(val) {
				v, err := strconv.ParseUint(string(f), 10, 64)
				if err != nil {
					s.NSpid = nil
					break
				}
				s.NSpid = append(s.NSpid, v)
			}
		case "VmRSS":
			s.VmRSS = parseKB(val)
		case "VmSize":
			s.VmSize = parseKB(val)
		case "CapEff":
			v, err := strconv.ParseUint(string(bytes.TrimSpace(val)), 16, 64)
			s.CapEff, s.HaveCapEff = v, err == nil
		}
	}
	s.HaveIDs = haveUID && haveGID
	if !s.HaveIDs {
		return s, errors.New("status has no Uid and Gid lines")
	}
	return s, nil
}

func parseIDs(val []byte, dst *[4]uint64) bool {
	f := bytes.Fields(val)
	if len(f) != 4 {
		return false
	}
	for i := range dst {
		v, err := strconv.ParseUint(string(f[i]), 10, 32)
		if err != nil {
			return false
		}
		dst[i] = v
	}
	return true
}

// parseKB parses "  2800 kB" into bytes; anything else is 0.
func parseKB(val []byte) uint64 {
	f := bytes.Fields(val)
	if len(f) != 2 || string(f[1]) != "kB" {
		return 0
	}
	v, err := strconv.ParseUint(string(f[0]), 10, 64)
	if err != nil || v > 1<<53 {
		return 0
	}
	return v * 1024
}
